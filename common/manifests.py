"""Batch manifests, the store's acknowledgements (spec/store.md): their format and how to read them.

A manifest is written whole (temporary file then rename) after its batch's rows, and never
removed; only the writer writes them (`writer/manifests.py`), every role may read them here.
The contiguous prefix of manifests from batch 0 is what `committed_rows` publishes. Besides the
manifests, `manifest/inflight.json` names the batches whose rows are being written right now,
so that a restart can clear what a killed writer left past the manifests.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Container, Iterable
from pathlib import Path
from typing import Any

from comix_embed.common import config
from comix_embed.common.durable import TMP_SUFFIX
from comix_embed.common.jobs import Job, utc_now

MANIFEST_PATTERN = re.compile(r"^batch_(\d{6,})\.json$")
INFLIGHT_NAME = "inflight.json"
log = logging.getLogger(__name__)


def manifest_dir(store: str | os.PathLike[str]) -> Path:
    return Path(store) / config.MANIFEST_GROUP


def manifest_file(store: str | os.PathLike[str], batch_id: int) -> Path:
    return manifest_dir(store) / f"batch_{batch_id:06d}.json"


def make_manifest(
    batch_id: int, start: int, page_ids: list[str], job: str, statuses: dict[str, int], token: int | None = None
) -> dict[str, Any]:
    """A batch's manifest; `token` is the writer lease's fencing token (absent in manifests from before)."""
    manifest = {
        "batch_id": batch_id,
        "start_idx": start,
        "end_idx": start + len(page_ids) - 1,
        "num_pages": len(page_ids),
        "timestamp": utc_now(),
        "page_ids": list(page_ids),
        "job": job,
        "statuses": statuses,
    }
    if token is not None:
        manifest["token"] = token
    return manifest


def manifest_rows(manifest: dict[str, Any]) -> tuple[int, int]:
    """[start, end) rows of a manifest (its `end_idx` is inclusive, as users know it)."""
    return int(manifest["start_idx"]), int(manifest["start_idx"]) + int(manifest["num_pages"])


def manifest_ids(store: str | os.PathLike[str]) -> set[int]:
    """Batch ids that have a manifest file, from the file names alone (cheap, read-only)."""
    folder = manifest_dir(store)
    if not folder.is_dir():
        return set()
    return {int(m.group(1)) for name in os.listdir(folder) if (m := MANIFEST_PATTERN.match(name))}


def scan_manifests(store: str | os.PathLike[str]) -> tuple[dict[int, dict[str, Any]], dict[Path, str]]:
    """Valid manifests by batch id, and the invalid ones with what is wrong; reads only."""
    found: dict[int, dict[str, Any]] = {}
    bad: dict[Path, str] = {}
    folder = manifest_dir(store)
    for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
        match = MANIFEST_PATTERN.match(name)
        if not match:
            continue
        try:
            with open(folder / name, encoding="utf-8") as fh:
                manifest = json.load(fh)
            start, end = manifest_rows(manifest)
            consistent = (
                manifest["batch_id"] == int(match.group(1))
                and end - start == len(manifest["page_ids"]) > 0
                and manifest["end_idx"] == end - 1
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            bad[folder / name] = f"{name} is unreadable ({type(exc).__name__}: {exc})"
            continue
        if not consistent:
            bad[folder / name] = f"{name} contradicts itself (batch_id, start_idx, end_idx, num_pages, page_ids)"
            continue
        found[int(match.group(1))] = manifest
    return found, bad


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
    return {job.job_id: [b for b, _, _ in job.batches() if b not in committed] for job in jobs}


def store_owed(store: str | os.PathLike[str], jobs: Iterable[Job]) -> dict[str, list[int]]:
    """`owed_batches` from the manifest files' names (cheap, read-only)."""
    return owed_batches(jobs, manifest_ids(store))


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
