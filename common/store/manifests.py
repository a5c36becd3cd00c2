"""Batch manifests, the store's acknowledgements (docs/store.md, "Manifests"): their format and how to read them.

A manifest is written whole (temporary file then rename) after its batch's rows, and never
removed; only the writer writes them (`writer/manifests.py`), every role may read them here.
The contiguous prefix of manifests from batch 0 is what `committed_rows` publishes. Besides the
manifests, `manifest/inflight.json` names the batches whose rows are being written right now,
so that a restart can clear what a killed writer left past the manifests.

Layout: `manifest/batches/<first id>/batch_NNNNNN.json`, a sub-folder per thousand batch ids (a
million pages in batches of 8 make 150 folders of 1,000 files, not one folder of 150,000). Stores
written before keep their manifests flat in `manifest/`; both places are read, new manifests go
to the sub-folders (nothing is moved).

The checkpoint: the root attribute `manifest_checkpoint`, `{"batches": N, "rows": R, "statuses":
{...}}` (every batch below N has a manifest; they cover rows [0, R) with these status counts),
written in the same atomic rewrite of the root `zarr.json` as `committed_rows`, so they agree. Opening the
store reads the checkpoint and only the manifests past it (`load_committed`): a few files,
whatever the store's size. A store without the checkpoint (written before it) is scanned whole.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comix_embed.common import config
from comix_embed.common.durable import TMP_SUFFIX
from comix_embed.common.store.jobs import Job
from comix_embed.common.store.reading import read_attrs

MANIFEST_PATTERN = re.compile(r"^batch_(\d{6,})\.json$")
INFLIGHT_NAME = "inflight.json"
BATCHES_DIR = "batches"
FOLDER_BATCHES = 1000  # manifests per sub-folder
CHECKPOINT_ATTR = "manifest_checkpoint"
_FOLDER_PATTERN = re.compile(r"^\d{6,}$")
log = logging.getLogger(__name__)


def manifest_dir(store: str | os.PathLike[str]) -> Path:
    return Path(store) / config.MANIFEST_GROUP


def manifest_file(store: str | os.PathLike[str], batch_id: int) -> Path:
    """Where a batch's manifest is written: its thousand's sub-folder."""
    first = batch_id - batch_id % FOLDER_BATCHES
    return manifest_dir(store) / BATCHES_DIR / f"{first:06d}" / f"batch_{batch_id:06d}.json"


def find_manifest(store: str | os.PathLike[str], batch_id: int) -> Path | None:
    """A batch's manifest file, in its sub-folder or (a store from before) flat; None if none."""
    for path in (manifest_file(store, batch_id), manifest_dir(store) / f"batch_{batch_id:06d}.json"):
        if path.is_file():
            return path
    return None


def manifest_files(store: str | os.PathLike[str], from_id: int = 0) -> Iterator[tuple[int, Path]]:
    """(batch id, file) of every manifest with an id >= `from_id`, by listing names only.

    Only the sub-folders that can hold such ids are listed (and the flat folder of a store from
    before), so that the few manifests past a checkpoint cost a few listings.
    """
    folder = manifest_dir(store)
    if not folder.is_dir():
        return
    for name in sorted(os.listdir(folder)):
        if (m := MANIFEST_PATTERN.match(name)) and int(m.group(1)) >= from_id:
            yield int(m.group(1)), folder / name
    batches = folder / BATCHES_DIR
    subfolders = sorted(os.listdir(batches)) if batches.is_dir() else []
    for sub in subfolders:
        if not _FOLDER_PATTERN.match(sub) or int(sub) + FOLDER_BATCHES <= from_id:
            continue
        for name in sorted(os.listdir(batches / sub)):
            if (m := MANIFEST_PATTERN.match(name)) and int(m.group(1)) >= from_id:
                yield int(m.group(1)), batches / sub / name


def manifest_rows(manifest: dict[str, Any]) -> tuple[int, int]:
    """[start, end) rows of a manifest (its `end_idx` is inclusive, as users know it)."""
    return int(manifest["start_idx"]), int(manifest["start_idx"]) + int(manifest["num_pages"])


def recent_manifests(store: str | os.PathLike[str], count: int) -> list[tuple[float, int]]:
    """(modification time, batch id) of the `count` manifests written last, oldest first.

    Batches commit nearly in id order, so only the two highest sub-folders are looked at (and the
    flat folder of a store from before): a rate or a last commit time costs no more at a million
    pages than at a hundred.
    """
    folder = manifest_dir(store)
    batches = folder / BATCHES_DIR
    subfolders = sorted(n for n in os.listdir(batches) if _FOLDER_PATTERN.match(n)) if batches.is_dir() else []
    first = int(subfolders[-2] if len(subfolders) > 1 else subfolders[-1]) if subfolders else 0
    stamps = [(path.stat().st_mtime, batch_id) for batch_id, path in manifest_files(store, first)]
    return sorted(stamps)[-count:]


def manifest_ids(store: str | os.PathLike[str]) -> set[int]:
    """Batch ids that have a manifest: the checkpoint's prefix, and the files' names past it
    (cheap, read-only)."""
    committed, _ = load_committed(store, read=False)
    return committed.ids()


def read_manifest(path: Path, batch_id: int) -> tuple[dict[str, Any] | None, str]:
    """A manifest, checked against itself, or None and what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
        start, end = manifest_rows(manifest)
        consistent = (
            manifest["batch_id"] == batch_id
            and end - start == len(manifest["page_ids"]) > 0
            and manifest["end_idx"] == end - 1
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{path.name} is unreadable ({type(exc).__name__}: {exc})"
    if not consistent:
        return None, f"{path.name} contradicts itself (batch_id, start_idx, end_idx, num_pages, page_ids)"
    return manifest, ""


def scan_manifests(
    store: str | os.PathLike[str], from_id: int = 0
) -> tuple[dict[int, dict[str, Any]], dict[Path, str]]:
    """Valid manifests by batch id (those >= `from_id`), and the invalid ones with what is wrong; reads only."""
    found: dict[int, dict[str, Any]] = {}
    bad: dict[Path, str] = {}
    for batch_id, path in manifest_files(store, from_id):
        manifest, problem = read_manifest(path, batch_id)
        if manifest is None:
            bad[path] = problem
        else:
            found[batch_id] = manifest
    return found, bad


@dataclass
class Committed:
    """Which batches have a manifest: all below `batches` (the contiguous prefix, `rows` rows,
    `statuses` their counts), and `beyond`, those past a gap (batch id -> (start, end, statuses))."""

    batches: int = 0
    rows: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    beyond: dict[int, tuple[int, int, dict[str, int]]] = field(default_factory=dict)

    def __contains__(self, batch_id: object) -> bool:
        return isinstance(batch_id, int) and (0 <= batch_id < self.batches or batch_id in self.beyond)

    def __len__(self) -> int:
        return self.batches + len(self.beyond)

    def ids(self) -> set[int]:
        return set(range(self.batches)) | set(self.beyond)

    def add(self, batch_id: int, start: int, end: int, statuses: dict[str, int]) -> None:
        """Record a manifest (past the prefix until `advance` moves the prefix over it)."""
        if batch_id not in self:
            self.beyond[batch_id] = (start, end, dict(statuses))

    def advance(self) -> bool:
        """Move the prefix over the manifests that continue it; True when it moved."""
        moved = False
        while (nxt := self.beyond.get(self.batches)) is not None and nxt[0] == self.rows:
            del self.beyond[self.batches]
            self.rows = nxt[1]
            for name, count in nxt[2].items():
                self.statuses[name] = self.statuses.get(name, 0) + count
            self.batches += 1
            moved = True
        return moved

    def checkpoint(self) -> dict[str, Any]:
        """The root attributes that record the prefix (see the module's docstring)."""
        checkpoint = {"batches": self.batches, "rows": self.rows, "statuses": self.statuses}
        return {"committed_rows": self.rows, CHECKPOINT_ATTR: checkpoint}

    def pages(self) -> int:
        """Rows that have a manifest, in the prefix or past it."""
        return self.rows + sum(end - start for start, end, _ in self.beyond.values())

    def status_count(self, name: str) -> int:
        return self.statuses.get(name, 0) + sum(s.get(name, 0) for _, _, s in self.beyond.values())


def load_committed(store: str | os.PathLike[str], read: bool = True) -> tuple[Committed, dict[Path, str]]:
    """The committed batches from the checkpoint and the manifests past it, and the manifests
    past it that are invalid (with what is wrong).

    `read=False` takes the manifests past the checkpoint from their names (the rows and statuses
    of those are then unknown: zero), and does not move the prefix over them.
    """
    path = Path(store)
    attrs = read_attrs(path) if (path / "zarr.json").is_file() else {}
    committed = Committed()
    if CHECKPOINT_ATTR in attrs:
        saved = attrs[CHECKPOINT_ATTR]
        committed = Committed(int(saved["batches"]), int(saved["rows"]), dict(saved["statuses"]))
    if not read:
        for batch_id, _ in manifest_files(store, committed.batches):
            committed.add(batch_id, 0, 0, {})
        return committed, {}
    found, bad = scan_manifests(store, committed.batches)
    for batch_id, manifest in found.items():
        start, end = manifest_rows(manifest)
        committed.add(batch_id, start, end, manifest.get("statuses", {}))
    committed.advance()
    return committed, bad


def committed_prefix(batches: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(next batch id, committed rows) of the contiguous prefix of batches 0, 1, 2, ...

    Batch ids and rows both continue across jobs, so the prefix of ids is a prefix of rows.
    """
    batch_id, rows = 0, 0
    while batch_id in batches and batches[batch_id][0] == rows:
        rows = batches[batch_id][1]
        batch_id += 1
    return batch_id, rows


def owed_batches(jobs: Iterable[Job], committed: Container[int]) -> dict[str, list[int]]:
    """Each job's batches that have no manifest (`committed`: the batch ids that have one).

    The one definition of what a job still owes: the producer and `run` send these (again), the
    writer and `status` count them.
    """
    return {job.job_id: [b for b in job.batch_ids() if b not in committed] for job in jobs}


def store_owed(store: str | os.PathLike[str], jobs: Iterable[Job]) -> dict[str, list[int]]:
    """`owed_batches` from the checkpoint and the manifest files' names (cheap, read-only)."""
    return owed_batches(jobs, load_committed(store, read=False)[0])


def inflight_record(store: str | os.PathLike[str]) -> tuple[list[tuple[int, int, int]], str | None]:
    """(batch_id, start, end) of the batches a writer was writing when it stopped, and why the
    record could not be read (None when it could, or when there is none).

    The file is renamed into place without fsync: after a power loss it may be empty or torn. It
    then names nothing: rows it would have named lie past the manifests and are rewritten when
    their batch is committed again.
    """
    path = manifest_dir(store) / INFLIGHT_NAME
    if not path.exists():
        return [], None
    try:
        with open(path, encoding="utf-8") as fh:
            return [(int(b), int(s), int(e)) for b, s, e in json.load(fh)["batches"]], None
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        return [], f"{path} is unreadable ({type(exc).__name__}: {exc}), as a power loss can leave it"


def read_inflight(store: str | os.PathLike[str]) -> list[tuple[int, int, int]]:
    """The batches of the in-flight record; an unreadable record names none (logged)."""
    batches, problem = inflight_record(store)
    if problem:
        log.warning("%s: taken as naming no batch", problem)
    return batches


def is_temporary(name: str) -> bool:
    """A file a killed writer may leave: zarr's `*.partial`, our `.*.tmp`."""
    return name.endswith(".partial") or (name.startswith(".") and name.endswith(TMP_SUFFIX))
