"""An approximate part of a search: one generation's faiss index of pages or of panels, re-ranked.

faiss finds candidates in compressed codes (IVF lists of 8-bit scalar-quantized vectors; a flat
float32 index for small stores), then every candidate is scored again against its float16 unit
vector, read from the generation's segments (only the candidates' vectors are read).
A position of the index maps to a store row (and panel slot) through the generation's arrays; a
row of -1 is an entry replaced since (a page changed by `--retry-failed`), never returned.

A filtered search (filters.py) ranks only the allowed positions: when few are allowed (up to
GATHER_LIMIT), all of their vectors are read and scored exactly, which is both faster and better
than asking faiss; otherwise faiss skips the others as it scans (a bitmap selector), and the lists
probed are multiplied by four while they hold fewer than the candidates wanted, up to every list,
so a narrow filter is never answered with fewer results than it allows.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from comix_embed.common import config
from comix_embed.tools.search.layout import SEGMENTS, Segment, VectorPart
from comix_embed.tools.search.ranking import Candidates

# Candidates taken from faiss per query, at least, before re-ranking.
MIN_FETCH = 64
# Allowed positions up to which a filtered search reads and scores them all (~6 MB of float16 at d = 384).
GATHER_LIMIT = 8192


class Segments:
    """The float16 unit vectors of every position of one part, across its segment files.

    Vectors are read with `pread`, not memory-mapped: a query reads a few hundred scattered
    vectors, and a mapping would count every page it touched (with the kernel's read-around) in
    the process's resident memory until, over many queries, it held most of the files (gigabytes
    at a million pages). `pread` also keeps no file offset, so `serve`'s threads share the files.
    """

    def __init__(self, folder: Path, segments: list[Segment], dim: int) -> None:
        kept = [s for s in segments if s.count]
        self.paths = [folder / SEGMENTS / s.file for s in kept]
        self.offsets = np.cumsum([0] + [s.count for s in kept])
        self.dim = dim
        self.row_bytes = dim * np.dtype(np.float16).itemsize
        self._files = [open(path, "rb") for path in self.paths]  # noqa: SIM115 - held for the searcher's life

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """float32 vectors at these positions (any order, repeats allowed); one read per run of
        consecutive positions within a file."""
        out = np.empty((len(positions), self.dim), np.float32)
        if not len(positions):
            return out
        order = np.argsort(positions, kind="stable")
        ordered = np.asarray(positions)[order]
        which = np.searchsorted(self.offsets, ordered, side="right") - 1
        breaks = np.flatnonzero((np.diff(ordered) != 1) | (np.diff(which) != 0)) + 1
        for run in np.split(np.arange(len(ordered)), breaks):
            s = int(which[run[0]])
            first = int(ordered[run[0]] - self.offsets[s])
            size = len(run) * self.row_bytes
            raw = os.pread(self._files[s].fileno(), size, first * self.row_bytes)
            if len(raw) != size:
                raise OSError(f"{self.paths[s]}: ends before vector {first + len(run)} (a damaged index)")
            out[order[run]] = np.frombuffer(raw, np.float16).reshape(len(run), self.dim)
        return out


class AnnPart:
    """One generation's index of one kind (`pages` or `panels`), loaded for queries."""

    def __init__(self, folder: Path, generation: Path, kind: str, part: VectorPart, dim: int) -> None:
        self.kind = kind
        self.index = faiss.read_index(str(generation / f"{kind}.faiss"))
        if part.type == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = config.INDEX_NPROBE
        self.rows: np.ndarray = np.load(generation / f"{kind}_rows.npy")
        self.slots: np.ndarray = (
            np.load(generation / f"{kind}_slots.npy").astype(np.int64)
            if kind == "panels"
            else np.full(len(self.rows), -1, np.int64)
        )
        self.vectors = Segments(folder, part.segments, dim)

    @property
    def live(self) -> int:
        """Entries not replaced since."""
        return int((self.rows >= 0).sum())

    def search(
        self, queries: np.ndarray, need: int, exclude: np.ndarray, allowed: np.ndarray | None = None
    ) -> Candidates:
        """The `need` best entries for any of the unit query rows, rows in sorted `exclude` left out
        and, with an `allowed` row mask, only its rows; scores are cosines against the float16 vectors."""
        if self.index.ntotal == 0 or need <= 0:
            return Candidates.empty()
        if allowed is not None:
            return self._search_allowed(queries, need, self._positions_allowed(exclude, allowed))
        fetch = min(max(2 * need, MIN_FETCH), int(self.index.ntotal))
        _, labels = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), fetch)
        positions = np.unique(labels[labels >= 0])
        rows = self.rows[positions]
        keep = rows >= 0
        if len(exclude):
            keep &= ~np.isin(rows, exclude)
        return self._scored(queries, positions[keep], need)

    def _scored(self, queries: np.ndarray, positions: np.ndarray, need: int) -> Candidates:
        vectors = self.vectors.gather(positions)
        scores = vectors @ queries[0] if len(queries) == 1 else (vectors @ queries.T).max(axis=1)
        return Candidates(scores.astype(np.float32), self.rows[positions], self.slots[positions]).best(need)

    def _positions_allowed(self, exclude: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """Which positions a filtered search may return: live, not excluded, their row allowed."""
        rows = self.rows
        ok = (rows >= 0) & (rows < len(allowed))
        ok[ok] = allowed[rows[ok]]
        if len(exclude):
            ok &= ~np.isin(rows, exclude)
        return ok

    def _search_allowed(self, queries: np.ndarray, need: int, ok: np.ndarray) -> Candidates:
        count = int(ok.sum())
        if count <= GATHER_LIMIT:
            return self._scored(queries, np.flatnonzero(ok), need)
        bits = np.packbits(ok, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(ok), faiss.swig_ptr(bits))
        fetch = min(max(2 * need, MIN_FETCH), count)
        ivf = self.index if isinstance(self.index, faiss.IndexIVF) else None
        probe = config.INDEX_NPROBE
        query = np.ascontiguousarray(queries, dtype=np.float32)
        while True:
            params: faiss.SearchParameters = faiss.SearchParameters()
            if ivf is not None:
                params = ivf_params = faiss.SearchParametersIVF()
                ivf_params.nprobe = min(probe, ivf.nlist)
            params.sel = selector
            _, labels = self.index.search(query, fetch, params=params)
            found = np.unique(labels[labels >= 0])
            if ivf is None or len(found) >= min(need, count) or probe >= ivf.nlist:
                return self._scored(queries, found, need)
            probe *= 4
