"""The `comix-embed dataspec` command: its options, and a run from the inputs to the report.

What it reads and writes, and why a page is dropped, are described in the package's docstring
(`comix_embed.tools.dataspec_builder`).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from comix_embed.common.durable import write_json_atomic
from comix_embed.common.errors import EXIT_OK, EXIT_PAGES_FAILED, UsageError
from comix_embed.common.inputs.locations import RemoteURL, parse_location
from comix_embed.common.inputs.reading import add_remote_arguments
from comix_embed.tools.dataspec_builder.build import PageBuilder, write_list
from comix_embed.tools.dataspec_builder.coco import read_predictions
from comix_embed.tools.dataspec_builder.mapping import read_mapping
from comix_embed.tools.dataspec_builder.report import REPORT_NAME, Report

SUBSETS = ("perfect", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coco", required=True, help="COCO predictions JSON (or a bare list of annotations): a file or s3://bucket/key"
    )
    parser.add_argument(
        "--mapping",
        required=True,
        help="CSV (a file or s3://bucket/key): image_path, coco_image_id|predictions_json_id, vlm_json_path"
        "[, image_rel_path]; relative paths in it are below its own folder or prefix",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="folder for the DataSpecs (keeping the image folder tree) and report.json",
    )
    parser.add_argument(
        "--subset",
        choices=SUBSETS,
        default="perfect",
        help="perfect: only pages whose detected and VLM panel counts are equal (default); "
        "all: every page, min(detected, VLM) panels",
    )
    parser.add_argument("--min-score", type=float, default=0.5, help="lowest panel detection score kept (default 0.5)")
    parser.add_argument(
        "--list-out", type=Path, default=None, help="list file to write (default: <OUT>_<subset>_list.txt beside OUT)"
    )
    add_remote_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if not math.isfinite(args.min_score):
        raise UsageError(f"--min-score must be a number, got {args.min_score}")
    out = Path(os.path.abspath(args.out))
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder")
    list_path = Path(os.path.abspath(args.list_out or out.parent / f"{out.name}_{args.subset}_list.txt"))
    mapping = parse_location(args.mapping, "--mapping")
    predictions = read_predictions(parse_location(args.coco, "--coco"))
    rows = read_mapping(mapping)
    report = Report(
        coco=str(args.coco),
        mapping=str(args.mapping),
        out=str(out),
        list_file=str(list_path),
        subset=args.subset,
        min_score=args.min_score,
        pages_in_mapping=len(rows),
        unusable_annotations=predictions.unusable,
    )
    mapping_dir = mapping.parent() if isinstance(mapping, RemoteURL) else Path(os.path.abspath(mapping)).parent
    builder = PageBuilder(predictions, mapping_dir, args.subset, args.min_score, report)
    written = builder.write_all(rows, out)
    write_list(list_path, written)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / REPORT_NAME, report.to_file(), fsync=False, indent=2)
    print(report.text())
    return EXIT_OK if report.kept else EXIT_PAGES_FAILED
