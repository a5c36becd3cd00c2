"""A page's paths: where its image is (confined to the image roots), and the page id it is called by.

DataSpecs come from other machines (often Windows, `E:\\...`) and are data from elsewhere, so an
image path in one is never trusted: it is mapped onto a local directory or a bucket prefix
(`--path-map`), and must land inside a configured image root, lexically at the producer (which may
not have the images) and again at the worker that reads it, symlinks followed for a local root
(docs/inputs.md, "Image roots and path maps"). A root is a local folder, an `s3://bucket/prefix/`
or an `http(s)://host/prefix/` (common/inputs/locations.py).

Paths are handled as text with `/` separators: a backslash is always a separator (list files and
DataSpecs made on Windows), so the same input gives the same answer on every operating system.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.locations import (
    Escapes,
    RemoteURL,
    is_url,
    parse_root,
    parse_url,
    plain_relative,
    root_text,
)
from comix_embed.common.inputs.reading import read_bytes

PathMaps = Sequence[tuple[str, str]]  # (prefix as written in DataSpecs, local directory or remote prefix)

_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


class PathRefused(Exception):
    """An image path that would read outside every image root; the message says why."""


def is_windows_absolute(text: str) -> bool:
    """True for `E:\\x`, `E:/x` and UNC `\\\\server\\share` paths, on any operating system."""
    return bool(_DRIVE.match(text)) or text.startswith("\\\\")


def _components(text: str) -> list[str]:
    """Path components of `text`, `\\` and `/` alike, empty and `.` parts dropped."""
    return [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]


def parse_path_map(text: str) -> tuple[str, str]:
    """Parse a `--path-map` value `PREFIX=LOCAL_DIR` (or `PREFIX=s3://bucket/prefix/`, `PREFIX=https://...`).

    The split is at the first `=`: Windows prefixes cannot contain one, while a local directory
    occasionally does. The prefix must be absolute (a drive-letter, UNC or POSIX path), since
    only absolute paths are mapped; a relative local directory is taken from the current one.
    """
    prefix, sep, target = text.partition("=")
    prefix, target = prefix.strip(), target.strip()
    if not sep or not prefix or not target:
        raise UsageError(f"Bad --path-map {text!r}: expected PREFIX=LOCAL_DIR, e.g. E:\\comics=/data/comics")
    if not (is_windows_absolute(prefix) or prefix.startswith("/")):
        raise UsageError(f"Bad --path-map {text!r}: the prefix {prefix!r} must be an absolute path (E:\\... or /...)")
    if is_url(target):
        return prefix, str(parse_url(target, "--path-map target").as_prefix())
    return prefix, os.path.abspath(target)


class PathMapper:
    """Path maps compiled once: longest matching prefix wins, whole components only.

    A Windows prefix matches case-insensitively (its file systems are); a POSIX one exactly.
    """

    def __init__(self, path_maps: PathMaps = ()) -> None:
        compiled: list[tuple[list[str], bool, str]] = []
        for prefix, target in path_maps:
            windows = is_windows_absolute(prefix)
            parts = _components(prefix)
            if windows:
                parts = [p.lower() for p in parts]
            compiled.append((parts, windows, target))
        self._maps = sorted(compiled, key=lambda m: len(m[0]), reverse=True)

    def map(self, text: str) -> str | None:
        """The local path (with `/`) for an absolute `text`, or None when no map matches."""
        windows = is_windows_absolute(text)
        parts = _components(text)
        lowered = [p.lower() for p in parts] if windows else parts
        for prefix, prefix_windows, target in self._maps:
            if prefix_windows != windows or lowered[: len(prefix)] != prefix:
                continue
            rest = parts[len(prefix) :]
            if is_url(target):
                return target + "/".join(rest)
            return posixpath.join(target.replace("\\", "/"), *rest) if rest else target
        return None


def _normalise_absolute(text: str) -> str:
    """`/`-separated, `.`/`..` collapsed, one leading slash (POSIX keeps `//x` otherwise)."""
    norm = posixpath.normpath(text.replace("\\", "/"))
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm


def _relative_under(path: str, root: str) -> str | None:
    """`path` relative to `root` (both normalised, `/`) when it lies under it, else None."""
    if os.name == "nt":  # Windows file systems ignore case
        path_cmp, root_cmp = path.lower(), root.lower()
    else:
        path_cmp, root_cmp = path, root
    if path_cmp == root_cmp:
        return ""
    prefix = root_cmp.rstrip("/") + "/"
    return path[len(prefix) :] if path_cmp.startswith(prefix) else None


class ImageResolver:
    """Confines DataSpec image paths to the image roots, in two steps.

    `locate` is lexical (the producer may run where the images are not) and gives a root index
    and a path relative to that root, which is what travels to the worker; `read` runs on the
    worker and checks again (for a local root following symbolic links), so that neither a crafted
    DataSpec nor a crafted task makes a worker read outside its roots. The producer's and the
    workers' roots must be listed in the same order, since tasks carry the index.
    """

    def __init__(self, roots: Sequence[str | Path | RemoteURL], path_maps: PathMaps = ()) -> None:
        if not roots:
            raise UsageError("No image root given: pass at least one --image-root")
        self.roots: list[Path | RemoteURL] = [
            r if isinstance(r, RemoteURL) else parse_root(r, "--image-root") for r in roots
        ]
        self._root_texts = [_normalise_absolute(r.as_posix()) if isinstance(r, Path) else str(r) for r in self.roots]
        self._mapper = PathMapper(path_maps)

    def texts(self) -> list[str]:
        """The roots as a task payload carries them (absolute paths, prefix URLs)."""
        return [root_text(r) for r in self.roots]

    def locate(self, image_path: str, dataspec_path: object | None = None) -> tuple[int, str]:
        """(root index, `/`-separated path relative to that root) for a DataSpec image path.

        Absolute paths (drive-letter or POSIX) go through the path maps, and URLs are taken as they
        are; both must then lie under a root (the first that holds them). Relative paths are under
        root 0 and may not climb out of it. `dataspec_path`, when given, is named in the refusal.
        """
        where = f" (DataSpec {dataspec_path})" if dataspec_path is not None else ""
        text = image_path.strip()
        if not text:
            raise PathRefused(f"image path is empty{where}")
        if is_url(text):
            return self._locate_url(image_path, text, None, where)
        windows = is_windows_absolute(text)
        if windows or text.startswith(("/", "\\")):
            mapped = self._mapper.map(text)
            if mapped is not None and is_url(mapped):
                return self._locate_url(image_path, mapped, mapped, where)
            if mapped is None and windows and os.name != "nt":
                parent = text.replace("/", "\\").rsplit("\\", 1)[0]
                raise PathRefused(
                    f"image path {image_path} is outside every image root (add --path-map {parent}=/local/dir){where}"
                )
            local = _normalise_absolute(mapped if mapped is not None else text)
            for index, root in enumerate(self._root_texts):
                rel = _relative_under(local, root) if isinstance(self.roots[index], Path) else None
                if rel == "":
                    raise PathRefused(f"image path names no file, only the image root: {image_path}{where}")
                if rel is not None:
                    return index, rel
            via = f" (mapped to {local})" if mapped is not None else ""
            roots = ", ".join(self._root_texts)
            raise PathRefused(f"image path {image_path}{via} is outside every image root ({roots}){where}")
        rel = posixpath.normpath(text.replace("\\", "/"))
        if rel == ".." or rel.startswith("../"):
            raise PathRefused(f"image path escapes the image root: {image_path}{where}")
        if rel == ".":
            raise PathRefused(f"image path names no file: {image_path}{where}")
        if isinstance(self.roots[0], RemoteURL):
            try:
                rel = plain_relative(rel)
            except Escapes:
                raise PathRefused(f"image path escapes the image root: {image_path}{where}") from None
        return 0, rel

    def _locate_url(self, image_path: str, text: str, mapped: str | None, where: str) -> tuple[int, str]:
        via = f" (mapped to {mapped})" if mapped is not None else ""
        try:
            url = parse_url(text, "image path")
        except UsageError as exc:
            raise PathRefused(f"{exc}{via}{where}") from None
        for index, root in enumerate(self.roots):
            rel = url.relative_to(root) if isinstance(root, RemoteURL) else None
            if rel == "":
                raise PathRefused(f"image path names no file, only the image root: {image_path}{where}")
            if rel is not None:
                return index, rel
        roots = ", ".join(self._root_texts)
        raise PathRefused(f"image path {image_path}{via} is outside every image root ({roots}){where}")

    @cached_property
    def _real_roots(self) -> list[Path | None]:
        return [Path(os.path.realpath(r)) if isinstance(r, Path) else None for r in self.roots]

    def _root(self, root_index: int, rel: str) -> Path | RemoteURL:
        if not 0 <= root_index < len(self.roots):
            raise PathRefused(
                f"image path {rel} names image root #{root_index}, but this machine has {len(self.roots)} image root(s)"
            )
        return self.roots[root_index]

    def open_path(self, root_index: int, rel: str) -> Path:
        """The real path of an image that `locate` placed under a local root, checked again here.

        Raises PathRefused when the index names no local root here, when `rel` is not a plain
        relative path, or when a symbolic link leads out of the root; FileNotFoundError when it is missing.
        """
        self._root(root_index, rel)
        root = self._real_roots[root_index]
        if root is None:
            raise PathRefused(f"image root #{root_index} is {self.roots[root_index]}, not a folder of this machine")
        norm = posixpath.normpath(rel.replace("\\", "/")) if rel else "."
        if norm in (".", "..") or norm.startswith(("../", "/")) or is_windows_absolute(rel):
            raise PathRefused(f"image path escapes the image root: {rel}")
        real = Path(os.path.realpath(root / norm))
        if real != root and root not in real.parents:
            raise PathRefused(f"image path {rel} resolves outside the image root via a symbolic link: {real}")
        if not real.is_file():
            raise FileNotFoundError(f"image not found: {self._root_texts[root_index]}/{norm}")
        return real

    def location(self, root_index: int, rel: str) -> Path | RemoteURL:
        """Where an image that `locate` placed lies: a checked local path, or its URL below the root."""
        root = self._root(root_index, rel)
        if isinstance(root, Path):
            return self.open_path(root_index, rel)
        try:
            return root.child(rel)
        except Escapes:
            raise PathRefused(f"image path escapes the image root: {rel}") from None

    def read(self, root_index: int, rel: str) -> bytes:
        """The bytes of an image that `locate` placed, wherever its root is, checked again here.

        Raises PathRefused (outside the root), FileNotFoundError (missing; for a remote root an
        InputNotFound naming the URL) or another OSError (an InputUnreadable naming the URL and cause).
        """
        where = self.location(root_index, rel)
        root = self.roots[root_index]
        return read_bytes(where, root if isinstance(root, RemoteURL) else None)


# Folder names that hold a book's pages rather than name the book (e.g. `<Book>/JPG4CBZ/0001.json`).
_CONTAINER_DIRS = frozenset(
    {"jpg4cbz", "working_files", "images", "image", "imgs", "pages", "dataspecs", "dataspec", "json"}
)
_VOLUME = re.compile(r"\bv(?:ol(?:ume)?)?\.?\s*_?(\d+)\b", re.IGNORECASE)
_YEAR_RANGE = re.compile(r"\(\s*(\d{4})\s*-\s*(\d{4})\s*\)")
_YEAR = re.compile(r"\b((?:19|20)\d{2})\b")
_ISSUE = (
    re.compile(r"#\s*(\d+)"),
    re.compile(r"\bissue\s*(\d+)\b", re.IGNORECASE),
    re.compile(r"(?<![\d.])(\d{3})(?![\d.])"),
)
_AUTHOR_UNKNOWN = re.compile(r"\s+-\s+unknown\s*$", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
_DRIVE_ONLY = re.compile(r"^[A-Za-z]:$")


def page_metadata(page_id: str) -> dict[str, str]:
    """Human-readable `source`, `series`, `volume`, `issue`, `page_num` from a page id (a path).

    Rules (the original read the series from the file's parent, which for `<Book>/JPG4CBZ/...`
    trees gave "jpg4cbz" for every page):
    - book folder: the nearest parent that is not a container folder (`JPG4CBZ`, `images`, ...);
    - source: the first folder above the book folder that is not a container, else "unknown";
    - volume: `v01`/`vol 2`/`volume 3` -> "v01"/"v2"/"v3", else `(2001-2003)` -> "2001-2003",
      else a year `2001`, else "unknown";
    - issue: `#12`, or the word issue and a number -> "12", else a standalone 3-digit number "012", else "unknown";
    - series: the book folder without those tokens, without a trailing " - Unknown" (calibre's
      placeholder author; real author suffixes are kept), spaces collapsed; "unknown" if none;
    - page_num: the last run of digits of the file name, as written ("0123"), else "unknown".
    Never raises: odd paths give "unknown" fields.
    """
    parts = [p for p in _components(page_id) if not _DRIVE_ONLY.match(p)]
    stem = parts[-1].rsplit(".", 1)[0] if parts else ""
    dirs = parts[:-1]
    book_index = next((i for i in range(len(dirs) - 1, -1, -1) if dirs[i].lower() not in _CONTAINER_DIRS), None)
    book = dirs[book_index] if book_index is not None else ""
    above = dirs[:book_index] if book_index is not None else []
    source = next((d for d in above if d.lower() not in _CONTAINER_DIRS), "unknown")

    rest = _AUTHOR_UNKNOWN.sub("", book)
    volume = "unknown"
    for pattern in (_VOLUME, _YEAR_RANGE, _YEAR):
        match = pattern.search(rest)
        if match:
            volume = ("v" + match.group(1)) if pattern is _VOLUME else "-".join(match.groups())
            rest = rest[: match.start()] + " " + rest[match.end() :]
            break
    rest = _YEAR_RANGE.sub(" ", rest)
    issue = "unknown"
    for pattern in _ISSUE:
        match = pattern.search(rest)
        if match:
            issue = match.group(1)
            rest = rest[: match.start()] + " " + rest[match.end() :]
            break
    series = re.sub(r"\(\s*\)", " ", rest)
    series = re.sub(r"\s+", " ", series).strip(" -_.,")
    digits = _DIGITS.findall(stem)
    return {
        "source": source,
        "series": series or (book.strip() or "unknown"),
        "volume": volume,
        "issue": issue,
        "page_num": digits[-1] if digits else "unknown",
    }
