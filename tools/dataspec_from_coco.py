"""`comix-embed dataspec`: DataSpecs and their list file from panel detections and VLM text.

This is how users make DataSpecs (spec/dataspec.md, "Making DataSpecs from detections"; their own
writer is described in research/comic-analysis.md §1.2 A, and this command writes the same files):
a COCO predictions file gives each page's panel boxes, a VLM JSON per page gives the panels' text,
and a mapping CSV joins them page by page.

Inputs
- `--coco`: `{"images": [...], "annotations": [...]}`, or a bare list of annotations (the
  detectron-style predictions list). Only `category_id` 1 (panel) with `score >= --min-score`
  counts; an annotation without a score counts as 1.0 (ground truth has none). An image listed
  under `images` with no panel has zero boxes; a bare list knows only the images it has boxes for.
- `--mapping`: a CSV with `image_path`, `coco_image_id` (or `predictions_json_id`),
  `vlm_json_path` and optionally `image_rel_path`; header names are matched case-insensitively,
  other columns are ignored. Relative paths are relative to the CSV's folder.
- VLM JSON: an object with a `panels` (or `VLM_panels`, `vlm_panels`) list in reading order;
  `panel_number` is not used, the list order is (as the users' writer did).

Each page's boxes are sorted by top edge, then left edge, and the i-th box gets the i-th VLM
panel's text. `--subset perfect` keeps a page only when both counts are equal; `--subset all`
writes min(boxes, VLM panels) panels and lists the pages whose counts differ in the report.

Output: `OUT/<image_rel_path with .json>` per kept page (the image folder tree is kept; without
an `image_rel_path` column the path below the images' common folder is used), the list file
(default `<OUT>_<subset>_list.txt` beside OUT; lines relative to the list's folder when below
it, else absolute), and `OUT/report.json`. The list always holds exactly this run's pages, in
mapping order; older DataSpecs already in OUT are left alone but not listed.

A dropped page has the first of these reasons, in this order:
- `bad_rel_path`: its output path would leave OUT (absolute or `..`) or be `report.json`;
- `image_missing`: the image is not there (only checked for paths this machine can see; a
  Windows path on POSIX is counted under `images_not_checked` and not dropped);
- `no_coco_entry`: the id is empty or not in the predictions;
- `vlm_missing`, `vlm_unreadable`: the VLM JSON is absent (a Windows path on POSIX counts as
  absent), or is not UTF-8 JSON with a panel list of objects;
- `no_panels`: no box reaches the score, or the VLM has no panel (a page without panels embeds
  nothing, so it is dropped in both subsets; the users' writer wrote such pages empty when both
  counts were 0);
- `count_mismatch` (perfect subset only): N detected panels, M VLM panels;
- `duplicate_output`: an earlier kept row already wrote that DataSpec (e.g. `1.png`, `1.jpg`).
`boxes_below_min_score` counts panel boxes under the score on pages that got as far as the
panel comparison (their VLM JSON was read).

Exit status: 0 when at least one DataSpec was written; 3 when none was (the report says why and
the list file is empty); 2 when the CSV or the predictions file cannot be read, a required
column is missing, the CSV has no rows, or an option is invalid.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from comix_embed.common.config import TEXT_KEYS
from comix_embed.common.dataspec import panel_text as read_panel_text
from comix_embed.common.errors import UsageError
from comix_embed.common.paths import is_windows_absolute

PANEL_CATEGORY = 1
VLM_PANEL_KEYS = ("panels", "VLM_panels", "vlm_panels")
ID_COLUMNS = ("coco_image_id", "predictions_json_id")
REPORT_NAME = "report.json"
PRINT_LIMIT = 20
SUBSETS = ("perfect", "all")
REASONS = (
    "bad_rel_path",
    "image_missing",
    "no_coco_entry",
    "vlm_missing",
    "vlm_unreadable",
    "no_panels",
    "count_mismatch",
    "duplicate_output",
)
_INTEGRAL = re.compile(r"^-?\d+\.0*$")

Box = list[float]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coco", required=True, type=Path, help="COCO predictions JSON (or a bare list of annotations)"
    )
    parser.add_argument(
        "--mapping",
        required=True,
        type=Path,
        help="CSV: image_path, coco_image_id|predictions_json_id, vlm_json_path[, image_rel_path]",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="folder for the DataSpecs (keeping the image folder tree) and report.json",
    )
    parser.add_argument(
        "--subset",
        choices=SUBSETS,
        default="perfect",
        help="perfect: only pages whose detected and VLM panel counts are equal (default); "
        "all: every page, min(detected, VLM) panels",
    )
    parser.add_argument("--min-score", type=float, default=0.5, help="lowest panel detection score kept (default 0.5)")
    parser.add_argument(
        "--list-out", type=Path, default=None, help="list file to write (default: <OUT>_<subset>_list.txt beside OUT)"
    )


def run(args: argparse.Namespace) -> int:
    if not math.isfinite(args.min_score):
        raise UsageError(f"--min-score must be a number, got {args.min_score}")
    out = Path(os.path.abspath(args.out))
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder")
    list_path = Path(os.path.abspath(args.list_out or out.parent / f"{out.name}_{args.subset}_list.txt"))
    predictions = read_predictions(Path(args.coco))
    rows = read_mapping(Path(args.mapping))
    report = Report(
        coco=str(args.coco),
        mapping=str(args.mapping),
        out=str(out),
        list_file=str(list_path),
        subset=args.subset,
        min_score=args.min_score,
        pages=len(rows),
        unusable_annotations=predictions.unusable,
    )
    builder = _PageBuilder(predictions, Path(os.path.abspath(args.mapping)).parent, args.subset, args.min_score, report)
    written = builder.write_all(rows, out)
    write_list(list_path, written)
    _write_json(out / REPORT_NAME, report.to_json())
    print(report.text())
    return 0 if report.kept else 3


# --- predictions -------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Panel boxes `(bbox, score)` by image id; every id seen has an entry, even with no panel."""

    panels: dict[str, list[tuple[Box, float]]]
    unusable: int = 0  # annotations without an image id or a 4-number bbox, or with a bad score


def read_predictions(path: Path) -> Predictions:
    """Index a COCO predictions file by image id; raise UsageError if it cannot be used at all."""
    data = _read_json_input(path, "predictions file")
    if isinstance(data, list):
        images, annotations = [], data
    elif isinstance(data, dict) and isinstance(data.get("annotations"), list):
        images, annotations = data.get("images") or [], data["annotations"]
    else:
        raise UsageError(
            f"Predictions file {path}: expected an object with an 'annotations' list, or a list of annotations"
        )
    found = Predictions(panels={})
    for image in images if isinstance(images, list) else []:
        if isinstance(image, dict) and image.get("id") is not None:
            found.panels.setdefault(_id_key(image["id"]), [])
    for ann in annotations:
        parsed = _annotation(ann)
        if parsed is None:
            found.unusable += 1
            continue
        key, category, bbox, score = parsed
        boxes = found.panels.setdefault(key, [])
        if category == str(PANEL_CATEGORY):
            boxes.append((bbox, score))
    return found


def _annotation(ann: Any) -> tuple[str, str, Box, float] | None:
    """(image id, category, bbox, score) of one annotation, or None when it is unusable."""
    if not isinstance(ann, dict) or ann.get("image_id") is None:
        return None
    bbox, score = ann.get("bbox"), ann.get("score", 1.0)
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return None
    if not _is_number(score):
        return None
    return _id_key(ann["image_id"]), _id_key(ann.get("category_id")), [float(v) for v in bbox], float(score)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _id_key(value: Any) -> str:
    """An id as comparable text: 12, 12.0, "12" and "12.0" are one image (spreadsheets write 12.0)."""
    text = str(value).strip()
    return text.split(".")[0] if _INTEGRAL.match(text) else text


def _read_json_input(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        raise UsageError(f"{what.capitalize()} not found: {path}") from None
    except OSError as exc:
        raise UsageError(f"Cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what.capitalize()} {path} is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{what.capitalize()} {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


# --- mapping -----------------------------------------------------------------------------------


@dataclass
class MappingRow:
    """One page of the mapping CSV, its cells stripped ("" when a cell is empty or absent)."""

    row: int  # the CSV line number (header = 1), as a spreadsheet numbers its rows
    image_path: str
    image_id: str
    vlm_path: str
    rel_path: str


def read_mapping(path: Path) -> list[MappingRow]:
    """The mapping's data rows; raise UsageError naming the file for a missing column or no rows."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"Mapping CSV not found: {path}") from None
    except OSError as exc:
        raise UsageError(f"Cannot read mapping CSV {path}: {exc.strerror or exc}") from None
    reader = csv.reader(io.StringIO(_decode_csv(raw), newline=""))
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        columns = _columns(header, path)
        rows = [_mapping_row(cells, columns, reader.line_num) for cells in reader if any(c.strip() for c in cells)]
    except csv.Error as exc:
        raise UsageError(f"Mapping CSV {path}, line {reader.line_num}: {exc}") from None
    if not rows:
        raise UsageError(f"Mapping CSV {path} has no rows")
    return rows


def _decode_csv(raw: bytes) -> str:
    """UTF-8 (BOM removed), else cp1252 as Excel on Windows saves CSVs, else latin-1."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def _columns(header: list[str], path: Path) -> dict[str, int]:
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
        line, cell("image_path"), _id_key(image_id) if image_id else "", cell("vlm_json_path"), cell("image_rel_path")
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


# --- VLM text ----------------------------------------------------------------------------------


def panel_text(panel: dict[str, Any]) -> dict[str, list[str]]:
    """A VLM panel's text by kind, as the users' writer folded it (research §1.2 A).

    `text` and `speakers` as the DataSpec reader reads them, then the panel's `caption` and
    `description` as narration: the VLM's descriptions are what most pages' narration holds in
    the embedded corpus. Empty strings are dropped.
    """
    out = read_panel_text(panel)
    for key in ("caption", "description"):
        out["narration"].extend(_strings(panel.get(key)))
    return {key: [t for t in out.get(key, []) if t] for key in TEXT_KEYS}


def _strings(value: Any) -> list[str]:
    """Non-empty stripped strings of a string or list; the DataSpec reader strips them anyway."""
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [s.strip() for s in items if isinstance(s, str) and s.strip()]


# --- pages -------------------------------------------------------------------------------------


class _Drop(Exception):
    """Why one page is not written: a reason from REASONS and a detail for the report."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class Report:
    """What a run kept and dropped; printed, and written as OUT/report.json."""

    coco: str
    mapping: str
    out: str
    list_file: str
    subset: str
    min_score: float
    pages: int
    unusable_annotations: int
    kept: int = 0
    panels: int = 0
    boxes_below_min_score: int = 0  # panel boxes under the score, on pages whose VLM JSON was read
    images_not_checked: int = 0  # image paths of another OS (Windows on POSIX), kept unchecked
    dropped: list[dict[str, Any]] = field(default_factory=list)
    kept_with_count_mismatch: list[dict[str, Any]] = field(default_factory=list)  # subset "all"

    def by_reason(self) -> dict[str, int]:
        counts = Counter(d["reason"] for d in self.dropped)
        return {reason: counts[reason] for reason in REASONS}

    def to_json(self) -> dict[str, Any]:
        return {
            "coco": self.coco,
            "mapping": self.mapping,
            "out": self.out,
            "list_file": self.list_file,
            "subset": self.subset,
            "min_score": self.min_score,
            "pages_in_mapping": self.pages,
            "kept": self.kept,
            "dropped": len(self.dropped),
            "dropped_by_reason": self.by_reason(),
            "panels_written": self.panels,
            "boxes_below_min_score": self.boxes_below_min_score,
            "unusable_annotations": self.unusable_annotations,
            "images_not_checked": self.images_not_checked,
            "kept_with_count_mismatch": self.kept_with_count_mismatch,
            "dropped_pages": self.dropped,
        }

    def text(self) -> str:
        lines = [
            f"{self.pages} pages in {self.mapping}: {self.kept} kept ({self.panels} panels), "
            f"{len(self.dropped)} dropped [subset {self.subset}, min score {self.min_score:g}]",
        ]
        reasons = ", ".join(f"{r} {n}" for r, n in self.by_reason().items() if n)
        if reasons:
            lines.append(f"dropped: {reasons}")
        lines.append(
            f"panel boxes below min score: {self.boxes_below_min_score}; "
            f"unusable annotations: {self.unusable_annotations}"
        )
        if self.images_not_checked:
            lines.append(f"images not checked (paths of another OS): {self.images_not_checked}")
        if self.kept_with_count_mismatch:
            lines.append(f"kept with detected != VLM panel count: {len(self.kept_with_count_mismatch)}")
        lines.append(f"DataSpecs: {self.out}")
        lines.append(f"list: {self.list_file} ({self.kept} lines)")
        lines.append(f"report: {Path(self.out) / REPORT_NAME}")
        if self.dropped:
            shown = self.dropped[:PRINT_LIMIT]
            lines.append(f"dropped pages ({len(shown)} of {len(self.dropped)} shown):")
            lines += [f"  row {d['row']}: {d['reason']}: {d['image_path']}: {d['detail']}" for d in shown]
        return "\n".join(lines)


class _PageBuilder:
    """Turns mapping rows into DataSpecs; holds what is the same for every row."""

    def __init__(
        self, predictions: Predictions, mapping_dir: Path, subset: str, min_score: float, report: Report
    ) -> None:
        self.predictions = predictions
        self.mapping_dir = mapping_dir
        self.subset = subset
        self.min_score = min_score
        self.report = report

    def write_all(self, rows: list[MappingRow], out: Path) -> list[Path]:
        """Write each kept page's DataSpec under `out`; return their paths in mapping order."""
        derived = derived_rel_paths([row.image_path for row in rows])
        written: list[Path] = []
        seen: dict[str, int] = {}  # case-folded output path -> row that wrote it
        for row, fallback in zip(rows, derived):
            try:
                rel = _json_rel_path(row.rel_path or fallback)
                spec, detected, vlm = self.dataspec(row)
                first = seen.setdefault(rel.casefold(), row.row)
                if first != row.row:
                    raise _Drop("duplicate_output", f"{rel} already written for row {first}")
            except _Drop as drop:
                self.report.dropped.append(
                    {"row": row.row, "image_path": row.image_path, "reason": drop.reason, "detail": drop.detail}
                )
                continue
            if detected != vlm:
                self.report.kept_with_count_mismatch.append(
                    {"row": row.row, "image_path": row.image_path, "detected": detected, "vlm": vlm}
                )
            path = out / rel
            _write_json(path, spec)
            written.append(path)
            self.report.kept += 1
            self.report.panels += len(spec["panels"])
        return written

    def dataspec(self, row: MappingRow) -> tuple[dict[str, Any], int, int]:
        """(DataSpec, detected panels, VLM panels) of one row, or _Drop with the first reason that applies."""
        self.check_image(row.image_path)
        boxes = self.predictions.panels.get(row.image_id) if row.image_id else None
        if boxes is None:
            detail = f"image id {row.image_id!r} not in the predictions" if row.image_id else "row has no image id"
            raise _Drop("no_coco_entry", detail)
        vlm = self.vlm_panels(row.vlm_path)
        kept = sorted((b for b, score in boxes if score >= self.min_score), key=lambda b: (b[1], b[0]))
        self.report.boxes_below_min_score += len(boxes) - len(kept)
        if not kept or not vlm:
            raise _Drop("no_panels", f"{len(kept)} panel boxes with score >= {self.min_score:g}, {len(vlm)} VLM panels")
        if len(kept) != len(vlm) and self.subset == "perfect":
            raise _Drop("count_mismatch", f"{len(kept)} detected panels, {len(vlm)} VLM panels")
        panels = [{"panel_coords": _coords(box), "text": panel_text(panel)} for box, panel in zip(kept, vlm)]
        return {"page_image_path": row.image_path, "panels": panels}, len(kept), len(vlm)

    def check_image(self, image_path: str) -> None:
        if not image_path:
            raise _Drop("image_missing", "row has no image_path")
        path = _local_path(image_path, self.mapping_dir)
        if path is None:
            self.report.images_not_checked += 1
        elif not path.is_file():
            raise _Drop("image_missing", f"image not found: {path}")

    def vlm_panels(self, vlm_path: str) -> list[dict[str, Any]]:
        """The VLM's panels in file order, or _Drop (vlm_missing / vlm_unreadable) naming the file."""
        path = _local_path(vlm_path, self.mapping_dir) if vlm_path else None
        if path is None:
            raise _Drop("vlm_missing", f"VLM JSON path cannot be read on this machine: {vlm_path!r}")
        try:
            data = json.loads(path.read_bytes().decode("utf-8-sig"))
        except FileNotFoundError:
            raise _Drop("vlm_missing", f"VLM JSON not found: {path}") from None
        except OSError as exc:
            raise _Drop("vlm_unreadable", f"VLM JSON {path}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise _Drop("vlm_unreadable", f"VLM JSON {path}: not UTF-8 (byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            raise _Drop("vlm_unreadable", f"VLM JSON {path}: invalid JSON at {where}: {exc.msg}") from None
        lists = (data.get(key) for key in VLM_PANEL_KEYS) if isinstance(data, dict) else ()
        panels = next((value for value in lists if isinstance(value, list)), None)
        if panels is None:
            raise _Drop("vlm_unreadable", f"VLM JSON {path}: no panel list (tried keys {', '.join(VLM_PANEL_KEYS)})")
        bad = next((i for i, panel in enumerate(panels) if not isinstance(panel, dict)), None)
        if bad is not None:
            raise _Drop("vlm_unreadable", f"VLM JSON {path}: panel {bad} is not an object")
        return panels


def _coords(box: Box) -> list[int]:
    """COCO xywh as the users' writer wrote it: truncated ints, width and height at least 1."""
    x, y, w, h = box
    return [int(x), int(y), max(1, int(w)), max(1, int(h))]


def _json_rel_path(rel: str) -> str:
    """`rel` with a .json suffix, `/`-separated; _Drop when it would leave OUT or be the report."""
    text = posixpath.normpath(rel.replace("\\", "/")) if rel else ""
    if is_windows_absolute(rel) or text.startswith("/"):
        raise _Drop("bad_rel_path", f"image_rel_path is absolute: {rel}")
    if text in ("", ".") or text == ".." or text.startswith("../"):
        raise _Drop("bad_rel_path", f"image_rel_path is empty or leaves the output folder: {rel!r}")
    out = str(PurePosixPath(text).with_suffix(".json"))
    if out.casefold() == REPORT_NAME:
        raise _Drop("bad_rel_path", f"{out} is the report's name")
    return out


def _local_path(text: str, base: Path) -> Path | None:
    """Where a mapping path is on this machine; None for a Windows absolute path on POSIX."""
    if os.name != "nt":
        if is_windows_absolute(text):
            return None
        text = text.replace("\\", "/")
    path = Path(text)
    return path if path.is_absolute() else base / path


def _write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file, so that an interrupted run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def write_list(list_path: Path, dataspecs: list[Path]) -> None:
    """One line per DataSpec: relative to the list's folder when below it (forward slashes), else absolute."""
    base = list_path.parent
    lines = []
    for path in dataspecs:
        try:
            lines.append(path.relative_to(base).as_posix())
        except ValueError:
            lines.append(path.as_posix())
    list_path.parent.mkdir(parents=True, exist_ok=True)
    list_path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
