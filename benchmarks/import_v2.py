"""Importing a v2 store at the users' scale: pages per second and peak memory of `comix-embed import-v2`.

    python -m benchmarks.import_v2 [--pages 1200000] [--d 384] [--keep DIR] [--json]

Why: the users' largest v2 store holds 1,215,620 pages; the goal is an import in under 30 minutes
on a 2-core machine (667 pages/s) within 4 GB of memory, however large the store.

How: a synthetic v2 store of N pages is written as the v2 generator wrote its stores
(tests/v2_store.py: Zarr format 2, 1000-row Blosc zstd chunks, text reprs, a NaN page in every 13,
padding junk), then `comix-embed import-v2` runs on it in a child process, as users run it, with
the writer's fsync on (the default). Reported: the build's seconds (not part of the goal), the
import's seconds and pages per second, the import process's peak RSS (`ru_maxrss` of the
children; the build runs in this process), the sizes on disk of both stores, and the load average
before and after (other sessions' work shares the machine). Notes go to stderr, figures to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from comix_embed.common.child import cli_argv
from tests.v2_store import V2Page, write_v2_store


def _page(row: int) -> V2Page:
    """Row `row` of the synthetic store: books of 40 pages, 0 to 12 panels (0: a NaN page)."""
    return V2Page(f"dataspecs/Book {row // 40:06d} - Unknown/JPG4CBZ/{row % 40:04d}.json", panels=row % 13)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(pages: int, d: int, work: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {"pages": pages, "d": d, "cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    began = time.perf_counter()
    v2 = write_v2_store(work / "v2", _page, n=pages, d=d, progress=sys.stderr.isatty())
    figures["build_s"] = round(time.perf_counter() - began, 1)
    figures["v2_store_gb"] = round(_size(v2) / 1e9, 2)
    print(f"built {pages} pages in {figures['build_s']} s; importing", file=sys.stderr, flush=True)
    argv = cli_argv("import-v2", "--from", str(v2), "--output-dir", str(work / "ours"), "--no-progress")
    began = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"import-v2 failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    figures["import_s"] = round(seconds, 1)
    figures["pages_per_s"] = round(pages / seconds, 1)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    figures["our_store_gb"] = round(_size(work / "ours") / 1e9, 2)
    figures["load_after"] = os.getloadavg()[0]
    figures["summary"] = done.stdout.strip().splitlines()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=1_200_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument(
        "--keep", type=Path, help="build and import in this folder and keep them (default: a temporary one)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="import-v2-bench-"))
    try:
        figures = measure(args.pages, args.d, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
