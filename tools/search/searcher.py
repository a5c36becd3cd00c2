"""A store's search: its approximate index where one covers its rows, exact search for the rest.

`SearchIndex.load` opens a snapshot of the committed rows (`committed_rows` read once). If the
store has an index (`comix-embed index`, see build.py) of this same store, the rows it covers are
searched through it, and the rows it does not (committed after it was built, or whose status
changed since: pages `--retry-failed` embedded) are searched exactly and merged in, so results are
never stale. Without an index, every row is searched exactly (exact.py). Candidates of both parts
are ranked together (ranking.py): a score is a cosine either way.

Every search takes an optional `allowed` row mask (`allowed(filter)`, filters.py): each part then
ranks within it, so a filtered search is a top-k of the filtered pages.
"""

from __future__ import annotations

import logging
import os
from functools import cached_property, lru_cache
from pathlib import Path

import faiss
import numpy as np

from comix_embed.common.errors import UsageError
from comix_embed.common.store.schema import STATUS_FAILED
from comix_embed.tools.search.ann import AnnPart
from comix_embed.tools.search.answers import HitRecord
from comix_embed.tools.search.exact import DEFAULT_PANEL_MEMORY, ExactPart
from comix_embed.tools.search.filters import COLUMNS, CONTAINS, ColumnCodes, PageFilter
from comix_embed.tools.search.layout import (
    SEGMENTS,
    Segment,
    current_generation,
    index_dir,
    read_meta,
    store_identity,
)
from comix_embed.tools.search.lookup import PageLookup
from comix_embed.tools.search.ranking import Candidates, Hit
from comix_embed.tools.search.rows import LOAD_ROWS, SEARCHABLE, StoreRows
from comix_embed.tools.search.text import Postings, TextIndex, count_matches, plain_text, snippet

log = logging.getLogger("comix.search")
# Row masks of recent filters kept per snapshot (a person pages through one filter's results).
MASKS_KEPT = 16


class SearchIndex:
    """A store's committed rows, searched through its index and exactly (module docstring).

    The exact part's page vectors are read at open; the text index, the ids and the exact part's
    panels on first use, so a one-shot `--like` does not pay for the keyword index.
    """

    def __init__(self, path: Path, panel_memory: int = DEFAULT_PANEL_MEMORY, use_index: bool = True) -> None:
        self.store = StoreRows(path)
        self.path = self.store.path
        self.attrs = self.store.attrs
        self.committed = self.store.committed
        self.status = self.store.status
        self.generation: int | None = None
        self.covered = 0
        self.changed = np.empty(0, np.int64)
        self.ann: dict[str, AnnPart] = {}
        self._text_segments: list[Segment] = []
        self._columns: dict[str, ColumnCodes] = {}
        # lru_cache, not a dict of our own: serve's threads share this index, and it locks for them
        self._masks = lru_cache(maxsize=MASKS_KEPT)(self._mask)
        if use_index:
            self._open_index()
        delta = np.union1d(self.changed, np.arange(self.covered, self.committed)).astype(np.int64)
        self.exact = ExactPart(self.store, delta, panel_memory)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], panel_memory: int = DEFAULT_PANEL_MEMORY, use_index: bool = True
    ) -> SearchIndex:
        """Open a store (or an output folder's store); `panel_memory` bounds the exact panel matrix;
        `use_index=False` searches every row exactly even where an index exists."""
        return cls(Path(path), panel_memory, use_index)

    def _open_index(self) -> None:
        folder = index_dir(self.path)
        try:
            generation = current_generation(folder)
            meta = read_meta(generation) if generation is not None else None
        except UsageError as exc:
            log.warning("the index beside the store is unusable (%s): searching exactly", exc)
            return
        if generation is None or meta is None:
            return
        if meta.store != store_identity(self.attrs):
            log.warning("%s is the index of another store (or model): searching exactly; build it again", folder)
            return
        faiss.omp_set_num_threads(1)  # queries: one thread each (shared 2-core machines, serve's threads)
        try:
            covered = min(meta.rows, self.committed)
            indexed_status = np.load(generation / "status.npy")[:covered]
            ann = {
                kind: AnnPart(folder, generation, kind, part, self.store.dim)
                for kind, part in (("pages", meta.parts.pages), ("panels", meta.parts.panels))
            }
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # faiss raises RuntimeError for a bad file
            log.warning("%s cannot be read (%s): searching exactly; build the index again", generation, exc)
            return
        self.generation = meta.generation
        self.covered = covered
        self.changed = np.flatnonzero(self.status[:covered] != indexed_status).astype(np.int64)
        self._text_segments = meta.parts.text.segments
        self.ann = ann

    # --- what the store holds ---

    @cached_property
    def rows(self) -> np.ndarray:
        """Searchable rows (pages of the snapshot that can rank), sorted."""
        parts = [self.exact.page_rows]
        if "pages" in self.ann:
            indexed = self.ann["pages"].rows
            indexed = indexed[(indexed >= 0) & (indexed < self.covered)]
            parts.append(np.setdiff1d(indexed, self.changed))
        return np.unique(np.concatenate(parts))

    @cached_property
    def page_ids(self) -> np.ndarray:
        return np.asarray(self.store.array("page_id")[: self.committed], dtype=object)

    @cached_property
    def manifest_paths(self) -> np.ndarray:
        return np.asarray(self.store.array("manifest_path")[: self.committed], dtype=object)

    @cached_property
    def _lookup(self) -> PageLookup:
        return PageLookup(self.page_ids, self.manifest_paths, self.path)

    def find_row(self, ref: str) -> int:
        """The row of a page reference (lookup.py says what matches)."""
        return self._lookup.find_row(ref)

    def id_matches(
        self, fragment: str, k: int, offset: int = 0, allowed: np.ndarray | None = None
    ) -> tuple[list[Hit], int]:
        """Pages whose id holds `fragment`, `k` of them from `offset` on, in row order, and how many
        match in all (every committed page, failed ones too: a page id is known before it is embedded)."""
        rows = self._lookup.containing(fragment)
        if allowed is not None:
            rows = rows[allowed[rows]]
        return [Hit(int(r), 1.0) for r in rows[offset : offset + k]], len(rows)

    def load_panels(self) -> bool:
        """Hold the exact part's panels in memory if they fit; returns whether they do."""
        return self.exact.load_panels()

    @property
    def panel_count(self) -> int | None:
        """Valid panels searchable (None while the exact part's are not loaded, or streamed)."""
        if self.exact.panel_count is None:
            return None
        return self.exact.panel_count + (self.ann["panels"].live if "panels" in self.ann else 0)

    def page_vector(self, row: int) -> np.ndarray | None:
        """The unit page vector of a committed row (None: failed, or a zero vector)."""
        if not 0 <= row < self.committed or int(self.status[row]) not in SEARCHABLE:
            return None
        found = list(self.store.page_vectors(np.array([row])))
        return found[0][1][0] if found and len(found[0][0]) else None

    def page_panels(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(slots, unit vectors) of one page's valid panels, read from the store."""
        found = list(self.store.panel_vectors(np.array([row])))
        if not found:
            return np.empty(0, np.int64), np.empty((0, self.store.dim), np.float32)
        return found[0][1], found[0][2]

    def require_searchable(self, row: int) -> np.ndarray:
        """The page's unit vector; UsageError if it has none."""
        vector = self.page_vector(row)
        if vector is None:
            raise UsageError(
                f"page {self.store.cells('page_id', [row])[0]!r} has no embedding (status {int(self.status[row])}: failed)"
            )
        return vector

    # --- filters ---

    def column_codes(self, name: str) -> ColumnCodes:
        """A page column of the snapshot as codes (read on the first filter on it, then kept)."""
        if name not in self._columns:
            self._columns[name] = ColumnCodes(np.asarray(self.store.array(name)[: self.committed]))
        return self._columns[name]

    def allowed(self, where: PageFilter | None) -> np.ndarray | None:
        """The row mask of a filter over the snapshot's committed rows (None: no filter)."""
        if where is None or not where.active:
            return None
        return self._masks(where)

    def _mask(self, where: PageFilter) -> np.ndarray:
        mask = np.ones(self.committed, dtype=bool)
        for name in COLUMNS:
            wanted = getattr(where, name)
            if wanted:
                mask &= self.column_codes(name).rows_where(wanted, contains=name in CONTAINS)
        if where.status:
            status = self.status[: self.committed]
            mask &= np.isin(status, SEARCHABLE) if where.status == "ok" else status == STATUS_FAILED
        if where.id_contains:
            holding = np.zeros(self.committed, dtype=bool)
            holding[self._lookup.containing(where.id_contains)] = True
            mask &= holding
        if where.text_contains and mask.any():
            mask &= self.text_counts(where.text_contains) > 0
        return mask

    # --- searches ---

    def _candidates(self, kind: str, queries: np.ndarray, need: int, allowed: np.ndarray | None = None) -> Candidates:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        found = [
            self.exact.search_pages(queries[0], need, allowed)
            if kind == "pages"
            else self.exact.search_panels(queries, need, allowed)
        ]
        if kind in self.ann:
            got = self.ann[kind].search(queries, need, self.changed, allowed)
            keep = got.rows < self.covered  # an index built after this snapshot covers rows it does not
            found.append(Candidates(got.scores[keep], got.rows[keep], got.slots[keep]))
        return Candidates.concat(found).best(need)

    def like(self, row: int, k: int, allowed: np.ndarray | None = None) -> list[Hit]:
        """Pages by cosine of page embeddings to `row`'s; the page itself first (if `allowed`)."""
        vector = self.require_searchable(row)
        found = self._candidates("pages", vector, k + 1, allowed)
        others = [h for h in found.hits(k + 1, per_page=False, panels=False) if h.row != row]
        itself = [Hit(row, float(vector @ vector))] if allowed is None or allowed[row] else []
        return [*itself, *others][:k]

    def nearest_pages(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[Hit]:
        """Pages by cosine of their page embeddings to a unit query vector (an image query's)."""
        return self._candidates("pages", query, k, allowed).hits(k, per_page=False, panels=False)

    def like_panel(self, row: int, slot: int, k: int, per_page: bool, allowed: np.ndarray | None = None) -> list[Hit]:
        """Panels (or pages by their best panel) nearest to one panel (slot) of page `row`."""
        self.require_searchable(row)
        slots, vectors = self.page_panels(row)
        if slot not in slots:
            raise UsageError(f"page {self.store.cells('page_id', [row])[0]!r} has no panel {slot}")
        return self.panels(vectors[list(slots).index(slot)], k, per_page, allowed)

    def like_panels(self, row: int, k: int, per_page: bool, allowed: np.ndarray | None = None) -> list[Hit]:
        """Panels (or pages by their best panel) nearest to any panel of page `row`."""
        self.require_searchable(row)
        return self.panels(self.page_panels(row)[1], k, per_page, allowed)

    def panels(
        self, queries: np.ndarray, k: int, per_page: bool = True, allowed: np.ndarray | None = None
    ) -> list[Hit]:
        """Panel-level search: a panel scores its best cosine over the (unit) query rows.

        per_page: pages ranked by their best panel (as the users' search UI did), the hit naming
        that panel; else the best panels themselves. The k*max_panels best panels always hold the
        k best pages, so that many candidates are asked of each part.
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if not len(queries):
            return []
        need = k * self.store.max_panels if per_page else k
        return self._candidates("panels", queries, need, allowed).hits(k, per_page=per_page, panels=True)

    # --- keywords ---

    @cached_property
    def keywords(self) -> list[Postings]:
        """The word indexes of the searchable pages' text: the index's segments (memory-mapped)
        and one over the rows they do not cover (every row, without an index), in memory."""
        found = []
        if self.generation is not None:
            folder = index_dir(self.path)
            for segment in self._text_segments:
                found.append(Postings.load(folder / SEGMENTS / segment.file, self.committed))
        rows = self.exact.page_rows
        lower = [t.lower() for t in self.page_text(rows)]
        found.append(Postings.of_texts(lower, rows, self.committed))
        return found

    def page_text(self, rows: np.ndarray) -> list[str]:
        """Plain page text (strings joined as the model saw them) of sorted rows, read in batches."""
        return [
            plain_text(raw)
            for batch in self.store.batches(rows, LOAD_ROWS)
            for raw in self.store.read("page_text", batch)
        ]

    @cached_property
    def panel_texts(self) -> tuple[TextIndex, np.ndarray, np.ndarray]:
        """(index over the valid panels' text of searchable pages, their rows, their slots)."""
        texts: list[str] = []
        rows_found, slots_found = [], []
        for batch in self.store.batches(self.rows, LOAD_ROWS):
            at, slots = np.nonzero(self.store.read("panel_mask", batch))
            raw = self.store.read("text_content", batch)
            texts.extend(plain_text(raw[i, j]) for i, j in zip(at, slots))
            rows_found.append(batch[at])
            slots_found.append(slots)
        rows = np.concatenate(rows_found) if rows_found else np.empty(0, np.int64)
        slots = np.concatenate(slots_found) if slots_found else np.empty(0, np.int64)
        return TextIndex(texts), rows, slots

    def text_counts(self, phrase: str) -> np.ndarray:
        """Occurrences of `phrase` in each committed row's page text (case-insensitive)."""
        return count_matches(phrase, self.keywords, lambda docs: [t.lower() for t in self.page_text(docs)])

    def keyword(self, word: str, k: int, panels: bool = False, allowed: np.ndarray | None = None) -> list[Hit]:
        """Pages (or panels) by how often `word` occurs in their text, case-insensitive; ties by row."""
        if panels:
            index, rows, slots = self.panel_texts
            counts = index.counts(word)
        else:
            rows, slots = np.arange(self.committed), None
            counts = self.text_counts(word)
        if allowed is not None:
            counts = np.where(allowed[rows], counts, 0)
        found = np.flatnonzero(counts)
        candidates = Candidates(
            counts[found].astype(np.float32),
            rows[found],
            slots[found] if slots is not None else np.full(len(found), -1),
        )
        return candidates.hits(k, per_page=False, panels=panels)

    # --- describing hits ---

    def texts_of(self, hits: list[Hit]) -> list[str]:
        """The plain text each hit is about: its panel's, else its page's (read for the hits alone)."""
        rows = [h.row for h in hits]
        panels = self.store.cells("text_content", rows, [h.panel or 0 for h in hits])
        pages = [plain_text(t) for t in self.store.cells("page_text", rows)]
        return [pages[i] if h.panel is None else plain_text(panels[i]) for i, h in enumerate(hits)]

    def describe(self, hits: list[Hit], keyword: str | None = None, first_rank: int = 1) -> list[HitRecord]:
        """Hits ranked as the CLI prints them (and as its JSON holds them) from `first_rank`; each
        column read once. With a `keyword`, scores are counts and snippets are cut around its first
        occurrence."""
        rows = [h.row for h in hits]
        columns = {name: self.store.cells(name, rows) for name in ("page_id", "series", "page_num", "manifest_path")}
        texts = self.texts_of(hits)
        return [
            HitRecord(
                rank=first_rank + i,
                score=int(h.score) if keyword is not None else round(h.score, 6),
                page_id=str(columns["page_id"][i]),
                series=str(columns["series"][i]),
                page_num=str(columns["page_num"][i]),
                row=h.row,
                panel=h.panel,
                manifest_path=str(columns["manifest_path"][i]),
                snippet=snippet(texts[i], keyword),
            )
            for i, h in enumerate(hits)
        ]
