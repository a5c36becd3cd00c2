"""Why an input could not be read: one exception per cause, each naming the file or URL.

They subclass the built-in `OSError` family (`FileNotFoundError`, `PermissionError`), so that code
written for local files handles an object that is missing or refused the same way, while the
message names the URL and the server's answer (`s3://comics/x/001.jpg: no such object (404
NoSuchKey)`). `Transient` is the one to try again (`retried`); it never leaves the reading
layer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from comix_embed.common import config

T = TypeVar("T")


class InputUnreadable(OSError):
    """An input that cannot be read; `where` is its path or URL, `reason` the cause."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(reason)
        self.where = where
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class InputNotFound(InputUnreadable, FileNotFoundError):
    """No such file, object or bucket (404)."""


class InputDenied(InputUnreadable, PermissionError):
    """Reading was refused: access denied (403), or credentials the server does not accept."""


class Transient(Exception):
    """A failure that may pass: throttling (503 SlowDown, 429), another 5xx, a reset connection,
    a timeout. Tried again with backoff; `reason` says what happened."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def retried(call: Callable[[], T]) -> T:
    """`call()`, tried again on Transient up to COMIX_REMOTE_READ_ATTEMPTS times in all, backing
    off from COMIX_REMOTE_BACKOFF_S, doubling, with jitter (at most 10 s); the last Transient is
    raised when every try failed."""
    for attempt in range(config.REMOTE_READ_ATTEMPTS):
        if attempt:
            delay = min(10.0, config.REMOTE_BACKOFF_S * 2 ** (attempt - 1))
            time.sleep(delay * random.uniform(0.5, 1.0))
        try:
            return call()
        except Transient as exc:
            if attempt + 1 == config.REMOTE_READ_ATTEMPTS:
                raise Transient(f"{exc.reason} (still after {config.REMOTE_READ_ATTEMPTS} tries)") from None
    raise AssertionError("unreachable: REMOTE_READ_ATTEMPTS is at least 1")
