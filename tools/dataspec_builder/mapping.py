"""The mapping CSV that joins image, detections and VLM JSON page by page, and its paths.

Spreadsheets write CSVs in several encodings, with header names in any case and ids as `12.0`;
this module reads them as the users' files are, and says where a path in them is on this machine.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.locations import Escapes, RemoteURL, is_url, parse_url
from comix_embed.common.inputs.paths import is_windows_absolute
from comix_embed.common.inputs.read_errors import InputNotFound, InputUnreadable
from comix_embed.common.inputs.reading import read_bytes
from comix_embed.common.inputs.user_text import decode_user_text
from comix_embed.tools.dataspec_builder.coco import id_key

ID_COLUMNS = ("coco_image_id", "predictions_json_id")


@dataclass
class MappingRow:
    """One page of the mapping CSV, its cells stripped ("" when a cell is empty or absent)."""

    row: int  # the CSV line number (header = 1), as a spreadsheet numbers its rows
    image_path: str
    image_id: str
    vlm_path: str
    rel_path: str


def read_mapping(path: Path | RemoteURL) -> list[MappingRow]:
    """The mapping's data rows; raise UsageError naming the file for a missing column or no rows."""
    try:
        raw = read_bytes(path)
    except InputNotFound:
        raise UsageError(f"Mapping CSV not found: {path}") from None
    except InputUnreadable as exc:
        raise UsageError(f"Cannot read mapping CSV {path}: {exc.reason}") from None
    reader = csv.reader(io.StringIO(decode_user_text(raw), newline=""))
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        columns = _columns(header, path)
        rows = [_mapping_row(cells, columns, reader.line_num) for cells in reader if any(c.strip() for c in cells)]
    except csv.Error as exc:
        raise UsageError(f"Mapping CSV {path}, line {reader.line_num}: {exc}") from None
    if not rows:
        raise UsageError(f"Mapping CSV {path} has no rows")
    return rows


def _columns(header: list[str], path: Path | RemoteURL) -> dict[str, int]:
    """Column index by role; the first present id column is preferred per row, in ID_COLUMNS order."""
    index = {name: i for i, name in reversed(list(enumerate(header)))}
    for name in ("image_path", "vlm_json_path"):
        if name not in index:
            raise UsageError(f"Mapping CSV {path}: missing column '{name}' (has: {', '.join(header) or 'no header'})")
    if not any(name in index for name in ID_COLUMNS):
        raise UsageError(f"Mapping CSV {path}: missing column '{ID_COLUMNS[0]}' (or '{ID_COLUMNS[1]}')")
    wanted = ("image_path", "vlm_json_path", "image_rel_path", *ID_COLUMNS)
    return {name: index[name] for name in wanted if name in index}


def _mapping_row(cells: list[str], columns: dict[str, int], line: int) -> MappingRow:
    def cell(name: str) -> str:
        i = columns.get(name)
        return cells[i].strip() if i is not None and i < len(cells) else ""

    image_id = next((cell(name) for name in ID_COLUMNS if cell(name)), "")
    return MappingRow(
        line, cell("image_path"), id_key(image_id) if image_id else "", cell("vlm_json_path"), cell("image_rel_path")
    )


def derived_rel_paths(image_paths: list[str]) -> list[str]:
    """Each image's path below the common folder of all of them, `/`-separated.

    Used when the mapping has no `image_rel_path`, so that the output keeps the image tree.
    Paths on different drives share no folder; those keep their whole path less the drive.
    """
    parts = [_parts(p) for p in image_paths]
    common = os.path.commonprefix([p[:-1] for p in parts if p]) if any(parts) else []
    rels = []
    for p in parts:
        tail = p[len(common) :]
        while tail and (tail[0] == "/" or re.fullmatch(r"[A-Za-z]:", tail[0])):
            tail = tail[1:]
        rels.append("/".join(tail))
    return rels


def _parts(path: str) -> list[str]:
    """Components of a path written with `/` or `\\`, a leading `/` kept as its own component."""
    if not path:
        return []
    text = posixpath.normpath(path.replace("\\", "/"))
    return (["/"] if text.startswith("/") else []) + [p for p in text.split("/") if p not in ("", ".")]


def input_location(text: str, base: Path | RemoteURL) -> Path | RemoteURL | None:
    """Where a mapping path is: a URL as written, a relative path below `base` (the mapping's own
    folder or prefix), a local path; None for a Windows absolute path on POSIX."""
    if is_url(text):
        try:
            return parse_url(text, "mapping path")
        except UsageError:
            return None
    if isinstance(base, RemoteURL):
        if is_windows_absolute(text) or text.replace("\\", "/").startswith("/"):
            return None
        try:
            return base.child(text)
        except Escapes:
            return None
    if os.name != "nt":
        if is_windows_absolute(text):
            return None
        text = text.replace("\\", "/")
    path = Path(text)
    return path if path.is_absolute() else base / path
