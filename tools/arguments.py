"""Command-line arguments the users' tools share, declared once so that they read the same everywhere."""

from __future__ import annotations

import argparse

from comix_embed.common.inputs.reading import add_remote_arguments

STORE_HELP = (
    "the store, the output folder holding combined_embeddings.zarr, or a folder or s3://bucket/prefix/ "
    "of snapshots (the newest is read)"
)


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    """`--zarr`: the store a tool reads (with the spellings earlier versions took), and the options
    that reach a store's snapshots on S3 (`--endpoint-url`, `--anonymous`)."""
    parser.add_argument("--zarr", "--zarr_path", "--zarr-path", dest="zarr", required=True, help=STORE_HELP)
    add_remote_arguments(parser)
