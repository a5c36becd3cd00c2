"""The store as diagnose reads it, once: attributes, arrays, manifests, job files, small columns.

Retry manifests (`--retry-failed`, common/store/retries.py) are read with the manifests.

Every check works on this snapshot, so that the checks agree on one state of a store that a
running writer may be changing, and the store is opened read only in one place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from comix_embed.common import config
from comix_embed.common.store.attributes import StoreAttributes
from comix_embed.common.store.jobs import Job, load_jobs
from comix_embed.common.store.manifests import BatchManifest, scan_manifests
from comix_embed.common.store.retries import RetryManifest, scan_retry_manifests
from comix_embed.common.store.schema import row_arrays


@dataclass
class Store:
    """The store's attributes (all of them, and the writer's bookkeeping decoded), arrays,
    manifests, job files and small per-row columns."""

    path: Path
    output_dir: Path
    root_meta: dict[str, Any]  # the root zarr.json: the attributes and the copy of the arrays' metadata
    attrs: dict[str, Any]
    kept: StoreAttributes
    arrays: dict[str, zarr.Array]  # the root's arrays by name (a group of that name is not one)
    array_rows: int
    rows: int  # rows worth reading: registered, committed or claimed by a manifest
    manifests: dict[int, BatchManifest]
    bad_manifests: list[str]
    retries: dict[int, RetryManifest]  # retry manifests by retry batch id (common/store/retries.py)
    bad_retries: list[str]
    jobs: list[Job]
    page_ids: np.ndarray
    status: np.ndarray
    writer_running: bool

    @property
    def committed(self) -> int:
        return self.kept.committed_rows

    @property
    def registered(self) -> int:
        return self.kept.registered_rows

    def covered_rows(self) -> np.ndarray:
        """Rows a manifest covers, within what the arrays hold."""
        mask = np.zeros(self.rows, dtype=bool)
        for manifest in self.manifests.values():
            start, end = manifest.rows()
            mask[start : min(end, self.rows)] = True
        return mask

    def batch_of(self, batch_id: int) -> tuple[Job, tuple[int, int]] | None:
        """The job file that has this batch, and the batch's rows (None when no job has it)."""
        for job in self.jobs:
            try:
                return job, job.batch(batch_id)
            except KeyError:
                continue
        return None

    def read(self, name: str, start: int | None = None, end: int | None = None) -> np.ndarray:
        """Rows [start, end) of array `name`, as numpy (zarr types a read as array or scalar)."""
        return np.asarray(self.arrays[name][start:end])


def writer_running(output_dir: Path) -> bool:
    """Whether a process holds the writer's lock, read from /proc/locks without taking it.

    Taking the lock, even for an instant, could make a writer starting then refuse to start.
    Without /proc/locks the pid the writer recorded is tested instead.
    """
    lock = output_dir / config.WRITER_LOCK_NAME
    try:
        st = lock.stat()
    except FileNotFoundError:
        return False
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as fh:
            return any("FLOCK" in line.split() and key in line.split() for line in fh)
    except OSError:
        return _pid_alive(lock.read_text().strip())


def _pid_alive(text: str) -> bool:
    try:
        os.kill(int(text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def load_store(path: Path) -> Store:
    """Read the snapshot; raises whatever stops the attributes, manifests or job files being read."""
    root_meta = json.loads((path / "zarr.json").read_bytes())
    attrs = root_meta.get("attributes", {})
    kept = StoreAttributes.of(attrs)
    # the arrays' own metadata, not the root's copy of it (which the layout check compares with them)
    arrays = dict(zarr.open_group(path, mode="r", use_consolidated=False).arrays())
    lengths = [arrays[name].shape[0] for name in row_arrays() if name in arrays]
    array_rows = min(lengths, default=0)
    manifests, bad_files = scan_manifests(path)
    retries, bad_retries = scan_retry_manifests(path)
    claimed = max((m.rows()[1] for m in manifests.values()), default=0)
    attr_rows = max(kept.registered_rows, kept.committed_rows)
    rows = min(array_rows, max(attr_rows, claimed))

    def column(name: str, fill: Any) -> np.ndarray:
        return np.asarray(arrays[name][:rows]) if name in arrays else np.full(rows, fill)

    return Store(
        path=path,
        output_dir=path.parent,
        root_meta=root_meta,
        attrs=attrs,
        kept=kept,
        arrays=arrays,
        array_rows=array_rows,
        rows=rows,
        manifests=manifests,
        bad_manifests=list(bad_files.values()),
        retries=retries,
        bad_retries=bad_retries,
        jobs=load_jobs(path.parent),
        page_ids=np.asarray(column("page_id", ""), dtype=object),
        status=np.asarray(column("status", 0), dtype=np.int16),
        writer_running=writer_running(path.parent),
    )


def open_xarray(path: Path) -> tuple[Any, str]:
    """The whole store as xarray opens it, or the reason it does not open."""
    import xarray as xr

    try:
        return xr.open_zarr(path, consolidated=False), ""
    except Exception as exc:  # any failure to open is the finding itself
        return None, f"{type(exc).__name__}: {exc}"
