"""A full disk during a commit: stop with the folder that is full and the room a commit needs.

Why a distinct stop: retrying cannot help until someone frees space, and a writer that went on
would only pile up half-written chunks. Nothing is lost by stopping: results stay unacknowledged
in Redis, rows written without their manifest are cleared when the writer starts again (the
in-flight record names them), and the writer resumes where it was.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import NoReturn

import numpy as np

from comix_embed.common import config
from comix_embed.common.errors import OutOfSpace

_MANIFEST_BYTES = 4096  # a manifest, an in-flight record, a zarr.json: a filesystem block each


class DiskFull(OutOfSpace):
    """The store's filesystem refused a write for lack of space (ENOSPC or a quota): exit status 4."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def needed_bytes(batches: list[dict[str, np.ndarray]]) -> int:
    """About what committing these batches writes: their arrays uncompressed (compression only
    helps), one chunk per array rewritten beside its old copy until the rename, a manifest each."""
    total = _MANIFEST_BYTES * (len(batches) + 2)
    for name in batches[0] if batches else ():
        rows = sum(len(b[name]) for b in batches)
        size = sum(_nbytes(b[name]) for b in batches)
        total += size + size // max(rows, 1) * config.CHUNK_ROWS
    return total


def _nbytes(values: np.ndarray) -> int:
    values = np.asarray(values)
    if values.dtype.kind in "OUS":
        return sum(len(str(v).encode("utf-8")) for v in values.ravel())
    return int(values.nbytes)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def raise_disk_full(exc: OSError, folder: Path, needed: int, doing: str) -> NoReturn:
    """Raise DiskFull with what the user needs: which folder, how much room, what to do."""
    mount = folder if folder.exists() else folder.parent
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    free = shutil.disk_usage(mount).free
    need = f"about {_mib(needed)} free" if needed else "room for a few small files"
    raise DiskFull(
        f"disk full ({os.strerror(exc.errno or errno.ENOSPC)}) while {doing}: {folder} "
        f"(filesystem mounted at {mount}: {_mib(free)} free) needs {need}. Nothing of the commit was "
        f"acknowledged: free space there and start the writer again, it resumes where it stopped"
    ) from exc
