"""Building pages: each mapping row's boxes and VLM text made into a DataSpec written under OUT.

A row is kept or dropped with the first reason that applies (`report.REASONS`); the list file
then names exactly the DataSpecs this run wrote.
"""

from __future__ import annotations

import posixpath
from pathlib import Path, PurePosixPath

from comix_embed.common.durable import write_json_atomic
from comix_embed.common.inputs.dataspec import DataSpecRecord, PanelRecord
from comix_embed.common.inputs.locations import RemoteURL
from comix_embed.common.inputs.paths import is_windows_absolute
from comix_embed.tools.dataspec_builder.coco import Box, Predictions
from comix_embed.tools.dataspec_builder.mapping import MappingRow, derived_rel_paths, input_location
from comix_embed.tools.dataspec_builder.report import REPORT_NAME, CountMismatch, Drop, DroppedPage, Report
from comix_embed.tools.dataspec_builder.vlm import panel_text, vlm_panels


class PageBuilder:
    """Turns mapping rows into DataSpecs; holds what is the same for every row."""

    def __init__(
        self,
        predictions: Predictions,
        mapping_dir: Path | RemoteURL,
        subset: str,
        min_score: float,
        report: Report,
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
                rel = json_rel_path(row.rel_path or fallback)
                spec, detected, vlm = self.dataspec(row)
                first = seen.setdefault(rel.casefold(), row.row)
                if first != row.row:
                    raise Drop("duplicate_output", f"{rel} already written for row {first}")
            except Drop as drop:
                self.report.dropped_pages.append(
                    DroppedPage(row=row.row, image_path=row.image_path, reason=drop.reason, detail=drop.detail)
                )
                continue
            if detected != vlm:
                self.report.kept_with_count_mismatch.append(
                    CountMismatch(row=row.row, image_path=row.image_path, detected=detected, vlm=vlm)
                )
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, spec, fsync=False, indent=2)  # an interrupted run leaves no half file
            written.append(path)
            self.report.kept += 1
            self.report.panels_written += len(spec.panels)
        return written

    def dataspec(self, row: MappingRow) -> tuple[DataSpecRecord, int, int]:
        """(DataSpec, detected panels, VLM panels) of one row, or Drop with the first reason that applies."""
        self.check_image(row.image_path)
        boxes = self.predictions.panels.get(row.image_id) if row.image_id else None
        if boxes is None:
            detail = f"image id {row.image_id!r} not in the predictions" if row.image_id else "row has no image id"
            raise Drop("no_coco_entry", detail)
        vlm = vlm_panels(row.vlm_path, self.mapping_dir)
        kept = sorted((b for b, score in boxes if score >= self.min_score), key=lambda b: (b[1], b[0]))
        self.report.boxes_below_min_score += len(boxes) - len(kept)
        if not kept or not vlm:
            raise Drop("no_panels", f"{len(kept)} panel boxes with score >= {self.min_score:g}, {len(vlm)} VLM panels")
        if len(kept) != len(vlm) and self.subset == "perfect":
            raise Drop("count_mismatch", f"{len(kept)} detected panels, {len(vlm)} VLM panels")
        panels = [PanelRecord(panel_coords=coords(box), text=panel_text(panel)) for box, panel in zip(kept, vlm)]
        return DataSpecRecord(page_image_path=row.image_path, panels=panels), len(kept), len(vlm)

    def check_image(self, image_path: str) -> None:
        if not image_path:
            raise Drop("image_missing", "row has no image_path")
        path = input_location(image_path, self.mapping_dir)
        if path is None or isinstance(path, RemoteURL):  # another OS's path; an object: a request each
            self.report.images_not_checked += 1
        elif not path.is_file():
            raise Drop("image_missing", f"image not found: {path}")


def coords(box: Box) -> list[int]:
    """COCO xywh as the users' writer wrote it: truncated ints, width and height at least 1."""
    x, y, w, h = box
    return [int(x), int(y), max(1, int(w)), max(1, int(h))]


def json_rel_path(rel: str) -> str:
    """`rel` with a .json suffix, `/`-separated; Drop when it would leave OUT or be the report."""
    text = posixpath.normpath(rel.replace("\\", "/")) if rel else ""
    if is_windows_absolute(rel) or text.startswith("/"):
        raise Drop("bad_rel_path", f"image_rel_path is absolute: {rel}")
    if text in ("", ".") or text == ".." or text.startswith("../"):
        raise Drop("bad_rel_path", f"image_rel_path is empty or leaves the output folder: {rel!r}")
    out = str(PurePosixPath(text).with_suffix(".json"))
    if out.casefold() == REPORT_NAME:
        raise Drop("bad_rel_path", f"{out} is the report's name")
    return out


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
