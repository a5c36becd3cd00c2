"""Images on a web server (HTTP or HTTPS): one connection pool per process, redirects kept inside the root.

A redirect is followed only when its target lies under the same image root (same scheme, host and
port, path below the root's): a server, or anyone who controls one, cannot send a worker to read
elsewhere. Pools are made per process, after any fork, like the S3 clients.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urljoin

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.locations import RemoteURL, parse_url
from comix_embed.common.inputs.read_errors import InputDenied, InputNotFound, InputUnreadable, Transient, retried

MAX_REDIRECTS = 5
_pools: dict[int, Any] = {}
_lock = threading.Lock()


def pool() -> Any:
    """This process's connection pool, made on first use (after any fork)."""
    import urllib3

    pid = os.getpid()
    with _lock:
        pool = _pools.get(pid)
        if pool is None:
            _pools.clear()
            timeout = urllib3.Timeout(connect=config.REMOTE_TIMEOUT_S, read=config.REMOTE_TIMEOUT_S)
            pool = _pools[pid] = urllib3.PoolManager(
                num_pools=16, maxsize=config.REMOTE_READS_IN_FLIGHT, timeout=timeout, retries=False
            )
    return pool


def get(url: RemoteURL, root: RemoteURL) -> bytes:
    """The body at `url`, following redirects that stay under `root`.

    Raises InputNotFound (404, 410), InputDenied (401, 403, a redirect out of the root),
    InputUnreadable (another answer) or Transient (429, 5xx, a reset connection, a timeout).
    """
    import urllib3

    current = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = pool().request("GET", str(current), redirect=False, preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from None
        status = response.status
        if 300 <= status < 400 and response.headers.get("Location"):
            current = _redirect_target(url, current, response.headers["Location"], root)
            continue
        if status == 200:
            return response.data
        said = f"HTTP {status} {response.reason or ''}".rstrip()
        if status in (404, 410):
            raise InputNotFound(str(url), f"no such file ({said})")
        if status in (401, 403):
            raise InputDenied(str(url), f"access denied ({said})")
        if status == 429 or status >= 500:
            raise Transient(said)
        raise InputUnreadable(str(url), said)
    raise InputUnreadable(str(url), f"more than {MAX_REDIRECTS} redirects")


def _redirect_target(url: RemoteURL, current: RemoteURL, location: str, root: RemoteURL) -> RemoteURL:
    """Where a redirect leads, refused (InputDenied) when it leaves `root`."""
    target = urljoin(str(current), location)
    try:
        parsed = parse_url(target, "redirect")
    except UsageError:
        parsed = None
    if parsed is None or parsed.relative_to(root) is None:
        raise InputDenied(str(url), f"redirected to {target.split('?')[0]}, outside the image root {root}: refused")
    return parsed


def check(root: RemoteURL) -> str | None:
    """Why this process cannot reach `root`'s server, or None: any HTTP answer to the root's URL will do
    (a folder often has no page of its own), only an unreachable server is refused."""
    import urllib3

    def head() -> None:
        try:
            pool().request("HEAD", str(root), redirect=False, preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from None

    try:
        retried(head)
    except Transient as exc:
        return f"server unreachable ({exc.reason})"
    return None
