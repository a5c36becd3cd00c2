"""Building and extending a store's map (`comix-embed map`): new rows placed, placed rows never moved.

The first run (or `--rebuild`) chooses the landmarks, lays them out and places every committed
row. A later run keeps the landmarks and their positions, and places only the rows committed
since and the rows whose status changed since (pages `--retry-failed` embedded): a page's
position never changes while the store grows, so a researcher's mental picture of the map stays
valid. Rows that are not embedded (failed, zero vectors) have no position (NaN).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from comix_embed.common.errors import UsageError
from comix_embed.common.timestamps import utc_now
from comix_embed.tools.map.layout import LANDMARKS, NEIGHBOURS, SEED, Placer, choose_landmarks, lay_out, perplexity_for
from comix_embed.tools.map.storage import (
    FORMAT,
    MapArrays,
    MapMeta,
    MapMethod,
    arrays_name,
    check_store,
    map_dir,
    read_arrays,
    read_meta,
    remove_leftovers,
    write_map,
)
from comix_embed.tools.search.layout import build_lock, store_identity
from comix_embed.tools.search.rows import StoreRows

log = logging.getLogger("comix.map")
# Rows read and placed per batch: 16384 rows of d = 384 are 25 MB of vectors.
PLACE_BATCH = 16384


@dataclass
class MapReport:
    """What a run did: the map in use after it."""

    version: int
    rows: int
    placed: int
    added: int
    landmarks: int
    seconds: float
    fresh: bool
    up_to_date: bool = False


def build_map(
    path: str | os.PathLike[str], progress: bool = False, rebuild: bool = False, landmarks: int = LANDMARKS
) -> MapReport:
    """Build, extend or (`rebuild`) remake the map of a store (or an output folder's store)."""
    started = time.perf_counter()
    store = StoreRows(path)
    folder = map_dir(store.path)
    with build_lock(folder, "map"):
        meta = read_meta(folder)
        if meta is not None and not rebuild:
            check_store(meta, store_identity(store.attrs), folder)
        remove_leftovers(folder, meta)
        version = meta.version + 1 if meta is not None else 1
        if meta is None or rebuild:
            arrays = _fresh(store, landmarks)
            method = MapMethod(
                landmarks=landmarks,
                seed=SEED,
                perplexity=perplexity_for(len(arrays.landmark_rows)),
                neighbours=NEIGHBOURS,
            )
            to_place = np.arange(store.committed)
        else:
            arrays, method = read_arrays(folder, meta), meta.method
            changed = np.flatnonzero(store.status[: meta.rows] != arrays.status)
            to_place = np.union1d(changed, np.arange(meta.rows, store.committed))
            if not len(to_place):
                log.info("the map in %s is up to date: %d committed rows", folder, meta.rows)
                return _report(meta, arrays, 0, started, fresh=False, up_to_date=True)
            arrays = _grown(arrays, store, changed)
        log.info(
            "map version %d of %s: placing %d rows among %d landmarks (%d committed)",
            version,
            folder,
            len(to_place),
            len(arrays.landmark_rows),
            store.committed,
        )
        added = _place(store, arrays, to_place, method.neighbours, progress)
        new_meta = MapMeta(
            format=FORMAT,
            version=version,
            arrays=arrays_name(version),
            store=store_identity(store.attrs),
            store_path=str(store.path),
            rows=store.committed,
            placed=int(np.isfinite(arrays.x).sum()),
            method=method,
            built=utc_now(),
        )
        write_map(folder, new_meta, arrays)
        report = _report(new_meta, arrays, added, started, fresh=meta is None or rebuild)
        log.info(
            "map version %d in use: %d committed rows, %d placed (%d added) in %.1f s",
            version,
            report.rows,
            report.placed,
            report.added,
            report.seconds,
        )
        return report


def _fresh(store: StoreRows, landmarks: int) -> MapArrays:
    """Landmarks chosen and laid out; every row not placed yet."""
    candidates = choose_landmarks(store.searchable_status(np.arange(store.committed)), landmarks, SEED)
    found = list(store.page_vectors(candidates, PLACE_BATCH))  # drops zero vectors
    rows = np.concatenate([r for r, _ in found]) if found else np.empty(0, np.int64)
    if not len(rows):
        raise UsageError(f"{store.path} has no embedded pages yet: nothing to map")
    vectors = np.concatenate([v for _, v in found])
    log.info("laying out %d landmarks (t-SNE, perplexity %.1f)", len(rows), perplexity_for(len(rows)))
    return MapArrays(
        x=np.full(store.committed, np.nan, np.float32),
        y=np.full(store.committed, np.nan, np.float32),
        status=store.status.copy(),
        landmark_rows=rows.astype(np.int64),
        landmark_vectors=vectors,
        landmark_xy=lay_out(vectors, SEED),
    )


def _grown(arrays: MapArrays, store: StoreRows, changed: np.ndarray) -> MapArrays:
    """The arrays grown to the committed rows: new rows and changed rows not placed yet."""
    grow = store.committed - len(arrays.x)
    x = np.concatenate([arrays.x, np.full(grow, np.nan, np.float32)])
    y = np.concatenate([arrays.y, np.full(grow, np.nan, np.float32)])
    x[changed], y[changed] = np.nan, np.nan
    return MapArrays(
        x=x,
        y=y,
        status=store.status.copy(),
        landmark_rows=arrays.landmark_rows,
        landmark_vectors=arrays.landmark_vectors,
        landmark_xy=arrays.landmark_xy,
    )


def _place(store: StoreRows, arrays: MapArrays, rows: np.ndarray, neighbours: int, progress: bool) -> int:
    """Positions for the embedded ones among sorted `rows`, in place; landmarks keep their own."""
    placer = Placer(arrays.landmark_vectors, arrays.landmark_xy, neighbours)
    placed = 0
    with tqdm(total=len(rows), desc="placing pages", unit="row", disable=not progress) as bar:
        for chunk in store.batches(rows, PLACE_BATCH):
            for batch, vectors in store.page_vectors(chunk, PLACE_BATCH):
                xy = placer.place(vectors)
                arrays.x[batch], arrays.y[batch] = xy[:, 0], xy[:, 1]
                placed += len(batch)
            bar.update(len(chunk))
    own = np.isin(arrays.landmark_rows, rows)
    arrays.x[arrays.landmark_rows[own]] = arrays.landmark_xy[own, 0]
    arrays.y[arrays.landmark_rows[own]] = arrays.landmark_xy[own, 1]
    return placed


def _report(
    meta: MapMeta, arrays: MapArrays, added: int, started: float, fresh: bool, up_to_date: bool = False
) -> MapReport:
    return MapReport(
        version=meta.version,
        rows=meta.rows,
        placed=meta.placed,
        added=added,
        landmarks=len(arrays.landmark_rows),
        seconds=round(time.perf_counter() - started, 3),
        fresh=fresh,
        up_to_date=up_to_date,
    )
