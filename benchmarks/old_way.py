"""The users' old write pattern, kept only as a yardstick for the benchmarks.

Their script wrote each page separately into arrays chunked 1000 pages deep and compressed with
Blosc-zstd (level 6, bit shuffle): for every array, first zero the page's row, then write it
(research/performance-anchors.md §4.2). Each write re-encodes the whole 1000-row chunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from common import config
from common.results import RESULT_ARRAYS

CHUNK_PAGES = 1000


class OldPatternStore:
    """Arrays of RESULT_ARRAYS with 1000-row compressed chunks, written one page at a time."""

    def __init__(self, path: Path, d: int, rows: int = CHUNK_PAGES) -> None:
        group = zarr.open_group(path, mode="w", zarr_format=3)
        blosc = BloscCodec(cname="zstd", clevel=6, shuffle="bitshuffle")
        dims = {"d": d, "P": config.MAX_PANELS, "4": 4}
        self.arrays = {}
        for name, (shape_dims, dtype) in RESULT_ARRAYS.items():
            shape = (rows, *(dims[x] for x in shape_dims))
            self.arrays[name] = group.create_array(
                name, shape=shape, chunks=(CHUNK_PAGES, *shape[1:]), dtype=str if dtype == "str" else dtype,
                compressors=None if dtype == "str" else blosc,
            )

    def fill(self, rows: int, arrays: dict[str, np.ndarray]) -> None:
        """Rows 0..rows from `arrays` in one go (a chunk part-way through its life)."""
        for name, arr in self.arrays.items():
            arr[:rows] = np.asarray(arrays[name][:rows], dtype=object if RESULT_ARRAYS[name][1] == "str" else None)

    def write_page(self, row: int, page: dict[str, np.ndarray]) -> None:
        """One page as the old script wrote it: zero the row of every array, then write it."""
        for name, arr in self.arrays.items():
            value = page[name]
            arr[row] = "" if RESULT_ARRAYS[name][1] == "str" else np.zeros_like(value)
            arr[row] = value
