"""Query latency on a synthetic store: `--like`, `--keyword` and a panel-level search, once loaded.

    python -m benchmarks.query [--json] [--pages 100000] [--queries 50] [--keep DIR]

The store has the project's layout (made with writer/growth.py's `create_store`, then filled a
slice at a time, as committed rows look): d = 384, 12 panel slots of which ~60% are valid, random
embeddings, comic-like text from tools/sample/text.py, and 1% failed (zero) rows. `--keep DIR`
builds it under DIR once and reuses it afterwards. Loading (page matrix, text index, panel matrix)
is timed apart; then each kind of query runs `--queries` times on random inputs:
`like` (a random page), `keyword` (a random word of a random page's text) and `panel` (a random
unit vector against every valid panel, pages ranked by their best panel: what `--text` does after
encoding). `--json` prints one object with `pages`, `like_ms_p50`, `keyword_ms_p50`,
`panel_ms_p50` and more.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from comix_embed.common import config
from comix_embed.common.model.preprocess import text_to_json
from comix_embed.common.store.reading import read_committed_rows
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_OK, store_path
from comix_embed.tools.sample import text as sample_text
from comix_embed.tools.search import SearchIndex
from comix_embed.writer.growth import create_store, grow, open_row_arrays, write_attrs

D = 384
P = config.MAX_PANELS
SLICE = 8192
MODEL = {
    "model_name": config.MODEL_NAME,
    "embedding_dim": D,
    "max_panels": P,
    "encoder_mode": "fused",
    "checkpoint_sha256": "0" * 64,
    "tokenizer": "synthetic",
}


def synthetic_slice(start: int, stop: int, seed: int) -> dict[str, np.ndarray]:
    """Rows [start, stop): every per-page array of the store, as committed rows hold them."""
    n = stop - start
    rng = np.random.default_rng([seed, start])
    text_rng = random.Random(f"{seed}:{start}")
    counts = np.maximum(rng.binomial(P, 0.6, n), 1)
    failed = rng.random(n) < 0.01
    counts[failed] = 0
    mask = np.arange(P)[None, :] < counts[:, None]
    panel_text = np.full((n, P), "", dtype=object)
    page_text = np.full(n, "", dtype=object)
    for i in np.flatnonzero(~failed):
        panels = [sample_text.panel_text(text_rng) for _ in range(counts[i])]
        panel_text[i, : counts[i]] = [text_to_json(t) for t in panels]
        page_text[i] = text_to_json({k: [s for t in panels for s in t[k]] for k in config.TEXT_KEYS})
    rows = np.arange(start, stop)
    return {
        "page_id": np.array([f"Series {r % 97:02d}/vol{r // 1000:03d}/{r:06d}.json" for r in rows], dtype=object),
        "series": np.array([f"Series {r % 97:02d}" for r in rows], dtype=object),
        "page_num": np.array([str(r % 1000) for r in rows], dtype=object),
        "status": np.where(failed, STATUS_FAILED, STATUS_OK).astype(np.int8),
        "page_embeddings": np.where(failed[:, None], 0.0, rng.standard_normal((n, D), dtype=np.float32)).astype(
            np.float32
        ),
        "panel_embeddings": np.where(mask[:, :, None], rng.standard_normal((n, P, D), dtype=np.float32), 0.0).astype(
            np.float32
        ),
        "panel_mask": mask,
        "text_content": panel_text,
        "page_text": page_text,
    }


def build_store(output_dir: Path, pages: int, seed: int = 0) -> Path:
    """A store of `pages` committed rows, or the one already there with that many."""
    path = store_path(output_dir)
    if path.exists() and read_committed_rows(path) == pages:
        return path
    if path.exists():
        raise SystemExit(f"{path} exists with another row count: remove it or choose another --keep")
    output_dir.mkdir(parents=True, exist_ok=True)
    create_store(path, MODEL)
    arrays = open_row_arrays(path, fsync=False)
    grow(arrays, pages)
    for start in range(0, pages, SLICE):
        stop = min(start + SLICE, pages)
        for name, values in synthetic_slice(start, stop, seed).items():
            arrays[name][start:stop] = values
    write_attrs(path, {"committed_rows": pages, "registered_rows": pages}, reconsolidate=True)
    return path


def timed(fn, inputs: list) -> list[float]:
    """Milliseconds of each call of fn over the inputs."""
    out = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def random_words(index: SearchIndex, rows: np.ndarray, rng: random.Random, count: int) -> list[str]:
    """Words of 3+ letters taken from random pages' text: common words and rare ones alike."""
    words: list[str] = []
    while len(words) < count:
        candidates = re.findall(r"[A-Za-z]{3,}", index.page_text(np.array([rng.choice(rows)]))[0])
        if candidates:
            words.append(rng.choice(candidates))
    return words


def bench(path: Path, queries: int, seed: int = 1) -> dict[str, float]:
    t0 = time.perf_counter()
    index = SearchIndex.load(path)
    load_pages_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert index.keywords  # built on first use: timed here, not in a query
    load_text_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert index.load_panels(), "panel matrix over the memory bound: raise DEFAULT_PANEL_MEMORY"
    load_panels_s = time.perf_counter() - t0
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    rows = index.rows
    like_rows = [int(rng.choice(rows)) for _ in range(queries)]
    words = random_words(index, rows, rng, queries)
    vectors = list(nprng.standard_normal((queries, D), dtype=np.float32))
    vectors = [v / np.linalg.norm(v) for v in vectors]
    like = timed(lambda r: index.like(r, 10), like_rows)
    keyword = timed(lambda w: index.keyword(w, 10), words)
    panel = timed(lambda v: index.panels(v, 10), vectors)
    return {
        "pages": index.committed,
        "searchable_pages": len(rows),
        "valid_panels": index.panel_count or 0,
        "queries": queries,
        "load_pages_s": round(load_pages_s, 2),
        "load_text_s": round(load_text_s, 2),
        "load_panels_s": round(load_panels_s, 2),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        **_stats("like", like),
        **_stats("keyword", keyword),
        **_stats("panel", panel),
    }


def _stats(name: str, ms: list[float]) -> dict[str, float]:
    return {f"{name}_ms_p50": round(float(np.median(ms)), 2), f"{name}_ms_p95": round(float(np.percentile(ms, 95)), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50, help="queries timed per kind (default 50)")
    parser.add_argument("--keep", type=Path, help="build the store here and reuse it on later runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="comix-query-bench-") as tmp:
        t0 = time.perf_counter()
        path = build_store(args.keep or Path(tmp), args.pages)
        built_s = time.perf_counter() - t0
        result = {**bench(path, args.queries), "build_s": round(built_s, 1)}
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"store: {result['pages']} pages ({result['searchable_pages']} searchable, "
        f"{result['valid_panels']} valid panels), d={D}; built or opened in {result['build_s']} s"
    )
    print(
        f"load: page matrix {result['load_pages_s']} s, text index {result['load_text_s']} s, "
        f"panel matrix {result['load_panels_s']} s, "
        f"peak RSS {result['max_rss_mb']} MB"
    )
    for name, target in (("like", 50), ("keyword", 50), ("panel", 200)):
        print(
            f"{name:8s} p50 {result[f'{name}_ms_p50']:8.2f} ms   p95 {result[f'{name}_ms_p95']:8.2f} ms   "
            f"(target p50 < {target} ms, {result['queries']} queries)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
