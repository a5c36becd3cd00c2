"""The writer's zarr I/O: a batch's arrays as they go to disk, written or cleared by row range.

Contiguous batches are merged into one region (one write per array per region), and the arrays
are written concurrently; a region of an array is written in one call, so that a shard or chunk
it covers whole is written once, whole (never read back first).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from comix_embed.common import store
from comix_embed.common.results import RESULT_ARRAYS, STATUS_FAILED, BatchResult

Region = tuple[int, int, dict[str, np.ndarray]]  # start row, end row, arrays


def prepared(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays as they go to disk: failed pages hold zeros in every float array (spec/store.md)."""
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
    specs = store.row_arrays()
    for _, start, end in ranges:
        for name in RESULT_ARRAYS:
            arr = arrays[name]
            arr[start:end] = np.full((end - start, *arr.shape[1:]), specs[name].fill, dtype=_np_dtype(specs[name]))


def _np_dtype(spec: store.ArraySpec) -> Any:
    return object if spec.dtype == "str" else spec.dtype
