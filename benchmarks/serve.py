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

The map (`--map`, or `--map-only` without the searches): `comix-embed map` is built on the store
before the application starts (timed), then its first paint is timed as a browser asks for it:
the page `/map/STORE` and the whole map's points `/api/map/STORE` (4,000 of them), first and
median, and a zoomed view. At `--map-rows` (1.2 million by default) the pieces are timed on
synthetic unit vectors, since a store that size does not fit this benchmark: placing that many
pages among 4,096 landmarks, the points loaded in serve's memory, and a view of them.
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

from benchmarks.query import D, build_store, random_words
from comix_embed.common.digest import file_sha256
from comix_embed.common.model.tokenizer import load_tokenizer
from comix_embed.common.store.reading import read_attrs
from comix_embed.tools.init_checkpoint import init_checkpoint
from comix_embed.tools.map.build import build_map
from comix_embed.tools.map.layout import LANDMARKS, Placer, lay_out
from comix_embed.tools.map.viewport import MapPoints
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


def bench(
    store: Path, ckpt: Path, queries: int, seed: int = 1, searches: bool = True, with_map: bool = False
) -> dict[str, float]:
    figures = map_build(store) if with_map else {}
    args = serve_args(store, ckpt)
    t0 = time.perf_counter()
    app = create_app(command.build_state(args))
    start_s = time.perf_counter() - t0
    index = next(iter(app.extensions["comix_serve"].stores.values())).index()
    result: dict[str, float] = {
        "pages": index.committed,
        "searchable_pages": len(index.rows),
        "valid_panels": index.panel_count or 0,
        "start_s": round(start_s, 1),
        **figures,
    }
    if with_map:
        result.update(map_paint(app, queries))
    if searches:
        result.update(search_figures(app, queries, seed))
    result["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if searches:
        result.update(upload_memory(app))
    return result


def search_figures(app: Any, queries: int, seed: int) -> dict[str, float]:
    """Each kind of search: the first request, then the median and 95th percentile of `queries` more."""
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
    result: dict[str, float] = {}
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
    return result


def map_build(store: Path) -> dict[str, float]:
    """`comix-embed map` on the store, timed (before serve starts, which loads the map)."""
    t0 = time.perf_counter()
    report = build_map(store, rebuild=True)  # the whole build, also on a kept store that has a map
    return {
        "map_build_s": round(time.perf_counter() - t0, 1),
        "map_placed": report.placed,
        "map_landmarks": report.landmarks,
    }


def map_paint(app: Any, queries: int) -> dict[str, float]:
    """The map's first paint, server side: the page, then the points of the whole map; then a view
    zoomed 8-fold around a random point, as a wheel turn asks."""
    client = app.test_client()
    name = next(iter(app.extensions["comix_serve"].stores))

    def get(url: str, **kwargs: Any) -> tuple[float, Any]:
        t0 = time.perf_counter()
        response = client.get(url, **kwargs)
        ms = (time.perf_counter() - t0) * 1000
        assert response.status_code == 200, response.get_data(as_text=True)[:500]
        return ms, response

    page_ms, _ = get(f"/map/{name}")
    whole = [get(f"/api/map/{name}") for _ in range(queries + 1)]
    answer = whole[0][1].get_json()
    x0, y0, x1, y1 = answer["extent"]
    rng = np.random.default_rng(0)
    zoomed = []
    for _ in range(queries):
        cx, cy, w, h = rng.uniform(x0, x1), rng.uniform(y0, y1), (x1 - x0) / 8, (y1 - y0) / 8
        box = {"x0": cx - w / 2, "y0": cy - h / 2, "x1": cx + w / 2, "y1": cy + h / 2}
        zoomed.append(get(f"/api/map/{name}", query_string=box)[0])
    times = [ms for ms, _ in whole]
    return {
        "map_page_first_ms": round(page_ms, 1),
        "map_points_first_ms": round(times[0], 1),
        "map_points_ms_p50": round(float(np.median(times[1:])), 1),
        "map_points_shown": len(answer["rows"]),
        "map_points_kb": round(len(whole[0][1].data) / 1024),
        "map_zoomed_ms_p50": round(float(np.median(zoomed)), 1),
    }


def map_at_scale(rows: int, seed: int = 0) -> dict[str, float]:
    """The map's pieces at `rows` pages, on synthetic unit vectors: t-SNE of the landmarks, placing
    every page (the vectors made batch by batch, not timed), loading the points as serve holds them
    and a view of the whole map and a zoomed one."""
    rng = np.random.default_rng(seed)

    def unit(n: int) -> np.ndarray:
        v = rng.standard_normal((n, D), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    landmarks = unit(LANDMARKS)
    t0 = time.perf_counter()
    xy = lay_out(landmarks, seed)
    tsne_s = time.perf_counter() - t0
    placer = Placer(landmarks, xy)
    placed, place_s = [], 0.0
    for start in range(0, rows, 16384):
        batch = unit(min(16384, rows - start))
        t0 = time.perf_counter()
        placed.append(placer.place(batch))
        place_s += time.perf_counter() - t0
    points = np.concatenate(placed)
    series = np.array([f"Series {r % 97:02d}" for r in range(rows)], dtype=object)
    t0 = time.perf_counter()
    loaded = MapPoints(np.arange(rows), points[:, 0], points[:, 1], series, rows)
    load_s = time.perf_counter() - t0
    whole = [_ms(lambda: loaded.view(*loaded.extent, limit=4000)) for _ in range(21)]
    x0, y0, x1, y1 = loaded.extent
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0) / 64, (y1 - y0) / 64
    deep = loaded.view(cx - w, cy - h, cx + w, cy + h, limit=4000)
    zoomed = [_ms(lambda: loaded.view(cx - w, cy - h, cx + w, cy + h, limit=4000)) for _ in range(21)]
    return {
        "scale_rows": rows,
        "scale_tsne_s": round(tsne_s, 1),
        "scale_place_s": round(place_s, 1),
        "scale_place_rows_per_s": round(rows / place_s),
        "scale_load_s": round(load_s, 2),
        "scale_view_whole_ms_p50": round(float(np.median(whole[1:])), 1),
        "scale_view_zoomed_ms_p50": round(float(np.median(zoomed[1:])), 1),
        "scale_zoomed_in_view": deep.in_view,
    }


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
    parser.add_argument("--map", action="store_true", help="also build the map and time its first paint")
    parser.add_argument("--map-only", action="store_true", help="the map's figures, without the searches")
    parser.add_argument(
        "--map-rows", type=int, default=1_200_000, help="rows of the synthetic map timed at scale (0: none)"
    )
    args = parser.parse_args()
    with_map = args.map or args.map_only
    with tempfile.TemporaryDirectory(prefix="comix-serve-bench-") as tmp:
        folder = args.keep or Path(tmp)
        store = build_store(folder / "store", args.pages)
        ckpt = checkpoint(folder)
        stamp(store, ckpt)
        if args.index:
            t0 = time.perf_counter()
            build_index(store)
            index_s = round(time.perf_counter() - t0, 1)
        result = bench(store, ckpt, args.queries, searches=not args.map_only, with_map=with_map)
        if args.index:
            result["index_build_s"] = index_s
    if with_map and args.map_rows:
        result.update(map_at_scale(args.map_rows))
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"store: {result['pages']} pages ({result['searchable_pages']} searchable, {result['valid_panels']} valid "
        f"panels), d=384; serve started (model, index, text index, panels{', map' if with_map else ''}) in "
        f"{result['start_s']} s, peak RSS {result['max_rss_mb']} MB"
    )
    if with_map:
        print_map(result)
    if args.map_only:
        return 0
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


def print_map(result: dict[str, float]) -> None:
    print(
        f"map: built in {result['map_build_s']} s ({result['map_placed']} pages placed among "
        f"{result['map_landmarks']} landmarks); first paint: page {result['map_page_first_ms']} ms, "
        f"whole map's points first {result['map_points_first_ms']} ms, p50 {result['map_points_ms_p50']} ms "
        f"({result['map_points_shown']} points, {result['map_points_kb']} kB); zoomed 8x p50 "
        f"{result['map_zoomed_ms_p50']} ms"
    )
    if "scale_rows" in result:
        print(
            f"map at {result['scale_rows']} synthetic pages: t-SNE of the landmarks {result['scale_tsne_s']} s, "
            f"placing {result['scale_place_s']} s ({result['scale_place_rows_per_s']} pages/s), loading the points "
            f"{result['scale_load_s']} s; a view: whole map p50 {result['scale_view_whole_ms_p50']} ms, zoomed 64x "
            f"p50 {result['scale_view_zoomed_ms_p50']} ms ({result['scale_zoomed_in_view']} pages in it)"
        )


if __name__ == "__main__":
    sys.exit(main())
