"""The `comix-embed sample` command: its options; it writes the corpus and prints its summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from comix_embed.common.errors import EXIT_OK
from comix_embed.tools.sample.corpus import make_sample
from comix_embed.tools.sample.page import WINDOWS_ROOT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="directory to write the corpus into")
    parser.add_argument("--pages", type=int, required=True, help="number of pages")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    parser.add_argument(
        "--windows-paths",
        action="store_true",
        help=f"write page_image_path as absolute Windows paths under {WINDOWS_ROOT} (needs --path-map)",
    )


def run(args: argparse.Namespace) -> int:
    summary = make_sample(args.out, args.pages, seed=args.seed, windows_paths=args.windows_paths)
    print(summary.report())
    return EXIT_OK
