"""Objects in S3-compatible storage (AWS S3, MinIO, Ceph): one client per process, answers named by cause.

boto3 and its standard credential chain (environment variables, shared config and credentials
files with profiles, container and instance roles); the endpoint of an S3-compatible server comes
from `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, which `--endpoint-url` sets. boto3 clients are not
fork-safe, so each process makes its own on first use (a Celery pool process after the fork, never
the parent). The client does not retry: common/inputs/reading.py retries transient failures, the
same way for S3 and HTTP(S). The README says why boto3 and not obstore or s3fs (measured).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from comix_embed.common import config
from comix_embed.common.inputs.locations import RemoteURL
from comix_embed.common.inputs.read_errors import InputDenied, InputNotFound, InputUnreadable, Transient, retried

T = TypeVar("T")
_clients: dict[tuple[int, str, bool], Any] = {}
_lock = threading.Lock()

MISSING = ("NoSuchKey", "NotFound", "404")
CREDENTIALS_REFUSED = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
)
THROTTLED = ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestTimeout", "InternalError")
# The probe a worker reads at start: under its root, never there; its answer says whether reading works.
PROBE_NAME = ".comix-embed-access-check"


def endpoint() -> str:
    """The S3 endpoint set in the environment ("" for AWS itself)."""
    return next((os.environ[v] for v in config.S3_ENDPOINT_VARIABLES if os.environ.get(v)), "")


def client() -> Any:
    """This process's S3 client, made on first use (after any fork)."""
    key = (os.getpid(), endpoint(), config.S3_ANONYMOUS.get())
    with _lock:
        made = _clients.get(key)
        if made is None:
            if any(pid != key[0] for pid, _, _ in _clients):
                _clients.clear()  # inherited across a fork: never used by this process
            made = _clients[key] = _make_client(key[1], key[2])
    return made


def _make_client(endpoint_url: str, anonymous: bool) -> Any:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    settings: dict[str, Any] = {
        "max_pool_connections": config.REMOTE_READS_IN_FLIGHT,
        "retries": {"total_max_attempts": 1},  # reading.py retries, with its own backoff
        "connect_timeout": config.REMOTE_TIMEOUT_S,
        "read_timeout": config.REMOTE_TIMEOUT_S,
    }
    if endpoint_url:  # S3-compatible servers are addressed by path: no per-bucket host names
        settings["s3"] = {"addressing_style": "path"}
    if anonymous:
        settings["signature_version"] = UNSIGNED
    return boto3.session.Session().client("s3", config=Config(**settings))


def get(url: RemoteURL) -> bytes:
    """The whole object; raises InputNotFound, InputDenied, InputUnreadable or Transient."""
    return answered(str(url), lambda: client().get_object(Bucket=url.host, Key=url.key)["Body"].read())


def answered(where: str, request: Callable[[], T]) -> T:
    """`request()`'s answer; its failure as InputNotFound, InputDenied, InputUnreadable (naming
    `where`) or Transient, whatever the call (reads here, a snapshot's writes in tools/snapshot/)."""
    from botocore.exceptions import ClientError

    try:
        return request()
    except ClientError as exc:
        raise classify(exc, where) from None
    except Exception as exc:
        raise _not_answered(exc, where) from None


def classify(exc: Any, where: str) -> Exception:
    """The exception for an S3 error answer (a botocore ClientError)."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    said = f"{status} {code}".strip()
    if code == "NoSuchBucket":
        return InputNotFound(where, f"no such bucket ({said})")
    if code in MISSING:
        return InputNotFound(where, f"no such object ({said})")
    if code in CREDENTIALS_REFUSED:
        return InputDenied(where, f"credentials refused ({said}): check AWS_ACCESS_KEY_ID / AWS_PROFILE")
    if code == "AccessDenied" or status == 403:
        return InputDenied(where, f"access denied ({said})")
    if code in THROTTLED or status == 429 or status >= 500:
        return Transient(f"{said}: {error.get('Message', '')}".rstrip(": "))
    return InputUnreadable(where, f"{said}: {error.get('Message', '')}".rstrip(": "))


def _not_answered(exc: Exception, where: str) -> Exception:
    """The exception for a request the server did not answer (or a body cut short)."""
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )
    from botocore.exceptions import (
        HTTPClientError,
        IncompleteReadError,
        NoCredentialsError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, NoCredentialsError):
        return InputDenied(
            where,
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or pass --anonymous",
        )
    if isinstance(exc, BotoConnectionError | HTTPClientError | ResponseStreamingError | IncompleteReadError):
        return Transient(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, Urllib3Error | ConnectionError | TimeoutError):
        return Transient(f"{type(exc).__name__}: {exc}")
    return InputUnreadable(where, f"{type(exc).__name__}: {exc}")


def check(root: RemoteURL) -> str | None:
    """Why this process cannot read under `root`, or None when it can (or cannot tell).

    Reads one object that is never there. Its answer tells credentials refused, no such bucket or
    an unreachable endpoint apart from "no such key". A 403 is ambiguous: S3 answers it for a
    missing key to a reader without list permission, so then the bucket itself is asked
    (HeadBucket); if that is allowed, the 403 was a real refusal. Reading never requires listing.
    """
    probe = root.child(PROBE_NAME)
    try:
        retried(lambda: get(probe))  # the whole object: it is never there, or a few bytes at most
        return None
    except (InputUnreadable, Transient) as exc:
        answer: InputUnreadable | Transient = exc
    if isinstance(answer, InputNotFound) and "no such object" in answer.reason:
        return None
    if isinstance(answer, InputDenied) and answer.reason.startswith("access denied"):
        try:
            client().head_bucket(Bucket=root.host)
        except Exception:
            return None  # no list permission either: reading may still be allowed, pages will tell
        return answer.reason
    if isinstance(answer, Transient):
        host = endpoint() or "AWS S3"
        return f"endpoint {host} unreachable or failing ({answer.reason})"
    return answer.reason
