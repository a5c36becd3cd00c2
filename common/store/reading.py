"""Reading the store: its root attributes, its committed rows, and the store found from either of its names.

Readers never see more than the committed rows: `open_committed` and `read_committed_rows` slice
every array to `committed_rows`, which the writer publishes only after the rows and manifests
below it are on disk (docs/store.md, "The commit protocol").
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.messages import decode_json
from comix_embed.common.store.attributes import StoreAttributes
from comix_embed.common.store.snapshots import POINTER_NAME, Pointer
from comix_embed.common.store.v2 import describe

if TYPE_CHECKING:
    import xarray as xr


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every root attribute as the store's `zarr.json` holds it (what xarray shows as `ds.attrs`);
    `StoreAttributes.of` decodes the writer's bookkeeping among them."""
    with open(Path(path) / "zarr.json", encoding="utf-8") as fh:
        return json.load(fh).get("attributes", {})


def read_committed_rows(path: str | os.PathLike[str]) -> int:
    """Rows [0, n) are committed: whole batches, in index order, never to change."""
    return StoreAttributes.of(read_attrs(path)).committed_rows


def open_committed(path: str | os.PathLike[str], timeout: float = 10.0) -> xr.Dataset:
    """The store as an xarray Dataset of exactly its committed rows (lazy, read only).

    `committed_rows` is read before the arrays are opened, and every array holds at least that
    many rows, so the slice never reaches a row being written. While the writer grows the arrays
    (rarely, back to back) their lengths differ for an instant and xarray refuses to open:
    retried until `timeout`.
    """
    import xarray as xr  # readers only: the writer never pays for importing xarray

    deadline = time.monotonic() + timeout
    while True:
        committed = read_committed_rows(path)
        try:
            ds = xr.open_zarr(path, consolidated=False)
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        ds = ds.isel(page_id=slice(0, committed))
        ds.attrs["committed_rows"] = committed
        return ds


def resolve_store(path: str | os.PathLike[str]) -> Path:
    """The store itself, given either its `.zarr` path or the output folder that holds it.

    Users pass both spellings (their old tools took the `.zarr`, our commands the output folder).
    A folder of snapshots (`comix-embed snapshot --to`) gives the newest complete one's store.
    """
    given = Path(path)
    pointer = given / POINTER_NAME
    if pointer.is_file():
        latest = decode_json(pointer.read_bytes(), Pointer, str(pointer))
        given = given / latest.path
    for candidate in (given, given / config.STORE_NAME):
        if (candidate / "zarr.json").is_file():
            if "committed_rows" not in read_attrs(candidate):
                raise UsageError(f"no embeddings store at {candidate}: found {describe(candidate)}")
            return candidate
    inside = given / config.STORE_NAME
    found = describe(inside) if inside.exists() else describe(given)
    raise UsageError(f"no embeddings store at {given}: found {found}")
