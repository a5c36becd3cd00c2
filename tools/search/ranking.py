"""Scores to rankings: unit vectors, the k best of a score array, and merging candidate lists.

Every search part (the exact matrices, the approximate index) answers with candidates as
parallel arrays (scores, rows, slots); merging them here gives one order for all of them:
higher score first, then lower row, then lower slot (the store's order), whatever part found
a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# What the users' tools count as an embedded row: zero rows are unwritten or failed (docs/store.md, "Arrays").
NORM_EPS = 1e-6


@dataclass(frozen=True)
class Hit:
    """One result: a store row, its score, and the panel slot it is about (None: the page)."""

    row: int
    score: float
    panel: int | None = None


@dataclass
class Candidates:
    """Parallel arrays of found items: cosine scores, store rows, panel slots (-1 for pages)."""

    scores: np.ndarray
    rows: np.ndarray
    slots: np.ndarray

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.empty(0, np.float32), np.empty(0, np.int64), np.empty(0, np.int64))

    @classmethod
    def concat(cls, parts: list[Candidates]) -> Candidates:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.scores for p in parts]).astype(np.float32),
            np.concatenate([p.rows for p in parts]).astype(np.int64),
            np.concatenate([p.slots for p in parts]).astype(np.int64),
        )

    def best(self, need: int) -> Candidates:
        """The `need` best, ranked (score, then row, then slot)."""
        order = np.lexsort((self.slots, self.rows, -self.scores))[:need]
        return Candidates(self.scores[order], self.rows[order], self.slots[order])

    def hits(self, k: int, per_page: bool, panels: bool) -> list[Hit]:
        """The k best as hits; `per_page` keeps each page's best candidate only."""
        ranked = self.best(len(self.scores))
        keep = np.arange(len(ranked.rows))
        if per_page:
            _, first = np.unique(ranked.rows, return_index=True)
            keep = np.sort(first)
        return [
            Hit(int(ranked.rows[i]), float(ranked.scores[i]), int(ranked.slots[i]) if panels else None)
            for i in keep[:k]
        ]


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (callers drop rows of norm <= NORM_EPS first)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def normalise_into(vectors: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write vectors / their L2 norm into `out`; returns which rows are non-zero (norm > NORM_EPS)."""
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    np.divide(vectors, np.maximum(norms, NORM_EPS)[:, None], out=out)
    return np.asarray(norms > NORM_EPS)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first, ties broken by index (the store's row order).

    A partial sort finds the k-th score; every index at or above it is then ordered, so a tie at
    the boundary is decided by index rather than by argpartition's internal order.
    """
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    threshold = np.partition(scores, n - k)[n - k]
    candidates = np.flatnonzero(scores >= threshold)
    order = np.lexsort((candidates, -scores[candidates]))
    return np.asarray(candidates[order[:k]], dtype=np.int64)
