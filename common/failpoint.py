"""A fault point for tests: a process stops itself at a stage of its work, to be signalled or killed there.

The tests that kill a worker process mid-batch, or while a page is at a stage, or that signal the
writer mid-commit, cannot catch a stage that lasts milliseconds by polling, least of all on a
loaded machine. With COMIX_TEST_STOP_AT=STAGE:PATH[,STAGE:PATH...] (a test switch: accepted only
beside COMIX_TEST_SWITCHES=1, common/environment.py), the first process to reach STAGE (a
worker's "batch": a batch taken, its batch lease held; "decode", "encode": a page embedded alone,
its mark already in Redis; the writer's "commit": a commit's rows written, its manifests not yet)
writes its process id to PATH and stops itself (SIGSTOP); the test waits for that stopped process
and kills or signals it. PATH is created exclusively, so it happens once per PATH, whichever
process and delivery get there first; a test removes PATH to stop the next one. Unset (any real
deployment), it does nothing.
"""

from __future__ import annotations

import os
import signal

from comix_embed.common import config


def stop_here(stage: str) -> None:
    """Stop this process if COMIX_TEST_STOP_AT names `stage` and no process has stopped at its PATH yet."""
    path = config.STOP_AT.get(stage)
    if path is None:
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGSTOP)
