"""`comix-embed index`: build a store's search index, or extend it with the rows committed since.

    comix-embed index --zarr STORE_OR_OUTPUT_DIR [--no-progress]

Run it again whenever you like (after a job, after `--retry-failed`): it adds only what changed.
`query` and `serve` use the index from their next start, and search exactly whatever it does not
cover yet. Prints `building generation N ...` once it starts writing, and one line at the end.
"""

from __future__ import annotations

import argparse
import sys

from comix_embed.common.errors import EXIT_OK
from comix_embed.tools.arguments import add_store_argument
from comix_embed.tools.search.build import build_index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    report = build_index(args.zarr, progress=not args.no_progress and sys.stderr.isatty())
    if report.up_to_date:
        print(f"index generation {report.generation} is up to date: {report.rows} committed rows")
    else:
        print(
            f"index generation {report.generation}: {report.rows} committed rows, {report.pages} pages and "
            f"{report.panels} panels indexed ({report.added_pages} and {report.added_panels} added"
            f"{', trained afresh: ' + ', '.join(report.retrained) if report.retrained else ''}) in {report.seconds} s"
        )
    return EXIT_OK
