"""A v2 store read row block by row block, each of its chunks decompressed once, and its page columns as Python strings.

The v2 generator chunked every data variable in 1000-row chunks (Blosc zstd); reading whole chunks
in order, a few at a time, keeps memory bounded (a block of 8000 rows of panel embeddings is
about 75 MB at d = 384 in blocks of 4000) whatever the store's size. Opened read-only: nothing is ever written
inside a v2 store.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from comix_embed.common.errors import UsageError
from comix_embed.common.store.v2 import GENERATOR, is_v2_store

# Arrays of a v2 store that the conversion reads, with page_id as their first dimension.
DATA_ARRAYS = (
    "page_embeddings",
    "panel_embeddings",
    "panel_mask",
    "attention_weights",
    "reading_order",
    "panel_coordinates",
    "text_content",
)
# Its string coordinates along page_id.
COLUMNS = ("page_id", "manifest_path", "source", "series", "volume", "issue", "page_num")


class V2Reader:
    """One v2 store, open read-only."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not is_v2_store(self.path):
            raise UsageError(f"{self.path} is not a store made by {GENERATOR}")
        self.group = zarr.open_group(self.path, mode="r")
        self.attrs: dict[str, Any] = dict(self.group.attrs)
        missing = [name for name in (*DATA_ARRAYS, *COLUMNS) if name not in self.group]
        if missing:
            raise UsageError(f"{self.path}: a {GENERATOR} store lacks {', '.join(missing)}")
        page = self.array("page_embeddings")
        self.rows, self.d = int(page.shape[0]), int(page.shape[1])
        self.max_panels = int(self.array("panel_mask").shape[1])
        self.chunk_rows = int(page.chunks[0])
        for name in DATA_ARRAYS:
            if self.array(name).shape[0] != self.rows:
                raise UsageError(
                    f"{self.path}: {name} has {self.array(name).shape[0]} rows, page_embeddings {self.rows}"
                )

    def array(self, name: str) -> zarr.Array:
        found = self.group[name]
        if not isinstance(found, zarr.Array):
            raise UsageError(f"{self.path}: {name} is a group, not an array")
        return found

    def width(self, name: str) -> int:
        """The fixed width, in characters, of a string column (what the generator cut values to)."""
        dtype = np.dtype(self.array(name).dtype)
        return dtype.itemsize // 4 if dtype.kind == "U" else 0

    def column(self, name: str, repeats: bool = False) -> list[str]:
        """A string coordinate as Python strings, read chunk by chunk (a fixed-width copy of a
        million paths would take gigabytes); with `repeats`, one object per distinct value (series
        and volumes repeat for whole books)."""
        arr = self.array(name)
        step = max(int(arr.chunks[0]), 65536)
        out: list[str] = []
        shared: dict[str, str] = {}
        for start in range(0, self.rows, step):
            values = map(str, np.asarray(arr[start : start + step]).tolist())
            out.extend(shared.setdefault(v, v) for v in values) if repeats else out.extend(values)
        return out

    def panel_counts(self) -> np.ndarray:
        """Each row's valid panel slots (its mask's sum): the panel count a job page records."""
        mask = self.array("panel_mask")
        step = self.chunk_rows * 64
        return np.concatenate(
            [np.asarray(mask[s : s + step]).astype(bool).sum(axis=1) for s in range(0, self.rows, step)]
            or [np.zeros(0, dtype=np.int64)]
        )

    def blocks(self, start: int, rows: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(first row, the data arrays of rows [first, first + k)) from the chunk holding `start` on,
        `rows` rows at a time rounded to whole chunks."""
        step = max(1, rows // self.chunk_rows) * self.chunk_rows
        first = start // self.chunk_rows * self.chunk_rows
        for block in range(first, self.rows, step):
            end = min(block + step, self.rows)
            yield block, {name: np.asarray(self.array(name)[block:end]) for name in DATA_ARRAYS}

    def fingerprint(self) -> str:
        """Changes when the store does: its metadata, and each array's chunk files (count, sizes,
        times). A store the generator is still writing is not the store an import began with."""
        digest = hashlib.sha256()
        for meta in (".zmetadata", ".zgroup", ".zattrs"):
            if (self.path / meta).is_file():
                digest.update((self.path / meta).read_bytes())
        for name in sorted((*DATA_ARRAYS, *COLUMNS)):
            stats = []
            for entry in os.scandir(self.path / name):
                if not entry.name.startswith("."):
                    st = entry.stat()
                    stats.append((entry.name, st.st_size, st.st_mtime_ns))
            digest.update(json.dumps([name, sorted(stats)]).encode())
        return digest.hexdigest()
