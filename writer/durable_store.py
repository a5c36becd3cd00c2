"""The writer's zarr store on disk: every file zarr writes is durable when the write returns.

zarr's `LocalStore` writes a file to a temporary name and renames it onto its key, with no fsync
(docs/store.md, "What is fsynced, and why"). The rename is atomic, not durable: after a power loss a chunk
that was rewritten while later batches filled it may come back empty or zeroed, though the
manifests of its committed rows were made durable after it. Here each write fsyncs the temporary
file before it replaces the old one, then the folder (and any folder it had to create), so
nothing written through zarr can outlive a later manifest or `committed_rows`. Deleting a key
(zarr deletes a chunk that became all fill values) fsyncs its folder as well.

This covers chunks and every `zarr.json` zarr writes; the root attributes and the manifests are
written by `common/durable.py`, which does the same for its own files.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

from comix_embed.common.durable import fsync_dir, make_folders

# zarr's own temporary suffix: a file a killed writer leaves is recognised and removed alike
PARTIAL_SUFFIX = ".partial"


class DurableLocalStore(LocalStore):
    """A `LocalStore` whose `set` and `delete` return only once the change is on disk."""

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        # `set` and `set_if_not_exists` both land here
        if not self._is_open:
            await self._open()
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"DurableLocalStore.set(): `value` must be a Buffer, got {type(value)}")
        await asyncio.to_thread(durable_put, self.root / key, value, exclusive)

    def set_sync(self, key: str, value: Buffer) -> None:
        self._ensure_open_sync()
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"DurableLocalStore.set_sync(): `value` must be a Buffer, got {type(value)}")
        durable_put(self.root / key, value)

    async def delete(self, key: str) -> None:
        await super().delete(key)
        await asyncio.to_thread(_fsync_existing_dir, (self.root / key).parent)

    def delete_sync(self, key: str) -> None:
        super().delete_sync(key)
        _fsync_existing_dir((self.root / key).parent)


def durable_put(path: Path, value: Buffer, exclusive: bool = False) -> int:
    """Write `value` at `path`: temporary file, fsync, rename (link if `exclusive`), fsync folders.

    `exclusive` keeps zarr's meaning: FileExistsError when `path` already exists.
    """
    created = make_folders(path.parent)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            written = fh.write(value.as_buffer_like())
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if the key exists, as zarr's exclusive write does
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    for folder in created:  # a new folder's own entry lives in its parent
        fsync_dir(folder.parent)
    return written


def _fsync_existing_dir(folder: Path) -> None:
    if folder.is_dir():
        fsync_dir(folder)


def writer_store(path: str | os.PathLike[str], fsync: bool) -> LocalStore:
    """The store the writer opens `path` with: durable, or zarr's plain one when fsync is off
    (COMIX_WRITER_FSYNC=0, for tests and benchmarks; a process crash still loses nothing)."""
    return DurableLocalStore(Path(path)) if fsync else LocalStore(Path(path))
