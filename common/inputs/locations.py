"""Where an input lies: a local path, an object in an S3-compatible store, or an HTTP(S) URL.

Workers run on rented machines that do not mount the users' disks, so a list file, a DataSpec or
an image may be named by `s3://bucket/key` or `https://host/path` as well as by a local path
(docs/inputs.md, "Inputs on object storage and HTTP(S)"). This module only parses and confines,
lexically: nothing here opens a connection (`common/inputs/reading.py` does).

A remote *root* (an image root, a DataSpec root) is a bucket and a key prefix, or a URL prefix.
An object lies under it when it has the same scheme and bucket or host, and its key, once `.` and
`..` are applied (and, for HTTP, percent-escapes decoded), starts with the root's components.
Keys are compared as text, component by component: `%2e%2e` in an S3 key is refused like `..`,
since a proxy or a server in front of the bucket may decode it.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from comix_embed.common.errors import UsageError

SCHEMES = ("s3", "http", "https")
_URL = re.compile(r"^(s3|https?)://", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Escapes(ValueError):
    """A key or path that climbs out of where it must stay (`..`, `%2e%2e`)."""


def is_url(text: str) -> bool:
    """True for `s3://...`, `http://...` and `https://...` (any case), the remote forms."""
    return bool(_URL.match(text.strip()))


@dataclass(frozen=True)
class RemoteURL:
    """An object (or a prefix) in a bucket or on a web server.

    `host` is the bucket for S3 and `host[:port]` (lower case, default port dropped) for HTTP;
    `key` is the object's key or the URL's path, decoded, without a leading `/`; a prefix ends
    with `/` (or is empty: the whole bucket or site).
    """

    scheme: str
    host: str
    key: str

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.host}/{self.key}"
        return f"{self.scheme}://{self.host}/{quote(self.key, safe='/')}"

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    def as_prefix(self) -> RemoteURL:
        """This URL as a root: its key ending with `/` (a prefix, not an object)."""
        key = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return RemoteURL(self.scheme, self.host, key)

    def child(self, rel: str) -> RemoteURL:
        """The object `rel` (a plain relative key, `/`-separated) below this prefix.

        Raises Escapes when `rel` is absolute or climbs out with `..` or `%2e%2e`.
        """
        return RemoteURL(self.scheme, self.host, self.as_prefix().key + plain_relative(rel))

    def relative_to(self, root: RemoteURL) -> str | None:
        """This object's key below `root` (a prefix), or None when it lies elsewhere."""
        prefix = root.as_prefix()
        if (self.scheme, self.host) != (prefix.scheme, prefix.host) or not self.key.startswith(prefix.key):
            return None
        return self.key[len(prefix.key) :]

    def parent(self) -> RemoteURL:
        """The prefix this object lies in (a list file's folder, for its relative lines)."""
        return RemoteURL(self.scheme, self.host, self.key.rsplit("/", 1)[0] + "/" if "/" in self.key else "")


def plain_relative(rel: str) -> str:
    """`rel` as a plain relative key: `\\` read as `/`, empty and `.` parts dropped.

    Raises Escapes for an absolute path or a part that is `..` once percent-escapes are decoded.
    """
    text = rel.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or is_url(text):
        raise Escapes(f"{rel} is not a relative path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    for part in parts:
        if unquote(part) in ("..", ".") or "/" in unquote(part) or "\\" in unquote(part):
            raise Escapes(f"{rel} climbs out of its root")
    return "/".join(parts)


def parse_url(text: str, what: str = "URL") -> RemoteURL:
    """An `s3://` or `http(s)://` URL, normalised (`.` and `..` applied within it).

    Raises UsageError, naming `what`, for a URL with no bucket or host, credentials in it, a query
    or fragment (a signed URL belongs in no command line), or `..` that climbs above its top.
    """
    text = text.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UsageError(f"{what} {text!r}: expected s3://, http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"{what} {scheme}://...@{parts.hostname}: credentials do not go in a URL (they would show in "
            "process lists and logs); see the README, 'Pages on object storage'"
        )
    if parts.query or parts.fragment:
        raise UsageError(f"{what} {scheme}://{parts.netloc}{parts.path}: a query or fragment is not allowed here")
    if scheme == "s3":
        host = parts.netloc
        if not host:
            raise UsageError(f"{what} {text!r}: no bucket")
        path = parts.path
    else:
        if not parts.hostname:
            raise UsageError(f"{what} {text!r}: no host")
        host = parts.hostname.lower()
        if parts.port is not None and parts.port != _DEFAULT_PORTS[scheme]:
            host = f"{host}:{parts.port}"
        path = unquote(parts.path)
    trailing = path.endswith("/")
    norm = posixpath.normpath("/" + path) if path.strip("/") else "/"
    if _climbs(path):
        raise UsageError(f"{what} {text!r}: `..` climbs above the top of the {'bucket' if scheme == 's3' else 'site'}")
    if scheme == "s3" and any(unquote(p) in (".", "..") and p not in (".", "..") for p in path.split("/")):
        raise UsageError(f"{what} {text!r}: `%2e%2e` is not allowed in a key")
    key = norm.lstrip("/")
    if key and trailing:
        key += "/"
    return RemoteURL(scheme, host, key)


def _climbs(path: str) -> bool:
    depth = 0
    for part in path.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def parse_root(text: str | Path, what: str = "root") -> Path | RemoteURL:
    """A root as given on a command line: a remote prefix, or a local folder made absolute."""
    raw = str(text)
    if is_url(raw):
        return parse_url(raw, what).as_prefix()
    return Path(raw).expanduser().absolute()


def parse_location(text: str | Path, what: str = "file") -> Path | RemoteURL:
    """A file as given on a command line: a remote object, or a local path (kept as written)."""
    raw = str(text)
    return parse_url(raw, what) if is_url(raw) else Path(raw)


def root_text(root: Path | RemoteURL) -> str:
    """A root as it travels in a task payload: an absolute path, or the prefix URL."""
    return str(root) if isinstance(root, RemoteURL) else Path(root).resolve().as_posix()
