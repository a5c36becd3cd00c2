"""The embeddings store (spec/store.md): its schema, creation, growth, job registration, readers.

Only the writer process calls the functions that change the store; readers use
`open_committed` or `read_committed_rows`, which never see more than the committed rows.

Root attributes are rewritten by this module, not through zarr: zarr's atomic write leaves a
`zarr.<hex>.partial` file beside the root `zarr.json` for an instant, and any foreign entry at
the store's root makes `xarray.open_zarr` warn ("not recognized as a component of a Zarr
hierarchy"). Our temporary file lives in the `manifest/` group instead, which readers never list,
and is renamed onto the root `zarr.json` (same filesystem, so still atomic).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from comix_embed.common import config
from comix_embed.common.durable import fsync_dir, write_json_atomic
from comix_embed.common.durable_store import writer_store
from comix_embed.common.errors import UsageError
from comix_embed.common.identity import identity_of
from comix_embed.common.jobs import Job, utc_now
from comix_embed.common.messages import ModelIdentity
from comix_embed.common.results import RESULT_ARRAYS

if TYPE_CHECKING:
    import xarray as xr

# String columns written when a job is registered (everything else arrives with the batches).
PAGE_COLUMNS = ("page_id", "manifest_path", "source", "series", "volume", "issue", "page_num")
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


def create_store(path: str | os.PathLike[str], model: ModelIdentity | dict[str, Any], fsync: bool = True) -> None:
    """Create the empty store: every page_id array with 0 rows (registering a job grows them).

    Built under a temporary name and renamed into place, so that a crash while creating never
    leaves a half-made store under the real name (a leftover temporary folder is deleted here).
    With `fsync`, every file is durable before the store appears under its name.
    """
    path = Path(path)
    identity = {k: v for k, v in identity_of(model).to_dict().items() if v != ""}
    tmp = path.with_name(f".{path.name}.creating")
    if tmp.exists():
        shutil.rmtree(tmp)
    attrs = {
        **identity,
        "created": utc_now(),
        "schema_version": config.SCHEMA_VERSION,
        "committed_rows": 0,
        "manifest_checkpoint": {"batches": 0, "rows": 0, "statuses": {}},  # see common/manifests.py
        "registered_rows": 0,
        "jobs": [],
        "coordinates": " ".join(config.STORE_COORDINATES),
    }
    group = zarr.open_group(writer_store(tmp, fsync), mode="w-", zarr_format=3, attributes=attrs)
    d, p = identity["embedding_dim"], identity["max_panels"]
    for spec in row_arrays().values():
        shape = spec.shape(0, d, p)
        layout = array_layout(spec)
        group.create_array(
            spec.name,
            shape=shape,
            chunks=(*layout["chunks"], *shape[1:]),
            shards=(*layout["shards"], *shape[1:]) if layout["shards"] else None,
            dtype=str if spec.dtype == "str" else spec.dtype,
            fill_value=spec.fill,
            compressors=layout["compressors"],
            dimension_names=("page_id", *spec.dims),
        )
    for name, size in (("panel_id", p), ("embedding_dim", d), ("coord_dim", 4)):
        arr = group.create_array(name, shape=(size,), dtype="int32", dimension_names=(name,))
        arr[:] = np.arange(size, dtype="int32")
    group.create_group(config.MANIFEST_GROUP)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(Path(path) / "zarr.json", encoding="utf-8") as fh:
        return json.load(fh).get("attributes", {})


def write_attrs(
    path: str | os.PathLike[str], updates: dict[str, Any], fsync: bool = True, durable_rename: bool = True
) -> dict[str, Any]:
    """Update root attributes atomically; the temporary file lives outside the root (see above).

    `fsync` and `durable_rename` as in `write_json_atomic`.
    """
    path = Path(path)
    with open(path / "zarr.json", encoding="utf-8") as fh:
        meta = json.load(fh)
    meta.setdefault("attributes", {}).update(updates)
    write_json_atomic(path / "zarr.json", meta, fsync, path / config.MANIFEST_GROUP, durable_rename)
    return meta["attributes"]


def read_committed_rows(path: str | os.PathLike[str]) -> int:
    """Rows [0, n) are committed: whole batches, in index order, never to change."""
    return int(read_attrs(path).get("committed_rows", 0))


def open_row_arrays(path: str | os.PathLike[str], fsync: bool) -> dict[str, zarr.Array]:
    """Every page_id array of the store, opened for the writer (durable writes with `fsync`)."""
    group = zarr.open_group(writer_store(path, fsync), mode="r+")
    arrays = {}
    for name in row_arrays():
        arr = group[name]
        if not isinstance(arr, zarr.Array):
            raise UsageError(f"{path}: {name} is a group, not an array: not a comix-embed store")
        arrays[name] = arr
    return arrays


def grow(arrays: dict[str, zarr.Array], rows: int) -> None:
    """Make every page_id array hold exactly `rows` rows (never fewer than it holds): a change
    of each array's metadata only, the chunks stay as they are.

    Arrays are resized back to back; after a crash in between, the next call evens them out.
    """
    for arr in arrays.values():
        if arr.shape[0] < rows:
            arr.resize((rows, *arr.shape[1:]))


def register_job(path: str | os.PathLike[str], job: Job, fsync: bool = True) -> dict[str, Any]:
    """Give a job its rows in the store: grow the arrays to its last row, write its page columns,
    record it in the attributes. The arrays hold exactly the registered rows, so that
    `xarray.open_zarr` shows the registered pages and nothing else (rows not committed yet hold
    fill values; readers that want only committed rows slice to `committed_rows`).

    Idempotent: a crash before the attributes are updated is repaired by registering again.
    Jobs must be registered in order: a job starts where the registered rows end.
    """
    path = Path(path)
    attrs = read_attrs(path)
    if any(j["job_id"] == job.job_id for j in attrs.get("jobs", [])):
        return attrs
    if job.start_row != attrs.get("registered_rows", 0):
        raise UsageError(
            f"{job.job_id} starts at row {job.start_row} but {path} has "
            f"{attrs.get('registered_rows', 0)} registered rows"
        )
    arrays = open_row_arrays(path, fsync)
    grow(arrays, job.end_row)
    start = job.start_row
    while start < job.end_row:  # chunk by chunk: bounded memory, each chunk written once
        end = min((start // config.PAGE_COLUMN_ROWS + 1) * config.PAGE_COLUMN_ROWS, job.end_row)
        pages = job.page_slice(start, end)
        for name in PAGE_COLUMNS:
            arrays[name][start:end] = np.array([getattr(p, name) for p in pages], dtype=object)
        start = end
    record = {
        "job_id": job.job_id,
        "list_path": job.list_path,
        "list_sha256": job.list_sha256,
        "created": job.created,
        "start_row": job.start_row,
        "end_row": job.end_row,
        "batch_size": job.batch_size,
        "first_batch": job.first_batch,
        "num_batches": job.batch_count(),
    }
    return write_attrs(path, {"jobs": [*attrs.get("jobs", []), record], "registered_rows": job.end_row}, fsync)


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
    """
    given = Path(path)
    for candidate in (given, given / config.STORE_NAME):
        if (candidate / "zarr.json").is_file():
            return candidate
    raise UsageError(f"no embeddings store at {given} (neither a Zarr store nor a folder holding {config.STORE_NAME})")
