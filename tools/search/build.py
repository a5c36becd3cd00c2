"""Building and extending a store's search index (`comix-embed index`): one new generation per run.

A run covers every row committed when it starts. With a current generation of the same store it
extends it: the vectors of rows committed since, and of rows whose status changed since (pages
that `--retry-failed` embedded; their old entries, if any, are marked replaced), go into a new
segment and are added to a copy of the previous faiss index. The lists are trained afresh (from
the segments, without reading the store again) when the store outgrows them: past
INDEX_IVF_MIN_VECTORS for a flat index, past INDEX_RETRAIN_GROWTH times the vectors an IVF index
was trained on. See layout.py for why a killed build leaves the previous generation in use.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from comix_embed.common import config
from comix_embed.common.timestamps import utc_now
from comix_embed.tools.search.ann import Segments
from comix_embed.tools.search.layout import (
    FORMAT,
    SEGMENTS,
    IndexMeta,
    IndexParts,
    Segment,
    TextPart,
    VectorPart,
    build_lock,
    current_generation,
    fsync_file,
    generation_name,
    generation_number,
    index_dir,
    publish,
    read_meta,
    remove_leftovers,
    save_array,
    store_identity,
)
from comix_embed.tools.search.rows import StoreRows
from comix_embed.tools.search.text import Postings, plain_text

log = logging.getLogger("comix.index")
KINDS = ("pages", "panels")
# Vectors added to faiss per call, and rows read from the store per batch while streaming.
ADD_BATCH = 65536
# Training sample per IVF list (faiss wants at least 39).
TRAIN_PER_LIST = 64


@dataclass
class BuildReport:
    """What a run did: the generation in use after it and what it holds."""

    generation: int
    rows: int
    pages: int
    panels: int
    added_pages: int
    added_panels: int
    retrained: list[str]
    seconds: float
    up_to_date: bool = False


def build_index(
    path: str | os.PathLike[str], progress: bool = False, ivf_min: int = config.INDEX_IVF_MIN_VECTORS
) -> BuildReport:
    """Build or extend the index of a store (or an output folder's store); see the module docstring."""
    started = time.perf_counter()
    store = StoreRows(path)
    folder = index_dir(store.path)
    with build_lock(folder):
        previous = current_generation(folder)
        meta = read_meta(previous) if previous is not None else None
        if meta is not None and meta.store != store_identity(store.attrs):
            log.info("the index in %s is of another store (or model): building afresh", folder)
            meta = None
        remove_leftovers(folder, previous)
        (folder / SEGMENTS).mkdir(exist_ok=True)
        covered = meta.rows if meta is not None else 0
        old_status = np.load(previous / "status.npy") if meta is not None and previous is not None else None
        changed = (
            np.flatnonzero(store.status[:covered] != old_status) if old_status is not None else np.empty(0, np.int64)
        )
        if meta is not None and previous is not None and covered == store.committed and not len(changed):
            log.info("index %s is up to date: %d committed rows", previous, covered)
            return _report(generation_number(previous), meta, {}, [], started, up_to_date=True)
        number = generation_number(previous) + 1 if previous is not None else 1
        generation = folder / generation_name(number)
        generation.mkdir()
        to_add = np.union1d(changed, np.arange(covered, store.committed))
        log.info(
            "building generation %d of %s: rows %d to %d (%d changed since)",
            number,
            folder,
            covered,
            store.committed,
            len(changed),
        )
        parts: dict[str, VectorPart] = {}
        added: dict[str, int] = {}
        retrained: list[str] = []
        text = TextPart(segments=list(meta.parts.text.segments) if meta is not None else [])
        for kind in KINDS:
            before = getattr(meta.parts, kind) if meta is not None else None
            builder = _PartBuilder(store, folder, generation, number, kind, ivf_min, progress)
            parts[kind], added[kind], fresh = builder.build(
                previous if meta is not None else None, before, changed, to_add
            )
            if fresh:
                retrained.append(kind)
            if kind == "pages":
                text.segments.append(_write_text(store, folder, number, builder.added_rows))
        save_array(generation / "status.npy", store.status)
        new_meta = IndexMeta(
            format=FORMAT,
            generation=number,
            store=store_identity(store.attrs),
            store_path=str(store.path),
            rows=store.committed,
            built=utc_now(),
            parts=IndexParts(pages=parts["pages"], panels=parts["panels"], text=text),
        )
        publish(folder, generation, new_meta)
        remove_leftovers(folder, generation)
        report = _report(number, new_meta, added, retrained, started)
        log.info(
            "generation %d in use: %d committed rows, %d pages and %d panels indexed (%d and %d added) in %.1f s",
            number,
            report.rows,
            report.pages,
            report.panels,
            report.added_pages,
            report.added_panels,
            report.seconds,
        )
        return report


def _report(
    number: int,
    meta: IndexMeta,
    added: dict[str, int],
    retrained: list[str],
    started: float,
    up_to_date: bool = False,
) -> BuildReport:
    return BuildReport(
        generation=number,
        rows=meta.rows,
        pages=meta.parts.pages.live,
        panels=meta.parts.panels.live,
        added_pages=added.get("pages", 0),
        added_panels=added.get("panels", 0),
        retrained=retrained,
        seconds=round(time.perf_counter() - started, 3),
        up_to_date=up_to_date,
    )


def _write_text(store: StoreRows, folder: Path, number: int, rows: np.ndarray) -> Segment:
    """The word index of these (searchable) rows' page text, as a new segment; its entry.

    A row's text is in one segment only: rows indexed again are pages `--retry-failed` embedded,
    whose failed rows had no text indexed (only searchable pages' text is).
    """
    name = f"text_{number:06d}"
    parts = [
        Postings.of_texts([plain_text(raw).lower() for raw in store.read("page_text", batch)], batch, store.committed)
        for batch in store.batches(rows)
    ]
    Postings.merge(parts, store.committed).save(folder / SEGMENTS / name)
    return Segment(file=name, count=len(rows))


class _PartBuilder:
    """One kind's part of a new generation (pages: one vector a row; panels: one per valid slot)."""

    def __init__(
        self, store: StoreRows, folder: Path, generation: Path, number: int, kind: str, ivf_min: int, progress: bool
    ) -> None:
        self.store, self.folder, self.generation, self.kind = store, folder, generation, kind
        self.number, self.ivf_min, self.progress = number, ivf_min, progress
        self.dim = store.dim
        self.added_rows = np.empty(0, np.int64)

    def build(
        self, previous: Path | None, before: VectorPart | None, changed: np.ndarray, to_add: np.ndarray
    ) -> tuple[VectorPart, int, bool]:
        """Write this kind's files; returns (its meta, vectors added, whether trained afresh)."""
        segments: list[Segment] = list(before.segments) if before else []
        if previous is not None and before is not None:
            rows = np.load(previous / f"{self.kind}_rows.npy")
            slots = np.load(previous / f"{self.kind}_slots.npy")
            rows[np.isin(rows, changed)] = -1
        else:
            rows, slots = np.empty(0, np.int64), np.empty(0, np.int8)
        segment, new_rows, new_slots = self._write_segment(to_add)
        self.added_rows = new_rows
        segments.append(segment)
        rows = np.concatenate([rows, new_rows]).astype(np.int64)
        slots = np.concatenate([slots, new_slots]).astype(np.int8)
        total = len(rows)
        kind_wanted = "ivf" if total >= self.ivf_min else "flat"
        fresh = (
            before is None
            or previous is None
            or before.type != kind_wanted
            or (kind_wanted == "ivf" and total > config.INDEX_RETRAIN_GROWTH * before.trained_on)
        )
        vectors = Segments(self.folder, segments, self.dim)
        if fresh:
            index, trained_on = self._new_index(kind_wanted, vectors)
            first = 0
        else:
            assert previous is not None and before is not None
            index, trained_on = faiss.read_index(str(previous / f"{self.kind}.faiss")), before.trained_on
            first = total - segment.count
        self._add(index, vectors, first, total)
        path = self.generation / f"{self.kind}.faiss"
        faiss.write_index(index, str(path))
        fsync_file(path)
        save_array(self.generation / f"{self.kind}_rows.npy", rows)
        save_array(self.generation / f"{self.kind}_slots.npy", slots)
        meta = VectorPart(
            type=kind_wanted,
            lists=int(faiss.extract_index_ivf(index).nlist) if kind_wanted == "ivf" else 0,
            trained_on=int(trained_on),
            entries=total,
            live=int((rows >= 0).sum()),
            segments=segments,
        )
        return meta, segment.count, fresh

    def _vectors(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(rows, slots, unit vectors) of `rows` for this kind."""
        if self.kind == "pages":
            for found, vectors in self.store.page_vectors(rows):
                yield found, np.full(len(found), -1, np.int64), vectors
        else:
            yield from self.store.panel_vectors(rows)

    def _write_segment(self, rows: np.ndarray) -> tuple[Segment, np.ndarray, np.ndarray]:
        """The vectors of `rows` as a new float16 segment file; (its entry, their rows, their slots)."""
        name = f"{self.kind}_{self.number:06d}.f16"
        found_rows, found_slots, count = [], [], 0
        bar = tqdm(total=len(rows), desc=f"{self.kind}: reading rows", unit="row", disable=not self.progress)
        with open(self.folder / SEGMENTS / name, "wb") as fh:
            done = 0
            for r, s, v in self._vectors(rows):
                fh.write(v.astype(np.float16).tobytes())
                found_rows.append(r)
                found_slots.append(s)
                count += len(r)
                upto = int(np.searchsorted(rows, r[-1], side="right")) if len(r) else done
                bar.update(max(upto - done, 0))
                done = max(upto, done)
            fh.flush()
            os.fsync(fh.fileno())
        bar.update(len(rows) - done)
        bar.close()
        cat_rows = np.concatenate(found_rows) if found_rows else np.empty(0, np.int64)
        cat_slots = np.concatenate(found_slots) if found_slots else np.empty(0, np.int64)
        return Segment(file=name, count=count), cat_rows, cat_slots

    def _new_index(self, kind: str, vectors: Segments) -> tuple[faiss.Index, int]:
        """An empty index for `vectors`: flat, or IVF lists trained on a sample of them."""
        n = len(vectors)
        if kind == "flat":
            return faiss.IndexFlatIP(self.dim), n
        lists = max(1, min(round(config.INDEX_LISTS_PER_SQRT * math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, self.dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, lists * TRAIN_PER_LIST), replace=False))
        log.info("%s: training %d lists on %d of %d vectors", self.kind, lists, len(sample), n)
        index.train(vectors.gather(sample))
        return index, n

    def _add(self, index: faiss.Index, vectors: Segments, first: int, total: int) -> None:
        bar = tqdm(total=total - first, desc=f"{self.kind}: indexing", unit="vec", disable=not self.progress)
        for start in range(first, total, ADD_BATCH):
            stop = min(start + ADD_BATCH, total)
            index.add(vectors.gather(np.arange(start, stop)))
            bar.update(stop - start)
        bar.close()
