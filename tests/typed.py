"""Typed access, for the tests, to what zarr, Redis and the broker helpers type loosely.

A zarr group's member is an array or a group, and reading an array gives a scalar or an array;
redis-py types every reply as maybe-None; the store's name on the broker is None before any job.
The tests know which one they hold: these helpers say so once, so that mypy checks the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import redis
import zarr
from zarr.core.metadata import ArrayV3Metadata

from comix_embed.common.broker.results_stream import store_id

StreamEntry = tuple[bytes, dict[bytes, bytes]]


class ArrayView:
    """One array of a store: reads come back as numpy arrays, writes go through to zarr."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.shape: tuple[int, ...] = array.shape
        self.dtype = array.dtype
        self.chunks: tuple[int, ...] = array.chunks
        self.shards: tuple[int, ...] | None = array.shards

    @property
    def dimension_names(self) -> tuple[str | None, ...]:
        """The names of its axes (a format 3 array always has them here)."""
        metadata = self.array.metadata
        assert isinstance(metadata, ArrayV3Metadata) and metadata.dimension_names is not None
        return metadata.dimension_names

    def chunk_key(self, coords: tuple[int, ...]) -> str:
        """The name of the file that holds the chunk (or, sharded, the shard) at these grid coordinates."""
        metadata = self.array.metadata
        assert isinstance(metadata, ArrayV3Metadata)
        return metadata.encode_chunk_key(coords)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.array[index])

    def __setitem__(self, index: Any, value: Any) -> None:
        self.array[index] = value


class StoreArrays:
    """A store's arrays by name (`path` is the store itself, not its output folder)."""

    def __init__(self, path: str | Path, mode: Literal["r", "r+"] = "r") -> None:
        self.group = zarr.open_group(path, mode=mode, use_consolidated=False)

    def __getitem__(self, name: str) -> ArrayView:
        found = self.group[name]
        assert isinstance(found, zarr.Array), f"{name} is not an array"
        return ArrayView(found)

    def arrays(self) -> list[tuple[str, ArrayView]]:
        return [(name, ArrayView(array)) for name, array in self.group.arrays()]


def broker_store(out: Path) -> str:
    """The store's name on the broker, for an output folder that holds a job."""
    store = store_id(out)
    assert store is not None, f"no job in {out}"
    return store


def entries(client: redis.Redis, key: str) -> list[StreamEntry]:
    """Every entry of a Redis stream."""
    reply: Any = client.xrange(key)
    return list(reply or [])


def read_new(client: redis.Redis, group: str, consumer: str, key: str) -> list[StreamEntry]:
    """The entries a consumer of `group` has not been given yet (XREADGROUP >)."""
    reply: Any = client.xreadgroup(group, consumer, {key: ">"})
    return list(reply[0][1]) if reply else []
