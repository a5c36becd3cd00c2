"""Exact search over a set of committed rows: every vector scored, the best kept.

Used for a whole store when it has no approximate index, and for the rows an index does not
cover yet (committed after it was built, or changed by `--retry-failed` since): the index is
never stale, because those rows are searched here and merged in.

Memory: page vectors cost 4*d bytes a page (1.5 KB at d = 384). Panel vectors cost 4*d bytes per
valid panel, so they are held only up to `panel_memory` bytes; above it a panel search streams
the rows from the store STREAM_ROWS at a time, keeping each slice's best candidates (same answer,
one slice of memory, every panel read from disk per query).

A filtered search (filters.py) scores every vector as usual and sets the scores of rows outside
its mask to -inf before the top-k, so it costs what an unfiltered one does.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from comix_embed.tools.search.ranking import Candidates, top_k
from comix_embed.tools.search.rows import StoreRows

STREAM_ROWS = 1024
DEFAULT_PANEL_MEMORY = 4 << 30


class ExactPart:
    """Page vectors of `rows` in memory; their panels in memory or streamed (module docstring)."""

    def __init__(self, store: StoreRows, rows: np.ndarray, panel_memory: int = DEFAULT_PANEL_MEMORY) -> None:
        self.store = store
        self.panel_memory = panel_memory
        found = list(store.page_vectors(rows))
        d = store.dim
        self.page_rows = np.concatenate([r for r, _ in found]) if found else np.empty(0, np.int64)
        self.pages = np.concatenate([v for _, v in found]) if found else np.empty((0, d), np.float32)
        self._panels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._panel_count: int | None = None

    def panel_bytes(self) -> int:
        """Memory the panel matrix needs: 4*d bytes per valid panel of a searchable page."""
        if not len(self.page_rows):
            return 0
        return int(self.store.read("panel_mask", self.page_rows).sum()) * self.store.dim * 4

    def load_panels(self) -> bool:
        """Hold the panel matrix in memory if it fits `panel_memory`; returns whether it does."""
        if self._panels is None and self.panel_bytes() <= self.panel_memory:
            found = list(self.store.panel_vectors(self.page_rows))
            if found:
                rows, slots, vectors = (np.concatenate(x) for x in zip(*found))
            else:
                rows, slots = np.empty(0, np.int64), np.empty(0, np.int64)
                vectors = np.empty((0, self.store.dim), np.float32)
            self._panels = (rows, slots, vectors)
        return self._panels is not None

    @property
    def panel_count(self) -> int | None:
        """Valid panels held in memory (None while not loaded, or when streamed)."""
        return None if self._panels is None else len(self._panels[0])

    def _panel_blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if self.load_panels():
            assert self._panels is not None
            yield self._panels
            return
        yield from self.store.panel_vectors(self.page_rows, STREAM_ROWS)

    def search_pages(self, query: np.ndarray, need: int, allowed: np.ndarray | None = None) -> Candidates:
        """The `need` pages of highest cosine to one unit query vector (among `allowed` rows)."""
        scores = self.pages @ np.asarray(query, dtype=np.float32)
        return _best(scores, self.page_rows, np.full(len(scores), -1, np.int64), need, allowed)

    def search_panels(self, queries: np.ndarray, need: int, allowed: np.ndarray | None = None) -> Candidates:
        """The `need` panels of highest cosine to any of the unit query rows (among `allowed` rows)."""
        found = []
        for rows, slots, matrix in self._panel_blocks():
            scores = matrix @ queries[0] if len(queries) == 1 else (matrix @ queries.T).max(axis=1)
            found.append(_best(scores, rows, slots, need, allowed))
        return Candidates.concat(found).best(need)


def _best(scores: np.ndarray, rows: np.ndarray, slots: np.ndarray, need: int, allowed: np.ndarray | None) -> Candidates:
    """The `need` best of scored items, those whose row `allowed` does not hold left out."""
    if allowed is not None:
        scores = np.where(allowed[rows], scores, -np.inf).astype(np.float32)
    best = top_k(scores, need)
    if allowed is not None:
        best = best[np.isfinite(scores[best])]
    return Candidates(scores[best], rows[best], slots[best])
