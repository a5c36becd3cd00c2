"""The writer's zarr I/O: a batch's arrays as they go to disk, written, read or cleared by rows.

Contiguous batches are merged into one region (one write per array per region), and the arrays
are written concurrently; a region of an array is written in one call, so that a shard or chunk
it covers whole is written once, whole (never read back first). A retry's scattered rows are
read and written run by run of contiguous rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from comix_embed.common.store.results import BatchResult
from comix_embed.common.store.schema import RESULT_ARRAYS, STATUS_FAILED, row_arrays

Region = tuple[int, int, dict[str, np.ndarray]]  # start row, end row, arrays


def prepared(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays as they go to disk: failed pages hold zeros in every float array (docs/store.md, "Arrays")."""
    failed = np.asarray(arrays["status"]) == STATUS_FAILED
    out = {}
    for name, (_, dtype) in RESULT_ARRAYS.items():
        arr = arrays[name]
        if dtype == "str":
            arr = np.asarray(arr, dtype=object)
        elif dtype == "float32" and failed.any():
            arr = arr.copy()
            arr[failed] = 0.0
        out[name] = arr
    return out


def regions(results: list[BatchResult], data: dict[int, dict[str, np.ndarray]]) -> list[Region]:
    """Merge batches contiguous in rows (results sorted by start) into (start, end, arrays)."""
    groups: list[list[BatchResult]] = []
    for r in results:
        if groups and groups[-1][-1].end == r.start:
            groups[-1].append(r)
        else:
            groups.append([r])
    out = []
    for group in groups:
        if len(group) == 1:
            merged = data[group[0].batch_id]
        else:
            merged = {name: np.concatenate([data[r.batch_id][name] for r in group]) for name in RESULT_ARRAYS}
        out.append((group[0].start, group[-1].end, merged))
    return out


def runs(rows: list[int]) -> list[tuple[int, int, int]]:
    """Sorted rows as (first row, end row, position of the first in `rows`) of contiguous runs."""
    out: list[tuple[int, int, int]] = []
    for i, row in enumerate(rows):
        if out and out[-1][1] == row:
            out[-1] = (out[-1][0], row + 1, out[-1][2])
        else:
            out.append((row, row + 1, i))
    return out


def scattered(rows: list[int], values: dict[str, np.ndarray]) -> list[Region]:
    """Values of sorted, scattered rows (one entry per row) as regions, one per run of rows."""
    return [(s, e, {name: v[i : i + e - s] for name, v in values.items()}) for s, e, i in runs(rows)]


def read_rows(
    arrays: dict[str, zarr.Array], rows: list[int], names: Iterable[str] = RESULT_ARRAYS
) -> dict[str, np.ndarray]:
    """The values of result arrays (all, or `names`) at `rows` (sorted), read run by run."""
    out = {}
    for name in names:
        parts = [np.asarray(arrays[name][s:e]) for s, e, _ in runs(rows)]
        out[name] = np.concatenate(parts) if parts else np.asarray(arrays[name][0:0])
    return out


def write_rows(arrays: dict[str, zarr.Array], parts: list[Region]) -> None:
    """Write every region, arrays concurrently; regions of one array in turn (they may share a chunk)."""

    async def one_array(name: str) -> None:
        arr = arrays[name].async_array
        for start, end, values in parts:
            await arr.setitem(slice(start, end), values[name])

    async def all_arrays() -> None:
        await asyncio.gather(*(one_array(name) for name in RESULT_ARRAYS))

    sync(all_arrays())  # with fsync, every chunk is durable when this returns


def clear_rows(arrays: dict[str, zarr.Array], ranges: list[tuple[int, int, int]]) -> None:
    """Put fill values back in rows that have no manifest (zeros in float arrays, status 0)."""
    specs = row_arrays()
    for _, start, end in ranges:
        for name in RESULT_ARRAYS:
            arr = arrays[name]
            arr[start:end] = np.full((end - start, *arr.shape[1:]), specs[name].fill, dtype=np_dtype(specs[name].dtype))


def np_dtype(dtype: str) -> Any:
    """The numpy dtype of a store dtype name (strings are held as objects)."""
    return object if dtype == "str" else dtype
