"""Whole-or-nothing small files: the job files, the manifests and the store's root metadata.

A file is written to a temporary name, optionally fsynced, renamed onto its name, and its folder
fsynced: a reader or a restarted process sees the old file or the new one, never a torn one, and
with fsync the rename survives a power loss too.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import msgspec

TMP_SUFFIX = ".tmp"


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; the ones this call created, deepest first (each
    one's entry lives in its parent: fsync those parents to make the new folders durable)."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)  # another thread may create it at the same time
    return missing


def write_json_atomic(
    path: str | os.PathLike[str],
    data: Any,
    fsync: bool = True,
    tmp_dir: str | os.PathLike[str] | None = None,
    durable_rename: bool = True,
    indent: int | None = None,
) -> None:
    """Write `data` (builtins, or a record declared as a msgspec Struct) as JSON to `path` atomically.

    `tmp_dir` (same filesystem) keeps the temporary file out of a folder that others list;
    temporary names start with a dot and end in TMP_SUFFIX so that recovery can find them.
    `durable_rename=False` (with `fsync`) fsyncs the content but not the folder: a power loss
    never leaves a torn file but may bring the previous one back, for files whose previous
    version the reader repairs (it saves one journal commit per write). `indent` is for files
    people read (the DataSpec builder's output); the store's own files stay compact.
    """
    path = Path(path)
    folder = Path(tmp_dir) if tmp_dir is not None else path.parent
    tmp = folder / f".{path.name}.{uuid.uuid4().hex}{TMP_SUFFIX}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(msgspec.to_builtins(data), fh, ensure_ascii=False, indent=indent)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync and durable_rename:
        fsync_dir(path.parent)
