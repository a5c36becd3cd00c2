"""A file's SHA-256, read in blocks: what names a checkpoint in the store and a list file in a job.

Both are compared byte for byte against what was recorded (one model per store; the same list
registered once), so the hash is of the raw file, whatever its format.
"""

from __future__ import annotations

import hashlib
import os

BLOCK = 1 << 22  # 4 MiB: large checkpoints hash at disk speed, small files in one read


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
