"""One store as the web application serves it: its search index, its query encoder, its pages.

Everything here reads, nothing writes: the store is opened read-only and only its committed
prefix is ever looked at (`committed_rows` first, then the arrays, as every reader of the store
does). The search structures are loaded once, at start (pages, text index, panels), so the first
query pays for none of them. While a job runs the store grows: a search that sees more committed
rows than its index holds starts one reload in the background and answers from the current index
meanwhile; the status view reads the committed prefix afresh on every request.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.paths import ImageResolver, PathRefused
from comix_embed.common.model.preprocess import join_text
from comix_embed.common.store.attributes import StoreAttributes
from comix_embed.common.store.jobs import load_jobs
from comix_embed.common.store.reading import read_attrs, read_committed_rows, resolve_store
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_FULL_PAGE, STATUS_NAMES, STATUS_OK
from comix_embed.tools.query_model import QueryEncoder
from comix_embed.tools.search import SearchIndex
from comix_embed.tools.search.layout import generation_in_use
from comix_embed.tools.serve.answers import PAGE_FIELDS, FailedPage, PageDetail, PanelView, StoreStatus, page_detail

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def store_names(paths: list[Path]) -> list[str]:
    """A short, URL-safe, unique name per store: its output folder's name (`fused`, `vision`, ...)."""
    names: list[str] = []
    for path in paths:
        base = path.parent.name if path.name == config.STORE_NAME else path.name.removesuffix(".zarr")
        name = _UNSAFE.sub("-", base).strip("-") or "store"
        candidate, n = name, 1
        while candidate in names:
            n += 1
            candidate = f"{name}-{n}"
        names.append(candidate)
    return names


class ServedStore:
    """A store, its index and its encoder (None: no text or image queries for it)."""

    def __init__(self, name: str, path: Path, encoder: QueryEncoder | None, panel_memory: int, roots: int) -> None:
        self.name = name
        self.path = path
        self.attrs = read_attrs(path)
        self.encoder = encoder
        self.panel_memory = panel_memory
        self.roots = roots
        self._index = self._load_index()
        self._reloading = False
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        name: str,
        zarr_path: str | Path,
        encoder_for: Callable[[Path, dict[str, Any]], QueryEncoder | None],
        panel_memory: int,
        roots: int,
    ) -> ServedStore:
        """Open a store (or an output folder's store); `encoder_for` checks its model."""
        path = resolve_store(zarr_path)
        return cls(name, path, encoder_for(path, read_attrs(path)), panel_memory, roots)

    @property
    def encoder_mode(self) -> str:
        return str(self.attrs.get("encoder_mode", "fused"))

    # --- search structures ---

    def _load_index(self) -> SearchIndex:
        """The index with everything a query needs already built (see the module's docstring)."""
        self._generation_seen = generation_in_use(self.path)  # before loading: a newer one means reload
        index = SearchIndex.load(self.path, self.panel_memory)
        index.load_panels()
        _ = index.keywords  # the keyword index
        if index.committed:
            index.find_row(str(index.page_ids[0]))  # builds the id lookup of `like`
        return index

    def index(self) -> SearchIndex:
        """The current index; a background reload starts when the store has committed more rows,
        or `comix-embed index` has put a new generation of its index in use."""
        if (
            read_committed_rows(self.path) > self._index.committed
            or generation_in_use(self.path) != self._generation_seen
        ):
            with self._lock:
                if not self._reloading:
                    self._reloading = True
                    threading.Thread(target=self._reload, name=f"reload-{self.name}", daemon=True).start()
        return self._index

    def _reload(self) -> None:
        try:
            index = self._load_index()
            self._index = index  # one reference swap: a query holds the index it started with
            log.info("%s: search index reloaded at %d committed rows", self.name, index.committed)
        except Exception:
            log.exception("%s: reloading the search index failed; the previous one stays", self.name)
        finally:
            self._reloading = False

    # --- reading pages ---

    def committed_row(self, row: int) -> int:
        """`row` if it is committed, else UsageError (only the committed prefix is shown)."""
        committed = read_committed_rows(self.path)
        if not 0 <= row < committed:
            raise UsageError(f"row {row} is not among the {committed} committed rows of {self.name}")
        return row

    def page(self, row: int) -> PageDetail:
        """A committed page: its columns, status and valid panels (box, attention, next, text)."""
        row = self.committed_row(row)
        arrays = _Arrays(self.path)
        status = int(arrays.at("status", row))
        boxes = arrays.at("panel_coordinates", row)
        attention = arrays.at("attention_weights", row)
        order = arrays.at("reading_order", row)
        texts = arrays.at("text_content", row)
        slots = np.flatnonzero(arrays.at("panel_mask", row))
        vectors = np.asarray(arrays.at("panel_embeddings", row), dtype=np.float64)[slots]
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        panels = []
        for slot in slots:
            text = _text(texts[slot])
            panels.append(
                PanelView(
                    slot=int(slot),
                    box=[round(float(v), 2) for v in boxes[slot]],
                    attention=round(float(attention[slot]), 6),
                    next=int(order[slot]),
                    text=text,
                    plain=join_text(text),
                )
            )
        return page_detail(
            {name: str(arrays.at(name, row)) for name in PAGE_FIELDS},
            store=self.name,
            row=row,
            status=status,
            status_name=STATUS_NAMES.get(status, "pending"),
            image_root=arrays.image_root(row),
            panels=panels,
            page_text=join_text(_text(arrays.at("page_text", row))),
            panel_similarity=np.round(unit @ unit.T, 4).tolist(),
            dropped_panels=self.dropped_panels(row),
        )

    def dropped_panels(self, row: int) -> int | None:
        """How many of the page's DataSpec panels were not embedded (past the 12 slots, or without a
        usable box), as its job file records; None where none says (docs/store.md, "Job files")."""
        for job in load_jobs(self.path.parent):
            if job.start_row <= row < job.end_row:
                found = job.page(row).dropped_panels
                return found if found >= 0 else None
        return None

    def panel_box(self, row: int, slot: int) -> list[float]:
        """x, y, w, h of one valid panel of a committed page (UsageError for a padded slot)."""
        row = self.committed_row(row)
        arrays = _Arrays(self.path)
        mask = arrays.at("panel_mask", row)
        if not 0 <= slot < len(mask) or not mask[slot]:
            raise UsageError(f"page {row} of {self.name} has no panel {slot}")
        return [float(v) for v in arrays.at("panel_coordinates", row)[slot]]

    def image_of(self, row: int, resolver: ImageResolver) -> tuple[int, str]:
        """The page's image as (root index, path below it), confined to the image roots exactly as
        a worker reads it.

        Where the store does not record the root, the local roots are tried in order (as the
        producer placed relative paths). Raises PathRefused, FileNotFoundError or UsageError.
        """
        row = self.committed_row(row)
        arrays = _Arrays(self.path)
        rel = str(arrays.at("image_path", row))
        if not rel:
            raise FileNotFoundError(
                f"page {row} of {self.name} has no image path (it failed before its image was found)"
            )
        root = arrays.image_root(row)
        if root is not None:
            resolver.location(root, rel)
            return root, rel
        for candidate in range(self.roots):
            try:
                resolver.open_path(candidate, rel)
                return candidate, rel
            except (FileNotFoundError, PathRefused):
                continue
        raise FileNotFoundError(f"image not found under any image root: {rel}")

    # --- status ---

    def status(self, failed_limit: int = 1000) -> StoreStatus:
        """Registered, committed, ok, full-page and failed pages, read from the committed prefix now;
        failed pages listed (up to `failed_limit`) with their reasons."""
        kept = StoreAttributes.of(read_attrs(self.path))
        committed = kept.committed_rows
        arrays = _Arrays(self.path)
        statuses = arrays.at("status", slice(0, committed))
        failed_rows = np.flatnonzero(statuses == STATUS_FAILED)
        shown = failed_rows[:failed_limit]
        ids = arrays.cells("page_id", shown)
        errors = arrays.cells("error", shown)
        index = self._index
        return StoreStatus(
            name=self.name,
            store=str(self.path),
            encoder_mode=self.encoder_mode,
            registered_rows=kept.registered_rows,
            committed_rows=committed,
            ok=int((statuses == STATUS_OK).sum()),
            full_page=int((statuses == STATUS_FULL_PAGE).sum()),
            failed=len(failed_rows),
            searchable_pages=len(index.rows),
            indexed_rows=index.committed,
            failed_pages=[FailedPage(row=int(r), page_id=str(p), error=str(e)) for r, p, e in zip(shown, ids, errors)],
            jobs=kept.job_ids(),
        )


class _Arrays:
    """The store's arrays, opened read-only (for one request: a fresh view of a growing store)."""

    def __init__(self, path: Path) -> None:
        self.group = zarr.open_group(path, mode="r", use_consolidated=False)

    def array(self, name: str) -> zarr.Array:
        found = self.group[name]
        if not isinstance(found, zarr.Array):
            raise UsageError(f"{name} in the store is not an array")
        return found

    def at(self, name: str, index: int | slice) -> np.ndarray:
        return np.asarray(self.array(name)[index])

    def cells(self, name: str, rows: np.ndarray) -> list[Any]:
        """Values at scattered rows, in one read."""
        return np.asarray(self.array(name).vindex[rows]).tolist() if len(rows) else []

    def image_root(self, row: int) -> int | None:
        """The image root of a row; None where the store does not record it (made before it did)."""
        if "image_root" not in self.group:
            return None
        root = int(self.at("image_root", row))
        return root if root >= 0 else None


def _text(raw: Any) -> dict[str, list[str]]:
    """A stored text JSON object by kind (empty kinds where the cell is empty or not JSON)."""
    text: dict[str, list[str]] = {k: [] for k in config.TEXT_KEYS}
    try:
        value = json.loads(str(raw)) if str(raw) else {}
    except ValueError:
        value = {"dialogue": [str(raw)]}
    if isinstance(value, dict):
        for key in config.TEXT_KEYS:
            text[key] = [str(s) for s in value.get(key) or []]
    return text
