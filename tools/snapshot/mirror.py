"""A snapshot on S3 as a folder the read commands open: a local mirror, kept per prefix, made incrementally.

`summaries`, `diagnose`, `query`, `index` and `serve` read a store through files (manifests, job
files, the audit log, the index beside it), so a snapshot given as `--zarr s3://bucket/prefix/`
is mirrored first: the snapshot `latest.json` names, file by file as its `snapshot.json` lists
them, each checked against its SHA-256. A file an earlier mirror of the same prefix already holds
is hard-linked, not fetched again, so following a nightly snapshot costs what changed. A mirror is
complete once its own `snapshot.json` is in place, and is then never changed; the older mirrors of
the prefix are removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.locations import RemoteURL, is_url, parse_root
from comix_embed.common.inputs.read_errors import InputUnreadable
from comix_embed.common.inputs.reading import read_many
from comix_embed.common.messages import decode_json
from comix_embed.common.store.snapshots import POINTER_NAME, Pointer
from comix_embed.tools.snapshot.command import CONTENTS, SnapshotContents
from comix_embed.tools.snapshot.destination import S3Destination


def readable(given: str) -> str:
    """`given` as a read command opens it: a local path as it is, an `s3://` destination of
    snapshots as the folder of a local mirror of its newest snapshot."""
    if not is_url(given):
        return given
    root = parse_root(given, "--zarr")
    if not isinstance(root, RemoteURL) or not root.is_s3:
        raise UsageError(f"--zarr {given}: a store is read from a folder or an s3:// prefix of snapshots")
    return str(mirror(root))


def mirror(root: RemoteURL) -> Path:
    """The local folder holding the newest snapshot under `root`, fetched as needed."""
    dest = S3Destination(root)
    raw = dest.read(POINTER_NAME)
    if raw is None:
        raise UsageError(f"--zarr {root}: no snapshot there (no {POINTER_NAME}; see `comix-embed snapshot`)")
    pointer = decode_json(raw, Pointer, f"{root}{POINTER_NAME}")
    raw_contents = dest.read(pointer.path + CONTENTS)
    if raw_contents is None:
        raise UsageError(f"--zarr {root}: {POINTER_NAME} names {pointer.path}, which has no {CONTENTS}")
    contents = decode_json(raw_contents, SnapshotContents, f"{root}{pointer.path}{CONTENTS}")
    base = Path(config.SNAPSHOT_CACHE.get()).expanduser() / root.host / root.key
    folder = base / contents.id
    if (folder / CONTENTS).is_file():
        return folder
    known = _cached_files(base)
    partial = base / f".{contents.id}.partial"
    shutil.rmtree(partial, ignore_errors=True)

    def fetch(item: tuple[str, str]) -> None:
        rel, sha = item
        path = partial / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if sha in known:
            os.link(known[sha], path)
            return
        data = dest.read(pointer.path + rel)
        if data is None or hashlib.sha256(data).hexdigest() != sha:
            raise InputUnreadable(f"{root}{pointer.path}{rel}", "missing, or not what its snapshot.json says")
        path.write_bytes(data)

    items = [(rel, record.sha256) for rel, record in contents.files.items()]
    try:
        for _ in read_many(items, fetch):
            pass
    except InputUnreadable as exc:
        raise UsageError(f"--zarr {root}: cannot mirror snapshot {contents.id}: {exc}") from None
    (partial / CONTENTS).write_bytes(raw_contents)
    os.replace(partial, folder)
    for old in base.iterdir():
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _cached_files(base: Path) -> dict[str, Path]:
    """SHA-256 -> a file of an earlier complete mirror of the same prefix (to link, not fetch)."""
    found: dict[str, Path] = {}
    if not base.is_dir():
        return found
    for folder in base.iterdir():
        listed = folder / CONTENTS
        if folder.name.startswith(".") or not listed.is_file():
            continue
        contents = decode_json(listed.read_bytes(), SnapshotContents, str(listed))
        for rel, record in contents.files.items():
            found.setdefault(record.sha256, folder / rel)
    return found
