"""`comix-embed map`: lay out a store's pages in 2-D beside it, or place the rows committed since.

    comix-embed map --zarr STORE_OR_OUTPUT_DIR [--rebuild] [--landmarks 4096] [--no-progress]

Run it again whenever you like (after a job, after `--retry-failed`): it places only the rows
committed since and the pages whose status changed, and never moves a page already placed.
`--rebuild` chooses the landmarks afresh (every page moves), and replaces a map of another store.
`serve` shows the map at `/map/STORE` and picks up a new one by itself.
"""

from __future__ import annotations

import argparse
import sys

from comix_embed.common.errors import EXIT_OK, UsageError
from comix_embed.tools.arguments import add_store_argument
from comix_embed.tools.map.build import build_map
from comix_embed.tools.map.layout import LANDMARKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    parser.add_argument(
        "--rebuild", action="store_true", help="choose the landmarks afresh and place every page again (pages move)"
    )
    parser.add_argument(
        "--landmarks",
        type=int,
        default=LANDMARKS,
        help=f"pages laid out by t-SNE, among which the others are placed (default {LANDMARKS}; a new map only)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.landmarks < 1:
        raise UsageError("--landmarks must be at least 1")
    report = build_map(
        args.zarr, progress=not args.no_progress and sys.stderr.isatty(), rebuild=args.rebuild, landmarks=args.landmarks
    )
    if report.up_to_date:
        print(f"map version {report.version} is up to date: {report.rows} committed rows, {report.placed} placed")
    else:
        how = f"laid out afresh around {report.landmarks} landmarks" if report.fresh else "extended"
        print(
            f"map version {report.version}: {report.rows} committed rows, {report.placed} placed "
            f"({report.added} added, {how}) in {report.seconds} s"
        )
    return EXIT_OK
