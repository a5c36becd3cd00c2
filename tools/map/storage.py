"""The map folder beside a store: `meta.json` naming the version in use, and that version's arrays.

    <output_dir>/map/
        meta.json               what the map covers (a `MapMeta`: rows, the store's identity, the method), replaced atomically
        map_000003.npz          the version meta.json names: x, y and status of every covered row, the landmarks
        build.lock              held by the one `comix-embed map` at work

A run writes its arrays under a new version's name (fsynced), then replaces `meta.json`
atomically: a run killed at any instant leaves the previous map whole and in use; the next run
removes the arrays no meta names. A store not named `combined_embeddings.zarr` gets
`<store>.map` beside it, as its index gets `<store>.index`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from comix_embed.common import config
from comix_embed.common.durable import fsync_dir, write_json_atomic
from comix_embed.common.errors import UsageError
from comix_embed.tools.search.layout import IndexedStore, read_format

META = "meta.json"
FORMAT = 1
MAP_DIR_NAME = "map"


class MapMethod(msgspec.Struct, frozen=True, kw_only=True):
    """How the landmarks were chosen and laid out, and how the other pages are placed among them."""

    landmarks: int
    seed: int
    perplexity: float
    neighbours: int


class MapMeta(msgspec.Struct, kw_only=True):
    """`meta.json`: the map of committed rows [0, `rows`) of the store named by `store`, `placed`
    of them on it (the embedded ones), its arrays in `arrays`."""

    format: int
    version: int
    arrays: str
    store: IndexedStore
    store_path: str
    rows: int
    placed: int
    method: MapMethod
    built: str


@dataclass
class MapArrays:
    """A map's arrays: one x, y (NaN: not placed) and status per covered row; the landmarks' rows,
    unit vectors and positions, which stay as they are until `--rebuild`."""

    x: np.ndarray
    y: np.ndarray
    status: np.ndarray
    landmark_rows: np.ndarray
    landmark_vectors: np.ndarray
    landmark_xy: np.ndarray


def map_dir(store: Path) -> Path:
    """`<output_dir>/map` for a store named as the pipeline names it, else `<store>.map` beside it."""
    if store.name == config.STORE_NAME:
        return store.parent / MAP_DIR_NAME
    return store.with_name(store.name.removesuffix(".zarr") + ".map")


def read_meta(folder: Path) -> MapMeta | None:
    """The map's meta (None: no map yet); UsageError for one of another format or that does not decode."""
    try:
        return read_format(folder / META, MapMeta, "map", FORMAT)
    except FileNotFoundError:
        return None


def check_store(meta: MapMeta, identity: IndexedStore, folder: Path) -> None:
    """UsageError unless the map was made from this store (same creation, model and shape)."""
    if meta.store != identity:
        raise UsageError(
            f"{folder} is the map of another store (or model), made from {meta.store_path}: "
            "run `comix-embed map --rebuild` to replace it"
        )


def read_arrays(folder: Path, meta: MapMeta) -> MapArrays:
    """The arrays the meta names; UsageError when they are gone (serve, reading as a run replaces
    them, tries again at its next request, when `meta.json` has changed)."""
    try:
        with np.load(folder / meta.arrays, allow_pickle=False) as data:
            return MapArrays(**{name: data[name] for name in MapArrays.__dataclass_fields__})
    except FileNotFoundError:
        raise UsageError(
            f"{folder / META} names {meta.arrays}, which is missing: run `comix-embed map --rebuild`"
        ) from None


def write_map(folder: Path, meta: MapMeta, arrays: MapArrays) -> None:
    """The arrays under the meta's version name, fsynced; then the meta, atomically; then the
    arrays of earlier versions (and of killed runs) removed."""
    path = folder / meta.arrays
    with open(path, "wb") as fh:
        np.savez(fh, **vars(arrays))
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(folder)
    write_json_atomic(folder / META, meta)
    remove_leftovers(folder, meta)


def remove_leftovers(folder: Path, meta: MapMeta | None) -> None:
    """Array files the meta does not name: earlier versions, and what a killed run wrote."""
    for found in folder.glob("map_*.npz"):
        if meta is None or found.name != meta.arrays:
            found.unlink(missing_ok=True)


def arrays_name(version: int) -> str:
    return f"map_{version:06d}.npz"
