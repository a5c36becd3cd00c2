"""What a run kept and dropped, and why: printed, and written as OUT/report.json.

Every page of the mapping is either kept or dropped with the first reason that applies (REASONS,
in the order they are tested), so that nothing leaves the run unaccounted for.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec

REPORT_NAME = "report.json"
PRINT_LIMIT = 20
# why a page is dropped, in the order the reasons are tested
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


class Drop(Exception):
    """Why one page is not written: a reason from REASONS and a detail for the report."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class DroppedPage(msgspec.Struct, kw_only=True):
    """A mapping row not written: its reason (from REASONS) and the detail."""

    row: int
    image_path: str
    reason: str
    detail: str


class CountMismatch(msgspec.Struct, kw_only=True):
    """A page kept (subset "all") whose detected panel count differs from its VLM panel count."""

    row: int
    image_path: str
    detected: int
    vlm: int


class Report(msgspec.Struct, kw_only=True):
    """What a run kept and dropped; printed, and written as OUT/report.json (`dropped` and
    `dropped_by_reason` are counted from `dropped_pages` when it is written)."""

    coco: str
    mapping: str
    out: str
    list_file: str
    subset: str
    min_score: float
    pages_in_mapping: int
    kept: int = 0
    dropped: int = 0
    dropped_by_reason: dict[str, int] = msgspec.field(default_factory=dict)
    panels_written: int = 0
    boxes_below_min_score: int = 0  # panel boxes under the score, on pages whose VLM JSON was read
    unusable_annotations: int
    images_not_checked: int = 0  # image paths of another OS (Windows on POSIX), kept unchecked
    kept_with_count_mismatch: list[CountMismatch] = msgspec.field(default_factory=list)  # subset "all"
    dropped_pages: list[DroppedPage] = msgspec.field(default_factory=list)

    def by_reason(self) -> dict[str, int]:
        counts = Counter(d.reason for d in self.dropped_pages)
        return {reason: counts[reason] for reason in REASONS}

    def to_file(self) -> Report:
        """The report with its counts of dropped pages filled in, as report.json holds it."""
        return msgspec.structs.replace(self, dropped=len(self.dropped_pages), dropped_by_reason=self.by_reason())

    def text(self) -> str:
        lines = [
            f"{self.pages_in_mapping} pages in {self.mapping}: {self.kept} kept ({self.panels_written} panels), "
            f"{len(self.dropped_pages)} dropped [subset {self.subset}, min score {self.min_score:g}]",
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
        if self.dropped_pages:
            shown = self.dropped_pages[:PRINT_LIMIT]
            lines.append(f"dropped pages ({len(shown)} of {len(self.dropped_pages)} shown):")
            lines += [f"  row {d.row}: {d.reason}: {d.image_path}: {d.detail}" for d in shown]
        return "\n".join(lines)
