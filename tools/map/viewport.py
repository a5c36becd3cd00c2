"""The map as serve shows it: every placed page in memory, in priority order, and the points of a view.

Level of detail: each page has a fixed priority, a hash of its row number (splitmix64), so the
order is a uniform random shuffle that never changes as the store grows. The points are held
sorted by it; a view answers the first `limit` pages inside its box in that order. That is a
uniform random sample of what is in view, of the same density everywhere on screen; zooming in
makes the box smaller, so more of its pages come in, down to every one. A view is one vectorised
pass over the points (a few milliseconds at 1.2 million), whatever the zoom.

Colour: by series, the most common series first (`legend`), the rest as one colour: a colour
index per row (serve's map_views.py greys out the pages outside a search filter).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comix_embed.tools.map.storage import check_store, map_dir, read_arrays, read_meta
from comix_embed.tools.search.layout import store_identity
from comix_embed.tools.search.rows import StoreRows

# Series given a colour of their own; the others share one more.
COLOURS = 10
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def priority(rows: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random key per row (splitmix64 of the row number): lower shows first."""
    z = rows.astype(np.uint64) + _MIX[0]
    z = (z ^ (z >> np.uint64(30))) * _MIX[1]
    z = (z ^ (z >> np.uint64(27))) * _MIX[2]
    return z ^ (z >> np.uint64(31))


@dataclass
class LegendEntry:
    name: str
    colour: int
    pages: int


@dataclass
class View:
    """The points of one view, in priority order, and how many pages the box holds in all."""

    rows: np.ndarray
    x: np.ndarray
    y: np.ndarray
    colour: np.ndarray
    in_view: int


class MapPoints:
    """The placed pages of one store's map, sorted by priority, with a colour per page."""

    def __init__(self, rows: np.ndarray, x: np.ndarray, y: np.ndarray, series: np.ndarray, covered: int) -> None:
        order = np.argsort(priority(rows), kind="stable")
        self.rows, self.x, self.y = rows[order].astype(np.int64), x[order], y[order]
        self.covered = covered
        self.colour, self.legend = _by_series(series[order])

    @classmethod
    def load(cls, store: Path) -> MapPoints | None:
        """The map beside a store (None: it has none); UsageError when it is another store's."""
        folder = map_dir(store)
        meta = read_meta(folder)
        if meta is None:
            return None
        rows_of_store = StoreRows(store)
        check_store(meta, store_identity(rows_of_store.attrs), folder)
        arrays = read_arrays(folder, meta)
        placed = np.flatnonzero(np.isfinite(arrays.x))
        series = np.asarray(rows_of_store.array("series")[: meta.rows], dtype=object)[placed]
        return cls(placed, arrays.x[placed], arrays.y[placed], series, meta.rows)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1 of every point (a unit box around a single one)."""
        if not len(self.rows):
            return (-1.0, -1.0, 1.0, 1.0)
        x0, x1, y0, y1 = float(self.x.min()), float(self.x.max()), float(self.y.min()), float(self.y.max())
        pad = max(x1 - x0, y1 - y0, 1e-3) * 0.05
        return (x0 - pad, y0 - pad, x1 + pad, y1 + pad)

    def view(self, x0: float, y0: float, x1: float, y1: float, limit: int) -> View:
        """The first `limit` points (by priority) inside [x0, x1] × [y0, y1]."""
        inside = np.flatnonzero((self.x >= x0) & (self.x <= x1) & (self.y >= y0) & (self.y <= y1))
        shown = inside[:limit]
        return View(self.rows[shown], self.x[shown], self.y[shown], self.colour[shown], len(inside))


def _by_series(series: np.ndarray) -> tuple[np.ndarray, list[LegendEntry]]:
    """A colour per point: the rank of its series among the COLOURS most common, else COLOURS."""
    counts = Counter(series.tolist())
    ranked = sorted(counts, key=lambda s: (-counts[s], s))
    colour_of = {name: min(rank, COLOURS) for rank, name in enumerate(ranked)}
    colour = np.fromiter((colour_of[s] for s in series.tolist()), dtype=np.int8, count=len(series))
    legend = [LegendEntry(str(name), rank, counts[name]) for rank, name in enumerate(ranked[:COLOURS])]
    if len(ranked) > COLOURS:
        legend.append(LegendEntry("other series", COLOURS, sum(counts[s] for s in ranked[COLOURS:])))
    return colour, legend
