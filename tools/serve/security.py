"""What guards every request and response of the web page: headers, the login throttle, strict parameters, log-safe values.

- Every response carries a Content-Security-Policy that allows nothing from another origin and
  no inline script: scripts only as files from the site itself (the map's `static/map.js`), which
  may fetch from the site only; images from the site or as `data:` URLs, which run nothing (the
  uploaded query image's preview is one); `X-Content-Type-Options: nosniff`, frame protection
  (`X-Frame-Options: DENY` and `frame-ancestors 'none'`), `Referrer-Policy: same-origin`, and,
  when a password is set, `Cache-Control: private` (a shared cache must never keep a page that
  needed one).
- Failed logins are slowed: after `LOGIN_FAILURES` failed attempts from one address within
  `LOGIN_WINDOW_S` seconds, that address is answered 429 with `Retry-After` until the window has
  passed, right credentials or not, so that a password is not guessed at the server's speed.
- Query parameters that must be integers (or finite numbers) are refused with a 400 that names
  them, everywhere alike (`size=abc`, `panel=abc`, `root=abc`, `k=abc`, `x0=nan`).
- Values from a request are logged with control characters escaped: a request cannot write a line
  of its own into the log.
- Text from DataSpecs, paths and queries is shown isolated (`<bdi>`, the `iso` filter of the
  templates): a right-to-left override inside a page id cannot reorder what surrounds it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from typing import Any

from flask import Response
from markupsafe import Markup, escape

from comix_embed.common.errors import UsageError

LOGIN_FAILURES = 5
LOGIN_WINDOW_S = 30.0
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def add_headers(response: Response, private: bool) -> Response:
    """The headers every response carries (see above)."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if private:
        kept = [
            d.strip() for d in response.headers.get("Cache-Control", "").split(",") if d.strip() not in ("", "public")
        ]
        if "private" not in kept and "no-store" not in kept:
            kept.insert(0, "private")
        response.headers["Cache-Control"] = ", ".join(kept)
    return response


class LoginThrottle:
    """Failed logins per client address, within a sliding window; thread-safe."""

    def __init__(self, failures: int = LOGIN_FAILURES, window_s: float = LOGIN_WINDOW_S) -> None:
        self.failures, self.window_s = failures, window_s
        self._seen: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int:
        """Seconds the address must wait before it may try again; 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._seen.get(address, []) if now - t < self.window_s]
            self._seen[address] = recent
            if len(recent) < self.failures:
                return 0
            return max(1, int(recent[0] + self.window_s - now + 0.999))

    def failed(self, address: str) -> None:
        with self._lock:
            self._seen.setdefault(address, []).append(time.monotonic())

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._seen.pop(address, None)


def int_parameter(
    values: Mapping[str, Any], name: str, default: int | None, low: int | None = None, high: int | None = None
) -> Any:
    """Parameter `name` as an integer in [low, high], `default` when absent or empty; UsageError
    naming it when it is not a whole number, or out of range."""
    raw = _given(values, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"parameter `{name}` must be a whole number, not {printable(raw)[:40]!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise UsageError(f"parameter `{name}` must be between {low} and {high}, not {value}")
    return value


def float_parameter(values: Mapping[str, Any], name: str, default: float | None) -> float | None:
    """Parameter `name` as a finite number, `default` when absent or empty; UsageError naming it otherwise."""
    raw = _given(values, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UsageError(f"parameter `{name}` must be a finite number, not {printable(raw)[:40]!r}")
    return value


def _given(values: Mapping[str, Any], name: str) -> str | None:
    """Parameter `name` stripped, or None when it is absent or empty."""
    raw = values.get(name)
    text = "" if raw is None else str(raw).strip()
    return text or None


def printable(value: str) -> str:
    """`value` with every control character (line breaks, escape sequences, bidi overrides) escaped, for a log line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in value)


def isolated(value: Any) -> Markup:
    """`value` escaped and wrapped in `<bdi>`: its text direction stays inside (the templates' `iso` filter)."""
    return Markup("<bdi>") + escape("" if value is None else str(value)) + Markup("</bdi>")
