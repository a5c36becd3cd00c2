"""Reading the list file: one DataSpec path per line (docs/inputs.md, "The list file").

Lists are made on Windows as often as not and hold up to hundreds of thousands of lines, so this
accepts BOMs, CRLF, backslashes and drive letters, and costs one `stat` per line. Nothing is
dropped silently: a missing DataSpec stays an entry with its error (the producer records it as a
failed page), and a duplicate line is reported with the line it repeats.

A list, and the DataSpecs it names, may lie on object storage or a web server: `--list
s3://bucket/lists/x.txt`, lines that are `s3://` URLs, or keys relative to the list's own prefix
or to `--dataspec-root s3://bucket/dataspecs/`. Remote lines are not checked one by one (a
request each): a missing DataSpec is found, and named, when the producer reads it.

Skipped lines: blank ones, and those whose first non-blank character is `#` (comments).
A line's surrounding whitespace and one pair of surrounding double quotes (as Windows'
"Copy as path" writes) are removed before it is read as a path.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.locations import Escapes, RemoteURL, is_url, parse_location, parse_root, parse_url
from comix_embed.common.inputs.paths import PathMapper, PathMaps, is_windows_absolute
from comix_embed.common.inputs.read_errors import InputNotFound, InputUnreadable
from comix_embed.common.inputs.reading import Location, check_root, read_bytes
from comix_embed.common.inputs.user_text import decode_user_text


@dataclass
class ListEntry:
    """One DataSpec line: where it is, its page id, and why it cannot be read ("" if it can)."""

    line_no: int  # 1-based
    raw: str  # the line exactly as written, without its newline (and BOM on line 1)
    path: Location | None  # None only for a Windows path that no path map translates, on POSIX
    page_id: str
    error: str = ""


@dataclass
class Duplicate:
    """A line naming a DataSpec an earlier line already named; it is dropped."""

    line_no: int
    first_line_no: int
    raw: str

    @property
    def message(self) -> str:
        return f"Duplicate DataSpec at list line {self.line_no} (same as line {self.first_line_no}): {self.raw}"


@dataclass
class ListReport:
    """The entries of a list in line order, first occurrences only, and what was set aside."""

    list_path: Location
    sha256: str = ""  # of the list's bytes: what names the list in its job
    entries: list[ListEntry] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    skipped: int = 0  # blank and comment lines

    @property
    def missing(self) -> int:
        """Entries whose DataSpec cannot be found (they stay entries: failed pages)."""
        return sum(1 for e in self.entries if e.error)

    def problems(self) -> list[str]:
        """One message per missing DataSpec and per duplicate line, in line order."""
        found = [(e.line_no, e.error) for e in self.entries if e.error]
        found += [(d.line_no, d.message) for d in self.duplicates]
        return [message for _, message in sorted(found)]

    def summary(self) -> str:
        return (
            f"{len(self.entries)} pages from {self.list_path}: {self.missing} DataSpec(s) not found, "
            f"{len(self.duplicates)} duplicate line(s) dropped, {self.skipped} blank/comment line(s) skipped"
        )


def read_list(list_path: str | Path, dataspec_root: str | Path | None = None, path_maps: PathMaps = ()) -> ListReport:
    """Read a list file into entries; raise UsageError if it is missing or names no DataSpec.

    Relative lines resolve against `dataspec_root` when given; else, for a list on object
    storage, against its own prefix; else against the current directory, then the list file's
    directory (the first where the file exists). Absolute lines (drive-letter or POSIX) go
    through `path_maps` first, which may map them onto a bucket.
    """
    where = parse_location(list_path, "--list")
    try:
        data = read_bytes(where)
    except InputNotFound as exc:
        raise UsageError(
            f"List file not found: {exc.where}" + (f" ({exc.reason})" if is_url(exc.where) else "")
        ) from None
    except InputUnreadable as exc:
        raise UsageError(f"Cannot read list file {exc.where}: {exc.reason}") from None
    root = parse_root(dataspec_root, "--dataspec-root") if dataspec_root is not None else None
    if isinstance(root, Path) and not root.is_dir():
        raise UsageError(f"DataSpec root not found: {dataspec_root}")
    if isinstance(root, RemoteURL):
        check_root(root, "--dataspec-root")
    bases: list[Location]
    if root is not None:
        bases = [root]
    elif isinstance(where, RemoteURL):
        bases = [where.parent()]
    else:
        bases = [Path.cwd(), Path(os.path.abspath(where.parent))]
    resolver = _LineResolver(bases, root, PathMapper(path_maps))

    report = ListReport(list_path=where, sha256=hashlib.sha256(data).hexdigest())
    first_line: dict[str, int] = {}
    for line_no, raw in enumerate(decode_user_text(data).split("\n"), start=1):
        raw = raw.removesuffix("\r")
        text = _line_text(raw)
        if text is None:
            report.skipped += 1
            continue
        entry = resolver.entry(line_no, raw, text)
        key = str(entry.path) if entry.path is not None else entry.page_id
        if key in first_line:
            report.duplicates.append(Duplicate(line_no, first_line[key], raw))
            continue
        first_line[key] = line_no
        report.entries.append(entry)
    if not report.entries:
        raise UsageError(f"No pages to process: {where} has no DataSpec lines")
    return report


def entries_of_lines(
    lines: Iterable[str], dataspec_root: str | Path | None = None, path_maps: PathMaps = ()
) -> Iterator[ListEntry | None]:
    """The entry `read_list` would make of each of these list lines (None for a blank or comment
    line), with the same `--dataspec-root` and `--path-map`, relative lines taken from the current
    folder: the pages of a store imported from another tool (its lines kept in its rows), named
    and found as `run` names and finds them. One at a time: a million lines need not be held."""
    root = parse_root(dataspec_root, "--dataspec-root") if dataspec_root is not None else None
    resolver = _LineResolver([root] if root is not None else [Path.cwd()], root, PathMapper(path_maps))
    for line_no, raw in enumerate(lines, start=1):
        text = _line_text(raw)
        yield None if text is None else resolver.entry(line_no, raw, text)


def _line_text(raw: str) -> str | None:
    """A list line's path: surrounding blanks and one pair of double quotes removed; None for a
    blank line or a comment."""
    text = raw.strip()
    if not text or text.startswith("#"):
        return None
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


class _LineResolver:
    """Turns one line's text into an entry; holds what is the same for every line."""

    def __init__(self, bases: list[Location], root: Location | None, mapper: PathMapper) -> None:
        self.bases = bases
        self.root = root
        self.root_text = root.as_posix().rstrip("/") + "/" if isinstance(root, Path) else None
        self.mapper = mapper

    def entry(self, line_no: int, raw: str, text: str) -> ListEntry:
        if is_url(text):
            return self._url(line_no, raw, text, text)
        windows = is_windows_absolute(text)
        if windows or text.startswith(("/", "\\")):
            return self._absolute(line_no, raw, text, windows)
        rel = posixpath.normpath(text.replace("\\", "/"))
        remote = self.bases[0]
        if isinstance(remote, RemoteURL):
            try:
                return ListEntry(line_no, raw, remote.child(rel), rel)
            except Escapes:
                return ListEntry(line_no, raw, None, rel, f"DataSpec path climbs out of {remote} (list line {line_no})")
        candidates = [os.path.normpath(os.path.join(str(base), rel)) for base in self.bases]
        found = next((c for c in candidates if _is_file(c)), None)
        if found is not None:
            return ListEntry(line_no, raw, Path(found), rel)
        return ListEntry(line_no, raw, Path(candidates[0]), rel, _not_found(candidates[0], line_no))

    def _url(self, line_no: int, raw: str, text: str, page_id: str) -> ListEntry:
        """A DataSpec on object storage or a web server: its key below a remote --dataspec-root is its page id."""
        try:
            url = parse_url(text, "DataSpec")
        except UsageError as exc:
            return ListEntry(line_no, raw, None, page_id, f"{exc} (list line {line_no})")
        below = url.relative_to(self.root) if isinstance(self.root, RemoteURL) else None
        return ListEntry(line_no, raw, url, below or page_id)

    def _absolute(self, line_no: int, raw: str, text: str, windows: bool) -> ListEntry:
        norm = posixpath.normpath(text.replace("\\", "/"))
        if windows and norm[1] == ":":
            norm = norm[0].upper() + norm[1:]
        mapped = self.mapper.map(text)
        if mapped is not None and is_url(mapped):
            return self._url(line_no, raw, mapped, norm)
        if mapped is None and windows and os.name != "nt":
            hint = "; no --path-map matches this Windows path"
            return ListEntry(line_no, raw, None, norm, _not_found(text, line_no, hint))
        path = Path(posixpath.normpath(mapped if mapped is not None else norm))
        page_id = norm
        if self.root_text is not None and path.as_posix().startswith(self.root_text):
            page_id = path.as_posix()[len(self.root_text) :]
        if _is_file(path):
            return ListEntry(line_no, raw, path, page_id)
        return ListEntry(line_no, raw, path, page_id, _not_found(path, line_no))


def _is_file(path: Path | str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _not_found(path: Path | str, line_no: int, hint: str = "") -> str:
    return f"DataSpec not found: {path} (list line {line_no}{hint})"
