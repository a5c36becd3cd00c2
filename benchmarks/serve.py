"""Time to first results of `comix-embed serve` on a large store, through the whole request path.

    python -m benchmarks.serve [--json] [--pages 100000] [--queries 20] [--keep DIR]

The store is benchmarks/query.py's synthetic one (d = 384, 12 slots, ~60% valid, comic-like text,
1% failed rows), stamped with the identity of an untrained checkpoint of the real model's shape
(`init-checkpoint --size base`: ViT-base and RoBERTa-base, d = 384), so text and image queries
run the real encoders. The application is built as the command builds it (`build_state`: model
checked and loaded, index loaded, text index and panel matrix built) and asked through Flask's
test client, so each figure is the whole request: parsing, encoding the query with the model,
the search, reading the hits' columns from the store and the JSON. For each kind (keyword, like,
text, image, panel-level text, and a 64 kB keyword query, POSTed) the first request after start is
timed apart from the median and 95th percentile of `--queries` more. Filtered similarity is timed
the same way, beside the unfiltered kinds: `like`, panel-level text and keyword narrowed to one
series (about 1% of the pages, `series=Series NN`; the first such request also reads the series
column) and `like` narrowed to ok pages (99%). With `--index` the store's search index is built
first (`comix-embed index`), so that searches and filters go through it. Then eight 60-megapixel JPEG
image queries are sent at once, and the peak memory they add is reported. Thumbnails are not part of it (they load after the results,
one request each; the synthetic store has no images).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.query import build_store, random_words
from comix_embed.common.digest import file_sha256
from comix_embed.common.model.tokenizer import load_tokenizer
from comix_embed.common.store.reading import read_attrs
from comix_embed.tools.init_checkpoint import init_checkpoint
from comix_embed.tools.search import build_index
from comix_embed.tools.serve import command
from comix_embed.tools.serve.app import create_app
from comix_embed.writer.growth import write_attrs

TARGET_MS = 500
LONG_QUERY_BYTES = 65536
LONG_QUERY_TARGET_MS = 200


def checkpoint(folder: Path) -> Path:
    """An untrained checkpoint of the real model's shape, made once under `folder`."""
    path = folder / "base.pt"
    if not path.exists():
        init_checkpoint(path, size="base", seed=0)
    return path


def stamp(store: Path, ckpt: Path) -> None:
    """Give the synthetic store the checkpoint's identity, as if that model had made it."""
    tokenizer = load_tokenizer(None, ckpt)
    if read_attrs(store).get("checkpoint_sha256") != file_sha256(ckpt):
        write_attrs(store, {"checkpoint_sha256": file_sha256(ckpt), "tokenizer": tokenizer.identity})


def query_image(seed: int) -> bytes:
    """A page-sized JPEG of random blocks (a scan's size and cost to decode)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (27, 18, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(small).resize((1800, 2700), Image.Resampling.NEAREST).save(out, format="JPEG", quality=85)
    return out.getvalue()


def timed_request(client, method: str, **kwargs) -> tuple[float, dict]:
    """(milliseconds, the store's answer) of one search; a 64 kB keyword may rightly find nothing."""
    t0 = time.perf_counter()
    response = getattr(client, method)("/api/search", **kwargs)
    ms = (time.perf_counter() - t0) * 1000
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    answer = response.get_json()["stores"][0]
    long_query = len(str(answer.get("query", ""))) >= LONG_QUERY_BYTES // 2
    assert "error" not in answer and (answer["results"] or long_query), str(answer)[:500]
    return ms, answer


def serve_args(store: Path, ckpt: Path) -> argparse.Namespace:
    """`comix-embed serve --zarr STORE --checkpoint CKPT` (the image root: the store's folder, unused)."""
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(["--zarr", str(store), "--checkpoint", str(ckpt), "--image-root", str(store.parent)])


def bench(store: Path, ckpt: Path, queries: int, seed: int = 1) -> dict[str, float]:
    args = serve_args(store, ckpt)
    t0 = time.perf_counter()
    app = create_app(command.build_state(args))
    start_s = time.perf_counter() - t0
    client = app.test_client()
    served = app.extensions["comix_serve"].stores
    index = next(iter(served.values())).index()
    rng = random.Random(seed)
    words = random_words(index, index.rows, rng, queries + 1)
    ids = [str(index.page_ids[int(rng.choice(index.rows))]) for _ in range(queries + 1)]
    texts = [" ".join(rng.sample(words, 3)) for _ in range(queries + 1)]
    kinds: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "keyword": [("get", {"query_string": {"mode": "keyword", "q": w}}) for w in words],
        # 64 kB keyword queries, POSTed: one word repeated, and the store's words at random
        "long_keyword": [
            ("post", {"data": {"mode": "keyword", "q": long_query(words, i)}}) for i in range(queries + 1)
        ],
        "like": [("get", {"query_string": {"mode": "like", "q": p}}) for p in ids],
        "like_narrow": [
            ("get", {"query_string": {"mode": "like", "q": p, "series": f"Series {i % 97:02d}"}})
            for i, p in enumerate(ids)
        ],
        "like_wide": [("get", {"query_string": {"mode": "like", "q": p, "status": "ok"}}) for p in ids],
        "text": [("get", {"query_string": {"mode": "text", "q": t}}) for t in texts],
        "text_panels": [("get", {"query_string": {"mode": "text", "q": t, "panels": "1"}}) for t in texts],
        "text_panels_narrow": [
            ("get", {"query_string": {"mode": "text", "q": t, "panels": "1", "series": f"Series {i % 97:02d}"}})
            for i, t in enumerate(texts)
        ],
        "keyword_narrow": [
            ("get", {"query_string": {"mode": "keyword", "q": w, "series": f"Series {i % 97:02d}"}})
            for i, w in enumerate(words)
        ],
        "image": [
            (
                "post",
                {
                    "data": {"mode": "image", "image": (io.BytesIO(query_image(i)), f"q{i}.jpg")},
                    "content_type": "multipart/form-data",
                },
            )
            for i in range(queries + 1)
        ],
    }
    result: dict[str, float] = {
        "pages": index.committed,
        "searchable_pages": len(index.rows),
        "valid_panels": index.panel_count or 0,
        "start_s": round(start_s, 1),
    }
    for kind, requests in kinds.items():
        answers = [timed_request(client, method, **kw) for method, kw in requests]
        times = [t for t, _ in answers]
        if kind.endswith("_narrow"):  # each answer lies within its filter, and the filter left pages
            assert all(a["filtered_pages"] for _, a in answers), kind
        result[f"{kind}_first_ms"] = round(times[0], 1)
        result[f"{kind}_ms_p50"] = round(float(np.median(times[1:])), 1)
        result[f"{kind}_ms_p95"] = round(float(np.percentile(times[1:], 95)), 1)
    # the model's share: the same queries encoded alone (what a GPU would make a few milliseconds)
    encoder = next(iter(served.values())).encoder
    encode = {
        "text": [_ms(lambda t=t: encoder.text(t)) for t in texts[1:]],
        "image": [_ms(lambda i=i: encoder.image(query_image(i), "q.jpg")) for i in range(1, queries + 1)],
    }
    for kind, times in encode.items():
        result[f"{kind}_encode_ms_p50"] = round(float(np.median(times)), 1)
    result["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result.update(upload_memory(app))
    return result


def long_query(words: list[str], i: int) -> str:
    """A 64 kB keyword query: even `i`, one word repeated; odd, the store's words in turn."""
    picked = [words[i % len(words)]] if i % 2 == 0 else words
    text = " ".join(picked[k % len(picked)] for k in range(LONG_QUERY_BYTES // 2))
    return text[:LONG_QUERY_BYTES]


def upload_memory(app: Any, uploads: int = 8, megapixels: int = 60) -> dict[str, float]:
    """Peak memory added by `uploads` image queries of `megapixels` JPEGs sent at once: the peak
    RSS (VmHWM, reset through /proc/self/clear_refs) over the RSS before, per upload."""
    side = int((megapixels * 1e6) ** 0.5)
    noise = np.random.default_rng(3).integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).resize((side, side), Image.Resampling.NEAREST).save(out, format="JPEG", quality=85)
    data = out.getvalue()
    del noise, out

    def one(i: int) -> int:
        response = app.test_client().post(
            "/api/search", data={"mode": "image", "image": (io.BytesIO(data), f"big{i}.jpg")}
        )
        return response.status_code

    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from the current one
    before = _status_kb("VmRSS")
    with ThreadPoolExecutor(uploads) as pool:
        codes = list(pool.map(one, range(uploads)))
    added = (_status_kb("VmHWM") - before) / 1024
    return {
        "upload_megapixels": megapixels,
        "upload_mb": round(len(data) / 1e6, 1),
        "uploads_at_once": uploads,
        "uploads_answered": sum(c == 200 for c in codes),
        "uploads_added_rss_mb": round(added, 1),
        "per_upload_mb": round(added / uploads, 1),
    }


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20, help="requests timed per kind after the first (default 20)")
    parser.add_argument("--keep", type=Path, help="build the store and checkpoint here and reuse them later")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--index", action="store_true", help="build the store's search index first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="comix-serve-bench-") as tmp:
        folder = args.keep or Path(tmp)
        store = build_store(folder / "store", args.pages)
        ckpt = checkpoint(folder)
        stamp(store, ckpt)
        if args.index:
            t0 = time.perf_counter()
            build_index(store)
            index_s = round(time.perf_counter() - t0, 1)
        result = bench(store, ckpt, args.queries)
        if args.index:
            result["index_build_s"] = index_s
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"store: {result['pages']} pages ({result['searchable_pages']} searchable, {result['valid_panels']} valid "
        f"panels), d=384; serve started (model, index, text index, panels) in {result['start_s']} s, "
        f"peak RSS {result['max_rss_mb']} MB"
    )
    kinds = ("keyword", "keyword_narrow", "long_keyword", "like", "like_narrow", "like_wide", "text", "text_panels")
    for kind in (*kinds, "text_panels_narrow", "image"):
        encoding = result.get(f"{kind.split('_')[0]}_encode_ms_p50")
        model = f"   of which the model encoding the query p50 {encoding:7.1f} ms" if encoding is not None else ""
        print(
            f"{kind:18s} first {result[f'{kind}_first_ms']:7.1f} ms   p50 {result[f'{kind}_ms_p50']:7.1f} ms   "
            f"p95 {result[f'{kind}_ms_p95']:7.1f} ms{model}"
        )
    print(f"(target: first results < {TARGET_MS} ms; a 64 kB keyword query < {LONG_QUERY_TARGET_MS} ms)")
    print(
        f"{result['uploads_at_once']} uploads of {result['upload_megapixels']} MP JPEGs ({result['upload_mb']} MB) at once: "
        f"{result['uploads_answered']} answered, peak RSS +{result['uploads_added_rss_mb']} MB "
        f"({result['per_upload_mb']} MB per upload; target: under 1,024 MB for the eight)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
