"""Command-line arguments the users' tools share, declared once so that they read the same everywhere."""

from __future__ import annotations

import argparse


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    """`--zarr`: the store a tool reads (with the spellings earlier versions took)."""
    parser.add_argument(
        "--zarr",
        "--zarr_path",
        "--zarr-path",
        dest="zarr",
        required=True,
        help="the store, or the output folder holding combined_embeddings.zarr",
    )
