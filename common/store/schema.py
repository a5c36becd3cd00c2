"""The store's schema: its arrays along page_id, their dtypes and fills, statuses, and how each is cut into files.

docs/store.md describes the same layout for users; this module is what the writer creates and
every reader and check compares against.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comix_embed.common import config
from comix_embed.common.store.jobs import JobPage

# Arrays a batch result carries: name -> (dims after page_id, numpy dtype or "str").
# "d" is the embedding width, "P" max_panels. Metadata columns (page_id, source, ...) are written
# when the job is registered, not per batch.
RESULT_ARRAYS: dict[str, tuple[tuple[str, ...], str]] = {
    "page_embeddings": (("d",), "float32"),
    "panel_embeddings": (("P", "d"), "float32"),
    "panel_mask": (("P",), "bool"),
    "attention_weights": (("P",), "float32"),
    "reading_order": (("P",), "int16"),
    "panel_coordinates": (("P", "4"), "float32"),
    "text_content": (("P",), "str"),
    "page_text": ((), "str"),
    "image_path": ((), "str"),
    # which image root (index in the `--image-root` order) `image_path` is relative to
    "image_root": ((), "int16"),
    "status": ((), "int8"),
    "error": ((), "str"),
}


# A row's `status`: not committed yet, embedded, failed (with its `error`), embedded with the whole
# page as its one panel (a page without panels).
STATUS_PENDING = 0
STATUS_OK = 1
STATUS_FAILED = 2
STATUS_FULL_PAGE = 3
# How manifests, the audit log and the tools name the committed statuses.
STATUS_NAMES = {STATUS_OK: "ok", STATUS_FAILED: "failed", STATUS_FULL_PAGE: "full_page"}


# String columns written when a job is registered (everything else arrives with the batches): the
# fields of a job's page, but for the panel count the producer saw.
PAGE_COLUMNS = tuple(f.name for f in dataclasses.fields(JobPage) if f.name not in ("panel_count", "dropped_panels"))
# Non-dimension coordinates of the store (the root attribute `coordinates`, which xarray reads): the
# page columns but page_id, as the users' readers use them, and every string result array. Strings
# read back as numpy's StringDType, which `Dataset.where(cond, drop=True)` cannot fill with NaN, as it
# fills data variables; coordinates it only selects, so the users' `where` filters work.
STORE_COORDINATES = (*PAGE_COLUMNS[1:], *(name for name, (_, dtype) in RESULT_ARRAYS.items() if dtype == "str"))
_DIM_NAMES = {"d": "embedding_dim", "P": "panel_id", "4": "coord_dim"}
_FILLS = {"float32": 0.0, "bool": False, "int16": -1, "int8": 0, "str": ""}


@dataclass(frozen=True)
class ArraySpec:
    """One array along page_id: its other dimensions and its dtype ("str" for vlen-utf8)."""

    name: str
    dims: tuple[str, ...]
    dtype: str

    @property
    def fill(self) -> Any:
        return _FILLS[self.dtype]

    def shape(self, rows: int, d: int, p: int) -> tuple[int, ...]:
        sizes = {"embedding_dim": d, "panel_id": p, "coord_dim": 4}
        return (rows, *(sizes[dim] for dim in self.dims))


def row_arrays() -> dict[str, ArraySpec]:
    """Every array that has page_id as its first dimension, result arrays first."""
    specs = {
        name: ArraySpec(name, tuple(_DIM_NAMES[d] for d in dims), dtype)
        for name, (dims, dtype) in RESULT_ARRAYS.items()
    }
    for name in PAGE_COLUMNS:
        specs[name] = ArraySpec(name, (), "str")
    return specs


def store_path(output_dir: str | os.PathLike[str]) -> Path:
    return Path(output_dir) / config.STORE_NAME


def array_layout(spec: ArraySpec) -> dict[str, Any]:
    """How an array is cut into files (`chunks`, `shards`, `compressors` for `create_array`).

    Embeddings: 64-row chunks in 1024-row shards, so that a million pages make about a thousand
    files per array, never compressed. A reader gets a shard in two reads (its index, then its
    chunks), and the writer may replace the shard file in between: uncompressed chunks keep their
    size and place, so the committed rows read the same from either version, whereas a compressed
    chunk that changed length cannot be decoded (the crash test's reader saw exactly that with
    zstd). The other result arrays: 1024-row chunks, read whole. The page columns, written once
    when a job is registered: 16384-row chunks.
    """
    if spec.name in ("page_embeddings", "panel_embeddings"):
        return {"chunks": (config.CHUNK_ROWS,), "shards": (config.SHARD_ROWS,), "compressors": None}
    rows = config.PAGE_COLUMN_ROWS if spec.name in PAGE_COLUMNS else config.SHARD_ROWS
    return {"chunks": (rows,), "shards": None, "compressors": None if spec.dtype == "float32" else "auto"}
