"""`comix-embed demo`: the first command after install; the whole system on sample data.

Makes a synthetic corpus and an UNTRAINED tiny checkpoint, runs the real pipeline (private Redis,
workers, writer) into a store, then prints the page summaries and a query, and ends with the
`serve` command that shows the store in a browser. Each step is the same subcommand a user
would run, and is printed before it runs, so the demo doubles as a tutorial.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from comix_embed.common.errors import EXIT_OK, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for everything (default ./demo-out)")
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--workers", type=int, help="worker processes (default: run's default)")


def _step(argv: list[str]) -> int:
    from comix_embed.cli import main

    print(f"\n$ comix-embed {shlex.join(argv)}", flush=True)
    return main(argv)


def serve_command(store_dir: Path, checkpoint: Path, corpus: Path) -> list[str]:
    """The `serve` command for the demo's store (its checkpoint, its image root)."""
    return [
        "serve",
        "--zarr",
        str(store_dir),
        "--checkpoint",
        str(checkpoint),
        "--image-root",
        str(corpus / "images"),
    ]


def run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    corpus, ckpt, store_dir = out / "corpus", out / "tiny.pt", out / "embeddings"
    if store_dir.exists():
        raise UsageError(f"{store_dir} exists: pass another --out (or remove it) for a fresh demo")
    steps = [
        ["sample", "--out", str(corpus), "--pages", str(args.pages)],
        ["init-checkpoint", "--out", str(ckpt), "--size", "tiny"],
        [
            "run",
            "--checkpoint",
            str(ckpt),
            "--list",
            str(corpus / "list.txt"),
            "--image-root",
            str(corpus / "images"),
            "--output-dir",
            str(store_dir),
        ]
        + (["--workers", str(args.workers)] if args.workers else []),
        ["summaries", "--zarr", str(store_dir), "--max-pages", "8", "--text-len", "60"],
        ["query", "--zarr", str(store_dir), "--keyword", "robot", "--top-k", "5"],
        ["diagnose", str(store_dir)],
    ]
    for argv in steps:
        code = _step(argv)
        if code not in (0, 3):
            print(f"\ndemo stopped: `comix-embed {argv[0]}` exited {code}")
            return code
    print(
        f"\nDemo done. Everything is under {out}:\n"
        f"  corpus (images, DataSpecs, list): {corpus}\n"
        f"  UNTRAINED checkpoint and tokenizer: {ckpt}, {ckpt.with_suffix('.tokenizer')}\n"
        f"  store: {store_dir / 'combined_embeddings.zarr'} (open with xarray.open_zarr(..., consolidated=False))\n"
        f"  audit log and process logs: {store_dir / 'audit.jsonl'}, {store_dir / 'logs'}\n"
        "The checkpoint is untrained: the numbers are real, their meaning is not. Use your own with --checkpoint.\n"
        "\nSearch the store and look at its pages in a browser (http://127.0.0.1:8000/):\n"
        f"  comix-embed {shlex.join(serve_command(store_dir, ckpt, corpus))}"
    )
    return EXIT_OK
