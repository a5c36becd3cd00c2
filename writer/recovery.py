"""The writer's start: one writer per output folder, and the store put back in a committed state.

`lock` takes the output folder's lock (common/locks.py: an flock on `writer.lock`, which the
kernel releases with the process, whatever kills it). `recover` removes the temporary files a killed writer left,
reads the committed batches (the checkpoint and the manifests past it), and zeroes the rows of
batches that were being written without reaching their manifest (named by `inflight.json`).
With a `fence` (the writer lease, writer/lease.py), the manifests past the checkpoint that a
writer wrote after losing the writer lease are set aside (`.fenced`) and their rows zeroed too: never committed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.locks import try_lock
from comix_embed.common.store.attributes import StoreAttributes
from comix_embed.common.store.manifests import BatchManifest, Committed, read_inflight, scan_manifests
from comix_embed.common.store.reading import read_attrs
from comix_embed.writer import manifests, rows
from comix_embed.writer.growth import open_row_arrays

if TYPE_CHECKING:
    from comix_embed.writer.lease import WriterLease

log = logging.getLogger(__name__)


class WriterLocked(UsageError):
    """Another writer holds the store: one writer per store, always."""


def lock(output_dir: Path) -> IO[str]:
    """Take the output folder's writer lock, or raise WriterLocked naming the holder's pid.
    The lock is held as long as the returned file stays open."""
    path = output_dir / config.WRITER_LOCK_NAME
    fh = try_lock(path)
    if fh is None:
        holder = path.read_text().strip() or "?"
        raise WriterLocked(f"another writer (pid {holder}) holds {path}: one writer per store")
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def recover(path: Path, fsync: bool, fence: WriterLease | None = None) -> tuple[dict[str, Any], Committed]:
    """Put the store back in a committed state after any crash; its attributes and committed batches."""
    removed = manifests.remove_leftovers(path)
    if removed:
        log.info("removed %d temporary files left by a previous writer", removed)
    attrs = read_attrs(path)
    fenced = _fenced(path, attrs, fence) if fence is not None else {}
    committed = manifests.read_committed(path)
    unfinished = [r for r in read_inflight(path) if r[0] not in committed]
    unfinished += [(b, *m.rows()) for b, m in fenced.items()]
    if unfinished:
        log.info("clearing rows of %d batches a previous writer left without manifest", len(unfinished))
        rows.clear_rows(open_row_arrays(path, fsync), unfinished)
    manifests.clear_inflight(path)
    return attrs, committed


def _fenced(path: Path, attrs: dict[str, Any], fence: WriterLease) -> dict[int, BatchManifest]:
    """Set aside the manifests past the checkpoint that a writer wrote after its writer lease had
    passed on; those manifests, by batch id (their rows are still to be zeroed)."""
    checkpoint = StoreAttributes.of(attrs).manifest_checkpoint
    _, fenced = fence.admit(scan_manifests(path, checkpoint.batches if checkpoint else 0)[0])
    for batch_id, m in fenced.items():
        log.error(
            "batch %d: manifest written under token %s after the writer lease had passed on: never committed",
            batch_id,
            m.token or 0,
        )
        manifests.set_aside(path, batch_id, ".fenced")
    return fenced
