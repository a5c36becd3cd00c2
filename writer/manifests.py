"""Writing the manifests and the in-flight record; the writer alone calls these.

Their records (`BatchManifest`, `InflightRecord`) and the reading side are in
common/store/manifests.py.
"""

from __future__ import annotations

import logging
import os

from comix_embed.common.durable import fsync_dir, make_folders, write_json_atomic
from comix_embed.common.store.manifests import (
    INFLIGHT_NAME,
    BatchManifest,
    Committed,
    InflightRecord,
    is_temporary,
    load_committed,
    manifest_dir,
    manifest_file,
)
from comix_embed.common.timestamps import utc_now

log = logging.getLogger(__name__)


def write_manifest(store: str | os.PathLike[str], manifest: BatchManifest, fsync: bool = True) -> None:
    """Write a batch's manifest in its sub-folder, made (durably, with `fsync`) when it is the first."""
    path = manifest_file(store, manifest.batch_id)
    created = make_folders(path.parent)
    write_json_atomic(path, manifest, fsync)
    if fsync:
        for folder in created:
            fsync_dir(folder.parent)


def read_committed(store: str | os.PathLike[str]) -> Committed:
    """The committed batches (checkpoint, then the manifests past it), for the writer.

    A manifest that does not parse or contradicts itself can only come from a power loss with
    fsync off; the writer moves it aside (`.corrupt`) so that its batch is owed and committed again.
    """
    committed, bad = load_committed(store)
    for path, reason in bad.items():
        log.error("%s; its batch will be committed again", reason)
        os.replace(path, path.with_name(path.name + ".corrupt"))
    return committed


def set_aside(store: str | os.PathLike[str], batch_id: int, suffix: str) -> None:
    """Rename a batch's manifest so that no reader takes it for one: its batch is owed again."""
    path = manifest_file(store, batch_id)
    os.replace(path, path.with_name(path.name + suffix))


def write_inflight(store: str | os.PathLike[str], ranges: list[tuple[int, int, int]], fsync: bool = True) -> None:
    """Record (batch_id, start, end) of the batches about to be written, before any row is."""
    write_json_atomic(manifest_dir(store) / INFLIGHT_NAME, InflightRecord(batches=ranges), fsync)


def clear_inflight(store: str | os.PathLike[str]) -> None:
    path = manifest_dir(store) / INFLIGHT_NAME
    if path.exists():
        path.unlink()
        fsync_dir(path.parent)


def remove_leftovers(store: str | os.PathLike[str]) -> int:
    """Delete the temporary files a killed writer left."""
    removed = 0
    for folder, _, files in os.walk(store):
        for name in files:
            if is_temporary(name):
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed


def make_manifest(
    batch_id: int, start: int, page_ids: list[str], job: str, statuses: dict[str, int], token: int | None = None
) -> BatchManifest:
    """A batch's manifest; `token` is the writer lease's fencing token (absent in manifests from before)."""
    return BatchManifest(
        batch_id=batch_id,
        start_idx=start,
        end_idx=start + len(page_ids) - 1,
        num_pages=len(page_ids),
        timestamp=utc_now(),
        page_ids=list(page_ids),
        job=job,
        statuses=statuses,
        token=token,
    )
