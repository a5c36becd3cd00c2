"""A fault point for tests: a worker process stops itself at one stage of a page embedded alone.

The tests that kill a worker process while a page is at a stage ("decode", "encode") cannot catch
a stage that lasts milliseconds by polling, least of all on a loaded machine. With
COMIX_STOP_AT=STAGE:PATH, the first page embedded alone to reach STAGE, its mark already in Redis,
writes its process id to PATH and stops its own process (SIGSTOP); the test waits for that stopped
process and kills it. PATH is created exclusively, so it happens once, whichever process and
delivery get there first. Unset (any real deployment), it does nothing.
"""

from __future__ import annotations

import os
import signal

from comix_embed.common import config


def stop_here(stage: str) -> None:
    """Stop this process if COMIX_STOP_AT names `stage` and no process has stopped for it yet."""
    if config.STOP_AT is None:
        return
    wanted, _, path = config.STOP_AT.partition(":")
    if wanted != stage:
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGSTOP)
