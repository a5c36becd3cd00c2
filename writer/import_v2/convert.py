"""A block of a v2 store's rows turned into our result arrays: statuses, errors, text as JSON, order as slots.

What each v2 field becomes (docs/store.md, "Stores made by generate_embeddings_zarr_v2"):
- a row whose page embedding is NaN (a page without panels) or all zeros (never written) is
  failed, with the reason, and holds zeros, as our failed rows do;
- panel slots past the mask are zeroed (the generator wrote all twelve);
- `reading_order`'s float argmax becomes the int16 slot, -1 where it names no valid slot;
- `text_content`'s Python repr of each panel's text dict becomes our JSON; a repr the generator cut
  at 512 characters is closed where it can be, and marked `"cut_at": 512` either way;
- `page_text` is made from the panels' texts (the panels past the twelfth were never stored).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from comix_embed.common import config
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_OK

TEXT_WIDTH = 512  # the generator's text_content width: longer reprs were cut to it
NAN_PAGE = (
    "the v2 store holds NaN for this page's embedding (generate_embeddings_zarr_v2 wrote NaN for a page "
    "without panels): embed it again with `run --retry-failed`"
)
UNWRITTEN = (
    "the v2 store holds zeros for this page: generate_embeddings_zarr_v2 never wrote it; "
    "embed it with `run --retry-failed`"
)
# Closings tried, in order, on a repr cut inside a string, a list or between entries.
_CLOSINGS = ("']}", '"]}', "]}", "}", "']]}")


@dataclass
class Counts:
    """What the conversion found, summed over blocks (recorded in the import's `V2Import`)."""

    nan_pages: int = 0
    unwritten: int = 0
    cut_texts: int = 0

    def add(self, other: Counts) -> None:
        self.nan_pages += other.nan_pages
        self.unwritten += other.unwritten
        self.cut_texts += other.cut_texts


@dataclass
class Converted:
    """Our result arrays for a block of rows (docs/store.md, "Arrays"), and what was found in it."""

    arrays: dict[str, np.ndarray]
    counts: Counts = field(default_factory=Counts)


def convert_block(raw: dict[str, np.ndarray], failed_reasons: dict[int, str] | None = None) -> Converted:
    """Convert rows of a v2 store (its arrays as read, one entry per row) into our result arrays.

    `failed_reasons` (position in the block -> reason) fails rows for a reason found elsewhere
    (a cut manifest_path): their values are not trusted.
    """
    page = np.asarray(raw["page_embeddings"], dtype=np.float32)
    n, p = page.shape[0], int(np.asarray(raw["panel_mask"]).shape[1])
    counts = Counts()
    nan = np.isnan(page).any(axis=1)
    unwritten = ~nan & (np.linalg.norm(np.nan_to_num(page), axis=1) <= 1e-6)
    counts.nan_pages, counts.unwritten = int(nan.sum()), int(unwritten.sum())
    status = np.full(n, STATUS_OK, dtype=np.int8)
    error = np.full(n, "", dtype=object)
    status[nan | unwritten] = STATUS_FAILED
    error[nan] = NAN_PAGE
    error[unwritten] = UNWRITTEN
    for i, reason in (failed_reasons or {}).items():
        status[i], error[i] = STATUS_FAILED, reason
    ok = status != STATUS_FAILED

    mask = np.asarray(raw["panel_mask"]).astype(bool) & ok[:, None]
    slots = mask[:, :, None]
    arrays: dict[str, np.ndarray] = {
        "page_embeddings": np.where(ok[:, None], np.nan_to_num(page), 0.0).astype(np.float32),
        "panel_embeddings": _zeroed(raw["panel_embeddings"], slots),
        "panel_mask": mask,
        "attention_weights": _zeroed(raw["attention_weights"], mask),
        "reading_order": _slots(np.asarray(raw["reading_order"], dtype=np.float32), mask),
        "panel_coordinates": _zeroed(raw["panel_coordinates"], slots),
        "status": status,
        "error": error,
        "image_path": np.full(n, "", dtype=object),
        "image_root": np.full(n, -1, dtype=np.int16),
    }
    text = np.full((n, p), "", dtype=object)
    page_text = np.full(n, "", dtype=object)
    cells = np.asarray(raw["text_content"])
    for i in np.flatnonzero(ok).tolist():
        panels = []
        for j in np.flatnonzero(mask[i]).tolist():
            parsed, cut = text_json(str(cells[i, j]))
            counts.cut_texts += cut
            panels.append(parsed)
            text[i, j] = json.dumps(parsed, ensure_ascii=False)
        page_text[i] = json.dumps(_page_text(panels), ensure_ascii=False)
    arrays["text_content"], arrays["page_text"] = text, page_text
    return Converted(arrays, counts)


def text_json(raw: str) -> tuple[dict[str, Any], bool]:
    """A panel's text as our JSON object, from the generator's repr of its text dict; and whether
    the generator had cut the repr (then the object has `"cut_at": 512`, and as much as could be
    read back)."""
    if not raw:
        return _text({}), False
    value = _literal(raw)
    if value is not None:
        return _text(value), False
    cut = len(raw) >= TEXT_WIDTH
    for candidate in _closed(raw):
        value = _literal(candidate)
        if value is not None:
            break
    out = _text(value or {})
    if cut:
        out["cut_at"] = TEXT_WIDTH
    if value is None:
        out["v2_text"] = raw  # neither whole nor closable: kept as stored, not lost
    return out, cut


def _literal(raw: str) -> dict[str, Any] | None:
    try:
        value = ast.literal_eval(raw)  # literals only: never runs code
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _closed(raw: str) -> list[str]:
    """The cut repr closed in the ways a cut can be closed; the entry cut part-way dropped last."""
    out = [raw + c for c in _CLOSINGS]
    comma = raw.rfind(", ")
    if comma > 0:
        out += [raw[:comma] + c for c in ("]}", "}")]
    return out


def _text(value: dict[str, Any]) -> dict[str, Any]:
    """Our text object: every kind our texts have, each a list of strings, then any other kind as given."""
    out: dict[str, Any] = {k: [] for k in config.TEXT_KEYS}
    for key, items in value.items():
        if isinstance(items, (list, tuple)):
            out[str(key)] = [str(s) for s in items]
        elif items is not None and items != "":
            out[str(key)] = [str(items)]
    return out


def _page_text(panels: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: [] for k in config.TEXT_KEYS}
    for panel in panels:
        for key, items in panel.items():
            if key == "cut_at":
                out["cut_at"] = items
            elif isinstance(items, list):
                out.setdefault(key, []).extend(items)
    return out


def _zeroed(values: Any, keep: np.ndarray) -> np.ndarray:
    return np.where(keep, np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0).astype(np.float32)


def _slots(order: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The float argmax as an int16 slot; -1 in padded slots and where it names no valid slot."""
    p = mask.shape[1]
    finite = np.isfinite(order)
    index = np.where(finite, np.rint(np.where(finite, order, -1)), -1).astype(np.int64)
    inside = (index >= 0) & (index < p)
    names_valid = inside & np.take_along_axis(mask, np.clip(index, 0, p - 1), axis=1)
    return np.where(mask & names_valid, index, -1).astype(np.int16)
