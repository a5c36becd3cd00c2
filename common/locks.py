"""Advisory file locks between processes (flock); the kernel releases one when its holder dies.

Three things take one: planning a job (two producers at once would give two jobs the same rows),
a worker replica claiming a GPU of its host, and the one writer of a store. A lock that dies with
its process needs no clean-up after a crash, which a lock file's mere existence would.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO


def try_lock(path: str | os.PathLike[str]) -> IO[str] | None:
    """Take `path`'s exclusive lock without waiting.

    Returns the open file (read-write, created if missing) that holds it: the lock lasts until the
    file is closed or the process ends. None when another process holds it.
    """
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


@contextmanager
def held_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold `path`'s exclusive lock for the `with` block, waiting for it as long as it takes."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
