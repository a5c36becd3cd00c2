"""One pass over the rows that matter, block by block: the per-row facts the row checks use.

The rows that matter are those a manifest covers, and the committed prefix. They are read in
blocks of whole chunks, so memory stays bounded whatever the size of the store, and each block
is compared with what xarray reads for the same rows while it is in memory.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from comix_embed.common import config
from comix_embed.tools.diagnose.load import Store

FLOAT_ARRAYS = ("page_embeddings", "panel_embeddings", "attention_weights", "panel_coordinates")
SCAN_ARRAYS = (*FLOAT_ARRAYS, "panel_mask", "error")
COMPARED = ("page_embeddings", "status", "page_id")  # zarr and xarray must agree on these exactly
BLOCK_ROWS = 16 * config.CHUNK_ROWS  # rows read at once: whole chunks, bounded memory


@dataclass
class RowFacts:
    """Per-row facts of the scanned rows (those a manifest covers, and the committed prefix)."""

    rows: np.ndarray
    l2: np.ndarray
    nonfinite: dict[str, np.ndarray]  # array name -> rows' flags
    float_nonzero: np.ndarray
    mask_sum: np.ndarray
    mask_leading: np.ndarray
    has_error: np.ndarray
    xarray_diff: dict[str, list[int]]  # variable -> committed rows where zarr and xarray differ

    def at(self, rows: np.ndarray) -> np.ndarray:
        """Positions of `rows` (all scanned) in the facts' arrays."""
        return np.searchsorted(self.rows, rows)


def scan_ranges(wanted: np.ndarray) -> list[tuple[int, int]]:
    """Blocks of at most BLOCK_ROWS rows spanning the wanted rows; (0, 0) when there are none."""
    blocks = []
    for start in range(0, len(wanted), BLOCK_ROWS):
        part = np.flatnonzero(wanted[start : start + BLOCK_ROWS])
        if len(part):
            blocks.append((start + int(part[0]), start + int(part[-1]) + 1))
    return blocks or [(0, 0)]


def scan_rows(s: Store, ds: Any) -> RowFacts | None:
    """Read the scanned rows block by block; None when an array the scan needs is missing."""
    if any(name not in s.arrays for name in SCAN_ARRAYS):
        return None
    wanted = s.covered_rows()
    wanted[: min(s.committed, s.rows)] = True
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    diff: dict[str, list[int]] = defaultdict(list)
    for start, end in scan_ranges(wanted):
        block = {name: s.read(name, start, end) for name in SCAN_ARRAYS}
        keep = wanted[start:end]
        for key, value in block_facts(block).items():
            parts[key].append(value[keep])
        parts["rows"].append(np.arange(start, end)[keep])
        if ds is not None and start < s.committed:
            compare_block(s, ds, block, start, min(end, s.committed), diff)
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return RowFacts(
        rows=cat["rows"],
        l2=cat["l2"],
        nonfinite={n: cat[f"nonfinite:{n}"] for n in FLOAT_ARRAYS},
        float_nonzero=cat["float_nonzero"],
        mask_sum=cat["mask_sum"],
        mask_leading=cat["mask_leading"],
        has_error=cat["has_error"],
        xarray_diff=dict(diff),
    )


def block_facts(block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Vectorised per-row facts of one block of rows."""
    n = len(block["page_embeddings"])
    flat = {name: block[name].reshape(n, int(np.prod(block[name].shape[1:]))) for name in FLOAT_ARRAYS}
    mask = block["panel_mask"].astype(bool)
    counts = mask.sum(axis=1)
    leading = np.arange(mask.shape[1])[None, :] < counts[:, None]
    facts = {
        "l2": np.linalg.norm(block["page_embeddings"].astype(np.float64), axis=1),
        "float_nonzero": np.any([(f != 0).any(axis=1) for f in flat.values()], axis=0),
        "mask_sum": counts,
        "mask_leading": (mask == leading).all(axis=1),
        "has_error": np.array([bool(str(e).strip()) for e in block["error"]], dtype=bool),
    }
    facts.update({f"nonfinite:{name}": ~np.isfinite(f).all(axis=1) for name, f in flat.items()})
    return facts


def compare_block(
    s: Store, ds: Any, block: dict[str, np.ndarray], start: int, end: int, diff: dict[str, list[int]]
) -> None:
    """Rows [start, end) (committed) as xarray reads them against zarr's, bit for bit."""
    n = end - start
    ours = {
        "page_embeddings": block["page_embeddings"][:n],
        "status": s.status[start:end].astype(np.int8),
        "page_id": s.page_ids[start:end],
    }
    for name in COMPARED:
        theirs = ds[name].isel(page_id=slice(start, end)).values
        differs = rows_differ(ours[name], theirs)
        diff[name].extend((start + np.flatnonzero(differs)).tolist())


def rows_differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: any element different (floats by their bits, so NaN equals the same NaN)."""
    if a.shape != b.shape or dtype_label(a.dtype) != dtype_label(b.dtype):
        return np.ones(len(a), dtype=bool)
    if a.dtype.kind == "f":
        unsigned = np.dtype(f"u{a.itemsize}")
        a, b = np.ascontiguousarray(a).view(unsigned), np.ascontiguousarray(b).view(unsigned)
    elif a.dtype.kind in "OTU":
        a, b = a.astype(object), b.astype(object)
    return (a != b).reshape(len(a), int(np.prod(a.shape[1:]))).any(axis=1)


def dtype_label(dtype: Any) -> str:
    """The schema's dtype name: strings of any numpy flavour are "str"."""
    dtype = np.dtype(dtype)
    return "str" if dtype.kind in "OTU" else str(dtype)
