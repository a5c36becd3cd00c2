"""Reading an input's bytes wherever it lies, local disk, S3-compatible storage or HTTP(S), with one policy.

The one door through which list files, DataSpecs, images and query images are read, so that every
command takes the remote forms alike and every failure reads alike: an `InputUnreadable` naming the
path or URL and the cause (common/inputs/read_errors.py). Transient failures (throttling, 5xx,
reset connections, timeouts) are tried again, backing off, before the read fails; a read that
still fails fails its page alone. `read_many` keeps a bounded number of reads in flight.

The command-line options for remote inputs (`--endpoint-url`, `--anonymous`) are declared here and
passed on through the environment, never on a command line, where the children of `run` would show
them to every user of the machine.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.inputs import http, s3
from comix_embed.common.inputs.locations import RemoteURL, parse_url
from comix_embed.common.inputs.read_errors import InputNotFound, InputUnreadable, Transient, retried

T = TypeVar("T")
R = TypeVar("R")
Location = Path | RemoteURL


def read_bytes(location: Location, root: RemoteURL | None = None) -> bytes:
    """The whole file or object. `root` confines an HTTP redirect (default: the URL's own folder).

    Raises InputNotFound, InputDenied or InputUnreadable, each naming `location`.
    """
    if isinstance(location, RemoteURL):
        return _retried(location, root or location.parent())
    try:
        with open(location, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise InputNotFound(str(location), exc.strerror or "not found") from None
    except OSError as exc:
        raise InputUnreadable(str(location), exc.strerror or str(exc)) from None


def _retried(url: RemoteURL, root: RemoteURL) -> bytes:
    try:
        return retried(lambda: s3.get(url) if url.is_s3 else http.get(url, root))
    except Transient as exc:
        raise InputUnreadable(str(url), exc.reason) from None


def read_many(items: Iterable[T], read: Callable[[T], R], in_flight: int | None = None) -> Iterator[R]:
    """`read(item)` for each item, in order, with at most `in_flight` reads running at once and at
    most twice that many results waiting (a list of 805,000 DataSpecs is never all in memory at once)."""
    width = in_flight or config.REMOTE_READS_IN_FLIGHT
    with ThreadPoolExecutor(width, thread_name_prefix="read") as pool:
        pending = []
        for item in items:
            pending.append(pool.submit(read, item))
            if len(pending) >= 2 * width:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def check_root(root: Location, what: str = "--image-root") -> None:
    """Fail now, naming the root and the reason, if this process cannot read under `root`:
    no credentials, credentials refused, access denied, no such bucket, endpoint unreachable."""
    if isinstance(root, RemoteURL):
        reason = s3.check(root) if root.is_s3 else http.check(root)
        if reason:
            raise UsageError(f"{what} {root}: {reason}")
    elif not Path(root).is_dir():
        raise UsageError(f"{what} {root}: no such directory")


def prepare_clients(roots: Iterable[Location]) -> None:
    """Make this process's clients for its remote roots now (importing boto3 and making a client
    cost about half a second of CPU), so that its first batch does not pay for them."""
    for root in roots:
        if isinstance(root, RemoteURL) and root.is_s3:
            s3.client()
        elif isinstance(root, RemoteURL):
            http.pool()


def check_remote_roots(roots: Iterable[Location], what: str = "--image-root") -> None:
    """`check_root` for each remote root (local folders are checked where they are read)."""
    for root in roots:
        if isinstance(root, RemoteURL):
            check_root(root, what)


def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    """`--endpoint-url` and `--anonymous`, for every command that reads inputs."""
    parser.add_argument(
        "--endpoint-url",
        help="S3-compatible server for s3:// inputs, e.g. http://minio:9000 (default $AWS_ENDPOINT_URL_S3, "
        "else $AWS_ENDPOINT_URL, else AWS)",
    )
    parser.add_argument(
        "--anonymous", action="store_true", help="read s3:// inputs unsigned (public buckets; no credentials)"
    )


def apply_remote_arguments(args: argparse.Namespace) -> None:
    """Put the remote options in this process's environment, which its children inherit."""
    url = getattr(args, "endpoint_url", None)
    if url:
        parsed = parse_url(url, "--endpoint-url")
        if parsed.is_s3:
            raise UsageError(f"--endpoint-url {url}: expected http:// or https://")
        os.environ[config.S3_ENDPOINT_VARIABLES[0]] = url.rstrip("/")
    if getattr(args, "anonymous", False):
        os.environ[config.S3_ANONYMOUS.name] = "1"
