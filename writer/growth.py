"""The store made and grown, by the writer alone: created empty, grown by each job it registers, its root attributes rewritten.

Root attributes are rewritten here, not through zarr: zarr's atomic write leaves a
`zarr.<hex>.partial` file beside the root `zarr.json` for an instant, and any foreign entry at
the store's root makes `xarray.open_zarr` warn ("not recognized as a component of a Zarr
hierarchy"). Our temporary file lives in the `manifest/` group instead, which readers never list,
and is renamed onto the root `zarr.json` (same filesystem, so still atomic).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import zarr

from comix_embed.common import config
from comix_embed.common.durable import fsync_dir, write_json_atomic
from comix_embed.common.errors import UsageError
from comix_embed.common.messages import ModelIdentity
from comix_embed.common.model.identity import identity_of
from comix_embed.common.store import consolidated
from comix_embed.common.store.attributes import ManifestCheckpoint, RegisteredJob, StoreAttributes
from comix_embed.common.store.jobs import Job
from comix_embed.common.store.reading import read_attrs
from comix_embed.common.store.schema import PAGE_COLUMNS, STORE_COORDINATES, array_layout, row_arrays
from comix_embed.common.timestamps import utc_now
from comix_embed.writer.durable_store import writer_store


def create_store(
    path: str | os.PathLike[str],
    model: ModelIdentity | dict[str, Any],
    fsync: bool = True,
    attributes: dict[str, Any] | None = None,
) -> None:
    """Create the empty store: every page_id array with 0 rows (registering a job grows them);
    `attributes` are root attributes it has from the start (an import's record).

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
        "manifest_checkpoint": msgspec.to_builtins(ManifestCheckpoint()),  # common/store/attributes.py
        "registered_rows": 0,
        "jobs": [],
        "coordinates": " ".join(STORE_COORDINATES),
        **(attributes or {}),
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
    write_attrs(tmp, {}, fsync, reconsolidate=True)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def write_attrs(
    path: str | os.PathLike[str],
    updates: dict[str, Any],
    fsync: bool = True,
    durable_rename: bool = True,
    reconsolidate: bool = False,
) -> dict[str, Any]:
    """Update root attributes atomically; the temporary file lives outside the root (see above).

    `fsync` and `durable_rename` as in `write_json_atomic`. `reconsolidate` after the arrays'
    shapes changed: the copy of their metadata in the same file is read again from them
    (common/store/consolidated.py); otherwise it is kept as it is.
    """
    path = Path(path)
    with open(path / "zarr.json", encoding="utf-8") as fh:
        meta = json.load(fh)
    meta.setdefault("attributes", {}).update(updates)
    if reconsolidate:
        meta[consolidated.KEY] = consolidated.consolidated(path)
    write_json_atomic(path / "zarr.json", meta, fsync, path / config.MANIFEST_GROUP, durable_rename)
    return meta["attributes"]


def open_row_arrays(path: str | os.PathLike[str], fsync: bool) -> dict[str, zarr.Array]:
    """Every page_id array of the store, opened for the writer (durable writes with `fsync`)."""
    group = zarr.open_group(writer_store(path, fsync), mode="r+", use_consolidated=False)
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
    kept = StoreAttributes.of(attrs)
    if job.job_id in kept.job_ids():
        return attrs
    if job.start_row != kept.registered_rows:
        raise UsageError(
            f"{job.job_id} starts at row {job.start_row} but {path} has {kept.registered_rows} registered rows"
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
    record = RegisteredJob(
        job_id=job.job_id,
        list_path=job.list_path,
        list_sha256=job.list_sha256,
        created=job.created,
        start_row=job.start_row,
        end_row=job.end_row,
        batch_size=job.batch_size,
        first_batch=job.first_batch,
        num_batches=job.batch_count(),
    )
    # the records already there are kept as they are: new ones are appended
    jobs = [*attrs.get("jobs", []), msgspec.to_builtins(record)]
    # `coordinates` again: a store made before every string array was listed in it gets the list now
    updates = {"jobs": jobs, "registered_rows": job.end_row, "coordinates": " ".join(STORE_COORDINATES)}
    return write_attrs(path, updates, fsync, reconsolidate=True)
