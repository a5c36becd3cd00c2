"""Where snapshots go: a local folder or an S3 prefix, behind one small interface.

Both hold `snapshots/<id>/` folders, each a whole output folder readable by its own path, and
`latest.json`, the pointer a reader follows, replaced whole and last. A local folder renames the
pointer into place; object storage has no rename, but a single PUT replaces an object atomically
(a reader gets the old object or the new one, never a mix), so the pointer is one PUT, made only
once every object of its snapshot is in place. A file that did not change since the previous
snapshot is not sent again: it is hard-linked locally, copied by the server on S3.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from comix_embed.common.durable import fsync_dir
from comix_embed.common.inputs import s3
from comix_embed.common.inputs.locations import RemoteURL
from comix_embed.common.inputs.read_errors import InputNotFound, retried


class Destination(Protocol):
    """What a snapshot needs of where it goes; `rel` paths are `/`-separated, below the destination."""

    def read(self, rel: str) -> bytes | None:
        """The file's bytes, None when there is none."""
        ...

    def write(self, rel: str, data: bytes) -> None:
        """The whole file, replacing any."""
        ...

    def reuse(self, old: str, rel: str) -> None:
        """`rel` made equal to `old` (of an earlier snapshot) without sending its bytes again."""
        ...

    def snapshot_ids(self) -> list[str]:
        """The ids of the `snapshots/<id>/` folders present, complete or not, in order."""
        ...

    def delete_snapshot(self, snapshot_id: str) -> None:
        """`snapshots/<id>/` and everything below it."""
        ...

    def publish(self, rel: str, data: bytes) -> None:
        """Replace the file whole and at once: a reader sees the old or the new, never a mix."""
        ...


class LocalDestination:
    """A folder on this machine (or a mounted share)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def read(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def reuse(self, old: str, rel: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        try:
            os.link(self.root / old, path)  # a hard link: the same bytes, stored once
        except OSError:
            shutil.copyfile(self.root / old, path)

    def snapshot_ids(self) -> list[str]:
        folder = self.root / "snapshots"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def delete_snapshot(self, snapshot_id: str) -> None:
        shutil.rmtree(self.root / "snapshots" / snapshot_id, ignore_errors=True)

    def publish(self, rel: str, data: bytes) -> None:
        self.write(rel, data)
        fsync_dir(self.root)


class S3Destination:
    """A prefix in an S3-compatible bucket, through this process's client (common/inputs/s3.py):
    the same credentials, endpoint and transient-failure retries as remote inputs."""

    def __init__(self, root: RemoteURL) -> None:
        self.root = root.as_prefix()

    def __str__(self) -> str:
        return str(self.root)

    def _key(self, rel: str) -> str:
        return self.root.key + rel

    def _call(self, rel: str, request: Any) -> Any:
        return retried(lambda: s3.answered(str(self.root.child(rel)), request))

    def read(self, rel: str) -> bytes | None:
        client = s3.client()
        try:
            return self._call(rel, lambda: client.get_object(Bucket=self.root.host, Key=self._key(rel))["Body"].read())
        except InputNotFound:
            return None

    def write(self, rel: str, data: bytes) -> None:
        client = s3.client()
        self._call(rel, lambda: client.put_object(Bucket=self.root.host, Key=self._key(rel), Body=data))

    def reuse(self, old: str, rel: str) -> None:
        client = s3.client()
        source = {"Bucket": self.root.host, "Key": self._key(old)}
        self._call(rel, lambda: client.copy_object(Bucket=self.root.host, Key=self._key(rel), CopySource=source))

    def snapshot_ids(self) -> list[str]:
        client = s3.client()
        prefix = self._key("snapshots/")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.root.host, Prefix=prefix, Delimiter="/")
        found = [
            entry["Prefix"][len(prefix) :].rstrip("/")
            for page in self._call("snapshots/", lambda: list(pages))
            for entry in page.get("CommonPrefixes", [])
        ]
        return sorted(found)

    def delete_snapshot(self, snapshot_id: str) -> None:
        client = s3.client()
        prefix = self._key(f"snapshots/{snapshot_id}/")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.root.host, Prefix=prefix)
        keys = [
            obj["Key"]
            for page in self._call(f"snapshots/{snapshot_id}/", lambda: list(pages))
            for obj in page.get("Contents", [])
        ]
        for start in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": key} for key in keys[start : start + 1000]], "Quiet": True}
            self._call(
                f"snapshots/{snapshot_id}/", lambda b=batch: client.delete_objects(Bucket=self.root.host, Delete=b)
            )

    def publish(self, rel: str, data: bytes) -> None:
        self.write(rel, data)  # one PUT: the old object or the new one, never a mix


def destination(root: Path | RemoteURL) -> LocalDestination | S3Destination:
    """The destination for `--to`: a local folder or an `s3://` prefix (HTTP(S) cannot be written)."""
    if isinstance(root, RemoteURL):
        if not root.is_s3:
            from comix_embed.common.errors import UsageError

            raise UsageError(f"--to {root}: snapshots go to a folder or an s3:// prefix, not to a web server")
        return S3Destination(root)
    return LocalDestination(root)
