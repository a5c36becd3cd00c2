"""The exit statuses of every command, and the exceptions that end a command with one of them.

The one list of what a `comix-embed` command can exit with (`EXIT_STATUSES`, shown by
`comix-embed --help` and in the README). A command returns one of these constants, or raises a
`CommandError` whose class carries its status; `comix_embed/cli.py` prints the message as
`error: <message>` and exits with that status. The roles subclass these where they raise them
(writer/checks.py's CheckFailed, writer/diskfull.py's DiskFull, writer/lease.py's WriterLeaseHeld
and WriterLeaseLost).
"""

from __future__ import annotations

import textwrap

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PAGES_FAILED = 3
EXIT_DISK_FULL = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C

EXIT_STATUSES: dict[int, str] = {
    EXIT_OK: "done: every page ok (`run`), nothing FAILs (`diagnose`), the command did its work",
    EXIT_FAILED: (
        "failed: a check failed (`writer`/`run` --verify-batches or --write-check, a `diagnose` FAIL), "
        "a child process of `run` failed, a batch's results were refused COMIX_MAX_ATTEMPTS times, "
        "Redis is out of memory (`enqueue`), the broker cannot be reached"
    ),
    EXIT_USAGE: (
        "bad usage or configuration: a bad option, file or setting, a model that is not the store's, "
        "an untrusted checkpoint, another writer holding the store, a writer whose lease passed to another"
    ),
    EXIT_PAGES_FAILED: (
        "done, some pages failed, each recorded with its reason (`run`, `run --retry-failed`); "
        "`dataspec`: no DataSpec written"
    ),
    EXIT_DISK_FULL: "the store's disk is full (`writer`, `run`): free space and start again, it resumes",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C): committed batches are kept, run again to resume",
}


class CommandError(Exception):
    """What ends a command with `status` (the class's); `comix-embed` prints `error: <message>`.

    The message is shown as is, so it names the file, the line or the field at fault.
    """

    status = EXIT_FAILED


class UsageError(CommandError):
    """Bad usage or configuration (missing file, empty list, mixed models, a setting that cannot work)."""

    status = EXIT_USAGE


class OutOfSpace(CommandError):
    """A filesystem refused a write for lack of space: nothing helps until someone frees some."""

    status = EXIT_DISK_FULL


def describe_statuses() -> str:
    """The exit statuses, one per line, for `--help`."""
    return "\n".join(
        textwrap.fill(meaning, 100, initial_indent=f"  {status:>3}  ", subsequent_indent=" " * 7)
        for status, meaning in EXIT_STATUSES.items()
    )
