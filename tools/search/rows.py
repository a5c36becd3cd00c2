"""Reading a store's committed rows for search: statuses, unit page and panel vectors, text, ids.

Only the committed prefix is read (`committed_rows` first, the arrays after: every array holds at
least that many whole rows). Rows are read in batches of at most LOAD_ROWS: a contiguous batch as
one slice, scattered rows (a few pages changed by `--retry-failed`) by orthogonal selection, which
reads only the chunks that hold them. Failed rows, rows never committed, zero vectors and padded
slots are never yielded: they never rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.store.reading import read_attrs, read_committed_rows, resolve_store
from comix_embed.common.store.schema import STATUS_FULL_PAGE, STATUS_OK
from comix_embed.tools.search.ranking import NORM_EPS, normalise_into

SEARCHABLE = (STATUS_OK, STATUS_FULL_PAGE)
# Rows per read: 8192 rows of panels are ~150 MB at d = 384, 12 slots.
LOAD_ROWS = 8192


class StoreRows:
    """One store's committed prefix, opened read-only (a snapshot: `committed` is fixed at open)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: Path = resolve_store(path)
        self.attrs: dict[str, Any] = read_attrs(self.path)
        self.committed = read_committed_rows(self.path)
        self._group = zarr.open_group(self.path, mode="r", use_consolidated=False)
        self.status: np.ndarray = np.asarray(self.array("status")[: self.committed])

    @property
    def dim(self) -> int:
        return int(self.array("page_embeddings").shape[1])

    @property
    def max_panels(self) -> int:
        return int(self.attrs.get("max_panels", config.MAX_PANELS))

    def array(self, name: str) -> zarr.Array:
        found = self._group[name]
        if not isinstance(found, zarr.Array):
            raise UsageError(f"{self.path}: {name} is a group, not an array: not a comix-embed store")
        return found

    def read(self, name: str, rows: np.ndarray) -> np.ndarray:
        """One array's values at sorted `rows` (contiguous: one slice; else the chunks holding them)."""
        if not len(rows):
            return np.asarray(self.array(name)[0:0])
        start, stop = int(rows[0]), int(rows[-1]) + 1
        if stop - start == len(rows):
            return np.asarray(self.array(name)[start:stop])
        return np.asarray(self.array(name).get_orthogonal_selection(np.asarray(rows)))

    def cells(self, name: str, rows: list[int], slots: list[int] | None = None) -> list[Any]:
        """One array's values at these (unsorted) rows, and slots, in one read."""
        if not rows:
            return []
        index = (np.asarray(rows),) if slots is None else (np.asarray(rows), np.asarray(slots))
        return list(np.asarray(self.array(name).vindex[index]).tolist())

    def searchable_status(self, rows: np.ndarray) -> np.ndarray:
        """`rows` whose status says embedded (ok or full-page)."""
        return rows[np.isin(self.status[rows], SEARCHABLE)]

    def batches(self, rows: np.ndarray, step: int = LOAD_ROWS) -> Iterator[np.ndarray]:
        for at in range(0, len(rows), step):
            yield rows[at : at + step]

    def page_vectors(self, rows: np.ndarray, step: int = LOAD_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, unit page vectors) of the searchable ones among sorted `rows`, batch by batch."""
        for batch in self.batches(self.searchable_status(rows), step):
            vectors = self.read("page_embeddings", batch).astype(np.float32, copy=False)
            keep = normalise_into(vectors, vectors)
            yield batch[keep], vectors[keep]

    def panel_vectors(
        self, rows: np.ndarray, step: int = LOAD_ROWS
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(rows, slots, unit vectors) of the valid, non-zero panels of the searchable pages among
        sorted `rows` (a page of zero page vector is not searchable, nor are its panels)."""
        for batch in self.batches(self.searchable_status(rows), step):
            pages = self.read("page_embeddings", batch)
            mask = self.read("panel_mask", batch) & (np.einsum("ij,ij->i", pages, pages) > NORM_EPS**2)[:, None]
            at, slots = np.nonzero(mask)
            vectors = self.read("panel_embeddings", batch)[at, slots].astype(np.float32, copy=False)
            keep = normalise_into(vectors, vectors)
            yield batch[at[keep]], slots[keep].astype(np.int64), vectors[keep]
