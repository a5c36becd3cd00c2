"""Search over a store's committed rows: page similarity, panel-level vector search, keywords.

`SearchIndex.load` reads what searches need once, and every query is then a matrix product or
an index lookup, never a pass over the store:
- page embeddings of searchable rows (status ok or full-page, norm > 1e-6), L2-normalised into one
  float32 matrix, so `like` is one matrix-vector product (cosine) and a partial sort;
- panel embeddings of valid slots, normalised, with their (row, slot), for panel-level searches;
- the page text, with an index of its words, so a keyword costs a lookup, not a text scan.
Only the page matrix is read up front; the others on first use (a one-shot `--like` does not
build the keyword index), and ids, series and text of the hits alone when results are shown.
Failed rows, rows never committed and padded slots are not in the matrices: they never rank.

Memory, and stores beyond it. Pages cost 4*d bytes each in memory (1.5 KB at d = 384: 150 MB for
100,000 pages, 1.5 GB for a million), plus their text (~300 bytes a page) and its word index.
Panels cost 4*d bytes per valid panel (~1.1 GB for 100,000 pages of 7 panels on average), so they
are held in memory only up to `panel_memory` bytes. Above it, a panel-level search streams the
store instead: it reads `STREAM_ROWS` rows at a time, scores them, keeps each slice's best
candidates and merges them, so memory stays at one slice (~19 MB) whatever the store's size, and
the answer is the same, at the cost of reading every panel from disk for each query. The page
matrix and the text are always held (a few percent of the panels' size): a store whose pages alone
exceed memory (~10 million pages on a 16 GB machine) is beyond this index.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.preprocess import join_text
from comix_embed.common.results import STATUS_FULL_PAGE, STATUS_OK
from comix_embed.common.store import read_attrs, read_committed_rows, resolve_store

# What the users' tools count as an embedded row (spec/store.md: zero rows are unwritten or failed).
NORM_EPS = 1e-6
SEARCHABLE = (STATUS_OK, STATUS_FULL_PAGE)
# Rows per read when loading or streaming: 8192 rows of panels are ~150 MB at d = 384, 12 slots.
LOAD_ROWS = 8192
STREAM_ROWS = 1024
DEFAULT_PANEL_MEMORY = 4 << 30
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Hit:
    """One result: a store row, its score, and the panel slot it is about (None: the page)."""

    row: int
    score: float
    panel: int | None = None


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (callers drop rows of norm <= NORM_EPS first)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


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
    return candidates[order[:k]]


def fold_page_ref(ref: str) -> str:
    """A page id or pasted path, compared case-insensitively with `\\` folded to `/`."""
    return ref.strip().replace("\\", "/").lower().removeprefix("./")


class TextIndex:
    """Case-insensitive substring counts over many documents, through an index of their words.

    An occurrence of a query made only of word characters lies inside one word of the text, so its
    count in a document is the sum, over the document's words w, of `w.count(query)` times the
    occurrences of w. The index answers such queries from the vocabulary and the postings, without
    scanning text (a single `str.count` over 100,000 pages' text takes ~70 ms on its own). Other
    queries (spaces, punctuation) count by scanning only the documents that hold every word part.
    """

    def __init__(self, texts: list[str]) -> None:
        import pandas as pd  # hash-based factorize: ~10x faster than a dict lookup per word

        self.texts = texts
        self.lower = [t.lower() for t in texts]
        n = max(len(texts), 1)
        words: list[str] = []
        lengths = np.zeros(len(texts), dtype=np.int64)
        for i, text in enumerate(self.lower):
            found = _WORD.findall(text)
            lengths[i] = len(found)
            words.extend(found)
        codes, vocab = pd.factorize(pd.Series(words, dtype=object), sort=False)
        docs = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        keys, counts = np.unique(codes.astype(np.int64) * n + docs, return_counts=True)
        self._post_doc = keys % n
        self._post_count = counts
        self._word_start = np.searchsorted(keys // n, np.arange(len(vocab) + 1))
        # the vocabulary as one string: a query is found in every word at once by one regex pass
        self._vocab_text = "\n".join(vocab)
        self._vocab_offsets = np.cumsum([0] + [len(w) + 1 for w in vocab])

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self, query: str) -> np.ndarray:
        """Occurrences of `query` (case-insensitive, non-overlapping) in each document."""
        q = query.lower()
        if not q.strip():
            raise UsageError("--keyword: give a non-empty word")
        if _WORD.fullmatch(q):
            return self._word_counts(q)
        parts = _WORD.findall(q)
        candidates = np.arange(len(self))
        for part in parts:
            candidates = np.intersect1d(candidates, np.flatnonzero(self._word_counts(part)))
        out = np.zeros(len(self), dtype=np.int64)
        for doc in candidates:
            out[doc] = self.lower[doc].count(q)
        return out

    def _word_counts(self, q: str) -> np.ndarray:
        hits = np.fromiter((m.start() for m in re.finditer(re.escape(q), self._vocab_text)), dtype=np.int64)
        words, per_word = np.unique(np.searchsorted(self._vocab_offsets, hits, side="right") - 1, return_counts=True)
        starts = self._word_start[words]
        lens = self._word_start[words + 1] - starts
        postings = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(lens.sum())
        weights = self._post_count[postings] * np.repeat(per_word, lens)
        return np.bincount(self._post_doc[postings], weights=weights, minlength=len(self)).astype(np.int64)


class SearchIndex:
    """A store's committed rows, read once, searched as matrices (see the module's docstring).

    Only the page matrix and the statuses are read up front; the rest (ids, text and its index,
    the panel matrix) is read when a search first needs it, so a one-shot `--like` or `--text`
    on a large store does not pay for the keyword index, nor `--keyword` for the panels.
    """

    def __init__(self, path: Path, panel_memory: int = DEFAULT_PANEL_MEMORY) -> None:
        self.path = path
        self.attrs = read_attrs(path)
        # committed_rows first, arrays after: every array holds at least that many whole rows
        self.committed = read_committed_rows(path)
        self._group = zarr.open_group(path, mode="r")
        self.panel_memory = panel_memory
        self.status = self._group["status"][: self.committed]
        self.rows, self.pages = self._load_pages()
        self._position = np.full(self.committed, -1, dtype=np.int64)
        self._position[self.rows] = np.arange(len(self.rows))
        self._panels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str], panel_memory: int = DEFAULT_PANEL_MEMORY) -> SearchIndex:
        """Read a store (or an output folder's store) once; `panel_memory` bounds the panel matrix."""
        return cls(resolve_store(path), panel_memory)

    # --- loading ---

    def _column(self, name: str) -> np.ndarray:
        return np.asarray(self._group[name][: self.committed], dtype=object)

    def _cells(self, name: str, rows: list[int], slots: list[int] | None = None) -> list[Any]:
        """One array's values at these rows (and slots), in one read."""
        if not rows:
            return []
        index = (np.asarray(rows),) if slots is None else (np.asarray(rows), np.asarray(slots))
        return np.asarray(self._group[name].vindex[index]).tolist()

    @cached_property
    def page_ids(self) -> np.ndarray:
        return self._column("page_id")

    @cached_property
    def manifest_paths(self) -> np.ndarray:
        return self._column("manifest_path")

    @cached_property
    def panel_mask(self) -> np.ndarray:
        """Valid slots of searchable pages, (committed, max_panels)."""
        return self._group["panel_mask"][: self.committed] & (self._position >= 0)[:, None]

    def _slices(self, step: int) -> Iterator[tuple[int, int]]:
        for start in range(0, self.committed, step):
            yield start, min(start + step, self.committed)

    def _load_pages(self) -> tuple[np.ndarray, np.ndarray]:
        """(searchable rows, their normalised page embeddings); read slice by slice."""
        array = self._group["page_embeddings"]
        matrix = np.empty((self.committed, array.shape[1]), dtype=np.float32)
        keep = np.isin(self.status, SEARCHABLE)
        for start, stop in self._slices(LOAD_ROWS):
            keep[start:stop] &= _normalise_into(array[start:stop], matrix[start:stop])
        rows = np.flatnonzero(keep)
        return rows, (matrix if keep.all() else matrix[rows])

    @cached_property
    def page_texts(self) -> TextIndex:
        """Plain page text (strings joined as the model saw them) and its word index."""
        texts = [""] * self.committed
        array = self._group["page_text"]
        for start, stop in self._slices(LOAD_ROWS):
            raw = array[start:stop]
            for r in np.flatnonzero(self._position[start:stop] >= 0):
                texts[start + r] = _plain_text(raw[r])
        return TextIndex(texts)

    @cached_property
    def panel_texts(self) -> tuple[TextIndex, np.ndarray, np.ndarray]:
        """(index over valid panels' text, their rows, their slots)."""
        texts: list[str] = []
        array = self._group["text_content"]
        rows, slots = np.nonzero(self.panel_mask)
        for start, stop in self._slices(LOAD_ROWS):
            r, s = np.nonzero(self.panel_mask[start:stop])
            raw = array[start:stop]
            texts.extend(_plain_text(raw[i, j]) for i, j in zip(r, s))
        return TextIndex(texts), rows, slots

    def _read_panels(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(normalised vectors, rows, slots) of the valid, non-zero panels of rows [start, stop)."""
        rows, slots = np.nonzero(self.panel_mask[start:stop])
        vectors = self._group["panel_embeddings"][start:stop][rows, slots]
        keep = _normalise_into(vectors, vectors)
        return vectors[keep], rows[keep] + start, slots[keep]

    def panel_bytes(self) -> int:
        """Memory the panel matrix needs: 4*d bytes per valid panel of a searchable page."""
        return int(self.panel_mask.sum()) * self.pages.shape[1] * 4

    def load_panels(self) -> bool:
        """Hold the panel matrix in memory if it fits `panel_memory`; returns whether it does.

        Filled slice by slice into one preallocated matrix: the peak is the matrix plus a slice.
        """
        if self._panels is None and self.panel_bytes() <= self.panel_memory:
            rows, slots = np.nonzero(self.panel_mask)
            matrix = np.empty((len(rows), self.pages.shape[1]), dtype=np.float32)
            keep = np.ones(len(rows), dtype=bool)
            array, at = self._group["panel_embeddings"], 0
            for start, stop in self._slices(LOAD_ROWS):
                valid = self.panel_mask[start:stop]
                count = int(valid.sum())
                keep[at : at + count] = _normalise_into(array[start:stop][valid], matrix[at : at + count])
                at += count
            self._panels = (matrix, rows, slots) if keep.all() else (matrix[keep], rows[keep], slots[keep])
        return self._panels is not None

    @property
    def panel_count(self) -> int | None:
        """Rows of the panel matrix held in memory (None while not loaded, or when streamed)."""
        return None if self._panels is None else len(self._panels[1])

    def _panel_blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The panel matrix in one block, or the store streamed in slices when it does not fit."""
        if self.load_panels():
            yield self._panels
            return
        for start, stop in self._slices(STREAM_ROWS):
            yield self._read_panels(start, stop)

    # --- looking pages up ---

    @cached_property
    def _row_of(self) -> dict[str, int]:
        return {pid: r for r, pid in enumerate(self.page_ids)}

    def searchable(self, row: int) -> bool:
        return bool(self._position[row] >= 0)

    def find_row(self, ref: str) -> int:
        """The row of a page: its id or manifest path, exactly; else, case-insensitively with `\\`
        read as `/`, a unique path-suffix match either way (the id ends the pasted path, or the
        pasted text ends the id); else the same last three path components (as the users' UI did).
        """
        for pid, path in ((ref, None), (None, ref)):
            exact = self._row_of.get(pid) if pid else _first(np.flatnonzero(self.manifest_paths == path))
            if exact is not None:
                return int(exact)
        key = fold_page_ref(ref)
        folded = [fold_page_ref(pid) for pid in self.page_ids]
        tail = _last_parts(key)
        stages = (
            lambda f: f == key or f.endswith("/" + key) or key.endswith("/" + f),
            lambda f: _last_parts(f) == tail,
        )
        for matches_stage in stages:
            matches = [r for r, f in enumerate(folded) if matches_stage(f)]
            if len(matches) == 1:
                return matches[0]
            if matches:
                shown = ", ".join(repr(self.page_ids[r]) for r in matches[:5])
                more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
                raise UsageError(f"page {ref!r} matches {len(matches)} pages: {shown}{more}; give more of its path")
        raise UsageError(f"page {ref!r} is not among the {self.committed} committed pages of {self.path}")

    def require_searchable(self, row: int) -> None:
        if not self.searchable(row):
            raise UsageError(
                f"page {self._cells('page_id', [row])[0]!r} has no embedding (status {int(self.status[row])}: failed)"
            )

    def page_panels(self, row: int) -> np.ndarray:
        """The normalised valid panel vectors of one page, read from the store."""
        return self._read_panels(row, row + 1)[0]

    # --- searches ---

    def like(self, row: int, k: int) -> list[Hit]:
        """Pages by cosine of page embeddings to `row`'s; the page itself first."""
        self.require_searchable(row)
        pos = self._position[row]
        scores = self.pages @ self.pages[pos]
        ranking = scores.copy()
        ranking[pos] = np.inf  # first even if another page has an identical embedding
        return [Hit(int(self.rows[i]), float(scores[i])) for i in top_k(ranking, k)]

    def nearest_pages(self, query: np.ndarray, k: int) -> list[Hit]:
        """Pages by cosine of their page embeddings to a normalised query vector (an image query's)."""
        scores = self.pages @ np.asarray(query, dtype=np.float32)
        return [Hit(int(self.rows[i]), float(scores[i])) for i in top_k(scores, k)]

    def like_panel(self, row: int, slot: int, k: int, per_page: bool) -> list[Hit]:
        """Panels (or pages by their best panel) nearest to one panel (slot) of page `row`."""
        self.require_searchable(row)
        vectors, _, slots = self._read_panels(row, row + 1)
        if slot not in slots:
            raise UsageError(f"page {self._cells('page_id', [row])[0]!r} has no panel {slot}")
        return self.panels(vectors[list(slots).index(slot)], k, per_page)

    def like_panels(self, row: int, k: int, per_page: bool) -> list[Hit]:
        """Panels (or pages by their best panel) nearest to any panel of page `row`."""
        self.require_searchable(row)
        return self.panels(self.page_panels(row), k, per_page)

    def panels(self, queries: np.ndarray, k: int, per_page: bool = True) -> list[Hit]:
        """Panel-level search: a panel scores its best cosine over the (normalised) query rows.

        per_page: pages ranked by their best panel (as the users' search UI did), the hit naming
        that panel; else the best panels themselves. The k*max_panels best panels always hold the
        k best pages, so each block keeps only that many candidates.
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        need = k * int(self.attrs.get("max_panels", config.MAX_PANELS)) if per_page else k
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for matrix, rows, slots in self._panel_blocks():
            scores = matrix @ queries[0] if len(queries) == 1 else (matrix @ queries.T).max(axis=1)
            best = top_k(scores, need)
            found.append((scores[best], rows[best], slots[best]))
        if not found:
            return []
        scores, rows, slots = (np.concatenate(x) for x in zip(*found))
        order = np.lexsort((slots, rows, -scores))
        if per_page:
            _, first = np.unique(rows[order], return_index=True)
            order = order[np.sort(first)]
        return [Hit(int(rows[i]), float(scores[i]), int(slots[i])) for i in order[:k]]

    def keyword(self, word: str, k: int, panels: bool = False) -> list[Hit]:
        """Pages (or panels) by how often `word` occurs in their text, case-insensitive; ties by row."""
        if panels:
            index, rows, slots = self.panel_texts
        else:
            index, rows, slots = self.page_texts, np.arange(self.committed), None
        counts = index.counts(word)
        # one integer key per document: more matches first, then lower row
        n = len(counts)
        best = top_k(np.where(counts > 0, counts * n + (n - 1 - np.arange(n)), -1), k)
        best = best[counts[best] > 0]
        return [Hit(int(rows[i]), float(counts[i]), None if slots is None else int(slots[i])) for i in best]

    # --- describing hits ---

    def texts_of(self, hits: list[Hit]) -> list[str]:
        """The plain text each hit is about: its panel's, else its page's (read for the hits
        alone, unless the page text index is already loaded)."""
        rows = [h.row for h in hits]
        panels = self._cells("text_content", rows, [h.panel or 0 for h in hits])
        if "page_texts" in self.__dict__:
            pages = [self.page_texts.texts[r] for r in rows]
        else:
            pages = [_plain_text(t) for t in self._cells("page_text", rows)]
        return [pages[i] if h.panel is None else _plain_text(panels[i]) for i, h in enumerate(hits)]

    def describe(self, hits: list[Hit], keyword: str | None = None) -> list[dict[str, Any]]:
        """Hits as the CLI prints them (and as its JSON holds them); each column read once."""
        rows = [h.row for h in hits]
        columns = {name: self._cells(name, rows) for name in ("page_id", "series", "page_num", "manifest_path")}
        texts = self.texts_of(hits)
        return [
            {
                "score": round(h.score, 6),
                "page_id": str(columns["page_id"][i]),
                "series": str(columns["series"][i]),
                "page_num": str(columns["page_num"][i]),
                "row": h.row,
                "panel": h.panel,
                "manifest_path": str(columns["manifest_path"][i]),
                "snippet": snippet(texts[i], keyword),
            }
            for i, h in enumerate(hits)
        ]


def snippet(text: str, keyword: str | None = None, width: int = 72) -> str:
    """The text on one line, cut to `width` around the first match of `keyword` if given."""
    text = " ".join(text.split())
    at = text.lower().find(keyword.lower()) if keyword else -1
    start = max(0, at - width // 3) if at > 0 else 0
    piece = text[start : start + width]
    return ("…" if start > 0 else "") + piece + ("…" if start + width < len(text) else "")


def _normalise_into(vectors: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write vectors / their L2 norm into `out`; returns which rows are non-zero (norm > NORM_EPS)."""
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    np.divide(vectors, np.maximum(norms, NORM_EPS)[:, None], out=out)
    return norms > NORM_EPS


def _first(values: np.ndarray) -> int | None:
    return int(values[0]) if len(values) else None


def _last_parts(path: str, count: int = 3) -> tuple[str, ...]:
    return tuple(path.split("/")[-count:])


def _plain_text(raw: Any) -> str:
    """A stored text JSON object -> its strings joined as the model saw them ('' when empty)."""
    if not raw:
        return ""
    try:
        return join_text(json.loads(raw))
    except (ValueError, AttributeError):
        return str(raw)
