"""Writer throughput: pages/s committed at batch 8 and 64, and the users' old write pattern.

    python -m benchmarks.writer [--json] [--pages 6400] [--old-pages 40] [--no-fsync]

Synthetic results (d = 384, 12 panels, JSON text) are made before timing; the timed part is
`StoreWriter.commit` of one batch per call, as the writer receives them, with the manifests,
`committed_rows` and (by default) fsync. The old pattern is the users' script: per page, zero
the row of every array, then write it, into 1000-row zstd-compressed chunks. It is timed on
pages 500.. of a store whose first 500 rows are filled, the middle of a chunk's life.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.old_way import OldPatternStore
from comix_embed.common import config
from comix_embed.writer.commit import StoreWriter
from tests import synthetic

D = 384
P = config.MAX_PANELS


def bench_writer(root: Path, pages: int, batch_size: int, fsync: bool) -> float:
    """Pages per second committed by the StoreWriter, one batch per commit call."""
    out = root / f"batch{batch_size}"
    job, _ = synthetic.plan(out, synthetic.make_pages(pages), batch_size)
    assert job is not None
    model = synthetic.model_info(d=D)
    results = [synthetic.make_result(job, b, model) for b, _, _ in job.batches()]
    with StoreWriter(out, fsync=fsync) as writer:
        writer.commit(results[:1])  # creates the store: not part of the steady state
        t0 = time.perf_counter()
        for r in results[1:]:
            writer.commit([r])
        elapsed = time.perf_counter() - t0
        assert writer.committed_rows == pages
    return (pages - len(results[0].page_ids)) / elapsed


def bench_old_pattern(root: Path, pages: int) -> float:
    """Pages per second of the old per-page zero-then-write into 1000-row zstd chunks."""
    prefill = 500
    model = synthetic.model_info(d=D)
    job, _ = synthetic.plan(root / "old", synthetic.make_pages(prefill + pages), prefill + pages)
    assert job is not None
    data = synthetic.make_result(job, 0, model).arrays
    store = OldPatternStore(root / "old" / "old.zarr", D)
    store.fill(prefill, data)
    t0 = time.perf_counter()
    for row in range(prefill, prefill + pages):
        store.write_page(row, {name: values[row] for name, values in data.items()})
    return pages / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--pages", type=int, default=6400, help="pages per writer run (default 6400)")
    parser.add_argument("--old-pages", type=int, default=40, help="pages timed for the old pattern (default 40)")
    parser.add_argument("--no-fsync", action="store_true", help="skip fsync of chunks and manifests")
    args = parser.parse_args(argv)
    fsync = config.WRITER_FSYNC and not args.no_fsync
    with tempfile.TemporaryDirectory(prefix="comix-bench-") as tmp:
        root = Path(tmp)
        figures = {
            "batch8_pages_per_s": bench_writer(root, max(args.pages // 8, 64), 8, fsync),
            "batch64_pages_per_s": bench_writer(root, args.pages, 64, fsync),
            "old_pattern_pages_per_s": bench_old_pattern(root, args.old_pages),
        }
    figures["ratio_vs_old"] = figures["batch64_pages_per_s"] / figures["old_pattern_pages_per_s"]
    figures = {k: round(v, 2) for k, v in figures.items()}
    if args.json:
        print(json.dumps({**figures, "embedding_dim": D, "max_panels": P, "fsync": fsync}))
    else:
        print(f"writer, d={D}, {P} panels, fsync={'on' if fsync else 'off'}")
        print(f"  batch 8:     {figures['batch8_pages_per_s']:>10.1f} pages/s")
        print(f"  batch 64:    {figures['batch64_pages_per_s']:>10.1f} pages/s")
        print(
            f"  old pattern: {figures['old_pattern_pages_per_s']:>10.1f} pages/s (zero then write per page, 1000-row zstd chunks)"
        )
        print(f"  batch 64 / old pattern: {figures['ratio_vs_old']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
