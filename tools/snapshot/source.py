"""What a snapshot of a growing store holds: its committed prefix at one moment, as files.

The writer only ever grows a store's committed prefix, publishing `committed_rows = N` once rows
[0, N) and their manifests are on disk (docs/store.md, "The commit protocol"). So the files that
hold rows [0, N) can be copied while the writer goes on: a chunk or shard file the writer replaces
meanwhile is replaced whole (a rename), and either version holds rows [0, N) as committed. The
snapshot is then made a store of exactly N rows by its metadata, written here, never read from the
live store after the moment: every row array's shape is cut to N, the root attributes say N rows
committed and registered, and only the manifests and audit lines of rows below N are kept. The
writer is never stopped or locked.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.store import consolidated
from comix_embed.common.store.attributes import StoreAttributes
from comix_embed.common.store.manifests import is_temporary, manifest_files, read_manifest
from comix_embed.common.store.snapshots import SNAPSHOT_ATTRIBUTE
from comix_embed.common.timestamps import utc_now

STORE = config.STORE_NAME
# What the writer keeps for itself, never part of a snapshot: its in-flight records and locks.
LEFT_OUT = ("manifest/inflight.json", "manifest/retry_inflight.json")
BLOCK = 1 << 22
# File times are as coarse as 1-2 s on some file systems (and NFS): a file changed more recently
# than this is read again by the next snapshot, whatever its size and time say.
RACY_S = 2


class _AuditRow(msgspec.Struct):
    """The one field of an audit line a snapshot needs (the others are copied as written)."""

    row: int = -1


@dataclass
class SourceFile:
    """One file of the snapshot: `rel` below the snapshot's folder; its bytes are `data` (metadata
    written for the snapshot) or the live file at `path`, of `size` bytes as it was when listed."""

    rel: str
    size: int
    path: Path | None = None
    data: bytes | None = None
    mtime_ns: int = 0

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        with open(self.path, "rb") as fh:
            return fh.read()

    def sha256(self) -> str:
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        assert self.path is not None
        digest = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for block in iter(lambda: fh.read(BLOCK), b""):
                digest.update(block)
        return digest.hexdigest()


@dataclass
class Moment:
    """The store's metadata read at one moment: the root attributes and each array's `zarr.json`."""

    root: dict[str, Any]
    arrays: dict[str, dict[str, Any]]

    @property
    def committed_rows(self) -> int:
        return StoreAttributes.of(self.root.get("attributes", {})).committed_rows


def read_moment(store: Path, tries: int = 20) -> Moment:
    """The root and array metadata, read so that they agree: while a job is registered the arrays
    grow one after another, so the root is read before and after them until no registration came
    between (a commit alone, which only moves `committed_rows`, does not count: the root read
    first is the moment, and its rows were committed before the arrays were read)."""
    for _ in range(tries):
        before = json.loads((store / "zarr.json").read_bytes())
        arrays = {}
        for entry in sorted(store.iterdir()):
            meta = entry / "zarr.json"
            if entry.is_dir() and entry.name != config.MANIFEST_GROUP and meta.is_file():
                arrays[entry.name] = json.loads(meta.read_bytes())
        after = json.loads((store / "zarr.json").read_bytes())
        if _registered(after) == _registered(before):
            return Moment(before, arrays)
    raise UsageError(f"{store}: its metadata kept changing while it was read ({tries} tries)")


def _registered(root: dict[str, Any]) -> int:
    return StoreAttributes.of(root.get("attributes", {})).registered_rows


def _row_chunk(meta: dict[str, Any]) -> int | None:
    """Rows per chunk file of a row array (its shard's, when sharded), None for other arrays."""
    if (meta.get("dimension_names") or [None])[0] != "page_id":
        return None
    return int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])


def _encoded(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2).encode()


def snapshot_files(output_dir: Path) -> tuple[int, list[SourceFile]]:
    """(N, the snapshot's files): the committed prefix of the store in `output_dir` now."""
    store = output_dir / STORE
    if not (store / "zarr.json").is_file():
        raise UsageError(f"no embeddings store at {output_dir} (no {STORE}/zarr.json)")
    moment = read_moment(store)
    n = moment.committed_rows
    files: list[SourceFile] = []
    root = copy.deepcopy(moment.root)
    attrs = root.setdefault("attributes", {})
    attrs["registered_rows"] = n
    attrs[SNAPSHOT_ATTRIBUTE] = {"committed_rows": n, "taken": utc_now()}
    attrs["jobs"] = [job for job in attrs.get("jobs", []) if int(job.get("start_row", 0)) < n]
    cuts = {}
    for name, meta in moment.arrays.items():
        rows = _row_chunk(meta)
        cut = copy.deepcopy(meta)
        if rows is not None:
            cut["shape"][0] = n
        cuts[name] = cut
        files.append(_made(f"{STORE}/{name}/zarr.json", cut))
        for path in _chunk_files(store / name):
            key = path.relative_to(store / name).as_posix()  # c/3/0/0
            if rows is not None and int(key.split("/")[1]) * rows >= n:
                continue  # holds only rows past the moment
            files.append(_live(path, f"{STORE}/{name}/{key}"))
    root[consolidated.KEY] = consolidated.consolidated(store, replacing=cuts)  # the cut shapes, for xarray
    files.insert(0, _made(f"{STORE}/zarr.json", root))
    files += _manifests(store, moment)
    files += _jobs(output_dir)
    audit = _audit(output_dir / config.AUDIT_LOG_NAME, n)
    if audit is not None:
        files.append(audit)
    return n, files


def _made(rel: str, data: dict[str, Any]) -> SourceFile:
    encoded = _encoded(data)
    return SourceFile(rel, len(encoded), data=encoded)


def _live(path: Path, rel: str) -> SourceFile:
    """A live file as listed. A file changed within the last RACY_S seconds records no time: the
    writer may change it again within the same clock tick at the same size (a full chunk of
    floats), and the next snapshot must then read it rather than trust its size and time."""
    stat = path.stat()
    racy = time.time_ns() - stat.st_mtime_ns < RACY_S * 1_000_000_000
    return SourceFile(rel, stat.st_size, path=path, mtime_ns=0 if racy else stat.st_mtime_ns)


def _chunk_files(array: Path) -> Iterator[Path]:
    chunks = array / "c"
    for folder, _, names in os.walk(chunks):
        for name in sorted(names):
            if not name.startswith(".") and not is_temporary(name):  # a file being written, not yet a chunk
                yield Path(folder) / name


def _manifests(store: Path, moment: Moment) -> list[SourceFile]:
    """The manifest group's files that describe rows below the moment's N: the batches of the
    contiguous prefix (a batch committed past a gap has its manifest, but is not in the prefix),
    retry manifests, the group's metadata; never the writer's in-flight records.

    The checkpoint written with N says how many batches the prefix holds; a store from before it
    has its manifests read to tell."""
    attrs = StoreAttributes.of(moment.root.get("attributes", {}))
    n = attrs.committed_rows
    checkpoint = attrs.manifest_checkpoint
    outside: set[Path] = set()  # batch manifests not in the prefix
    for batch_id, path in manifest_files(store):
        if checkpoint is not None and checkpoint.rows == n:
            keep = batch_id < checkpoint.batches
        else:
            manifest, _ = read_manifest(path, batch_id)
            keep = manifest is not None and manifest.rows()[1] <= n
        if not keep:
            outside.add(path)
    found: list[SourceFile] = []
    group = store / config.MANIFEST_GROUP
    for folder, _, names in os.walk(group):
        for name in sorted(names):
            path = Path(folder) / name
            inside = path.relative_to(store).as_posix()
            if is_temporary(name) or name.startswith(".") or inside in LEFT_OUT:
                continue
            if path in outside:
                continue
            found.append(_live(path, f"{STORE}/{inside}"))
    return found


def _jobs(output_dir: Path) -> list[SourceFile]:
    """The job files and retry rounds, whole: they describe the rows they own, and rows past the
    moment are simply not committed in the snapshot (as in the live store)."""
    folder = output_dir / config.JOBS_DIR_NAME
    if not folder.is_dir():
        return []
    return [
        _live(path, f"{config.JOBS_DIR_NAME}/{path.relative_to(folder).as_posix()}")
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    ]


def _audit(path: Path, n: int) -> SourceFile | None:
    """The audit log's lines of rows below `n`, as written (a line being appended is left out)."""
    if not path.is_file():
        return None
    kept = bytearray()
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                row = msgspec.json.decode(line, type=_AuditRow).row
            except msgspec.DecodeError:
                continue
            if 0 <= row < n:
                kept += line
    return SourceFile(config.AUDIT_LOG_NAME, len(kept), data=bytes(kept))
