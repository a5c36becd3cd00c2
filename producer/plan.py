"""From a list file to page tasks: read every DataSpec, place every image, name every failure.

Nothing is dropped silently: a missing or unreadable DataSpec, or an image outside every root,
becomes a page whose task already carries its error (the worker records it, and the page is
counted as failed in the store), and the reason names the list line.
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from comix_embed.common import config
from comix_embed.common.inputs.dataspec import DataSpecError, load_dataspec
from comix_embed.common.inputs.listfile import ListEntry, ListReport
from comix_embed.common.inputs.pages import PageTask
from comix_embed.common.inputs.paths import ImageResolver, PathRefused, page_metadata
from comix_embed.common.inputs.reading import read_many


@dataclass
class PlannedPage:
    """A list entry made ready to send: its task (row not yet assigned) and its store metadata."""

    task: PageTask
    manifest_path: str
    line_no: int
    metadata: dict[str, str]
    panel_count: int  # panels the page will have in the store (after the cap); -1 if failed
    dropped_panels: int = 0  # beyond max_panels, or without a usable box


def plan_entry(entry: ListEntry, resolver: ImageResolver) -> PlannedPage:
    task = PageTask(row=-1, page_id=entry.page_id)
    planned = PlannedPage(task, entry.raw, entry.line_no, page_metadata(entry.page_id), -1)
    if entry.error or entry.path is None:
        task.error = entry.error or f"DataSpec path cannot be resolved (list line {entry.line_no}): {entry.raw}"
        return planned
    try:
        read = load_dataspec(entry.path)
        task.root, task.image = resolver.locate(read.spec.image, entry.path)
    except (DataSpecError, PathRefused) as exc:
        task.error = f"{exc} (list line {entry.line_no})"
        return planned
    task.spec = read.spec
    n = len(read.spec.panels)
    planned.panel_count = max(1, min(n, config.MAX_PANELS))  # 0 panels: one full-page panel
    planned.dropped_panels = read.dropped_panels + max(0, n - config.MAX_PANELS)
    return planned


def plan_pages(report: ListReport, resolver: ImageResolver, progress: bool = False) -> list[PlannedPage]:
    """Every entry of the list, in list order. DataSpecs are read with a bounded number in flight
    (COMIX_REMOTE_READS_IN_FLIGHT): on object storage each read waits tens of milliseconds."""
    results = read_many(report.entries, lambda e: plan_entry(e, resolver))
    return list(tqdm(results, total=len(report.entries), desc="reading DataSpecs", unit="page", disable=not progress))


def assign_rows(pages: list[PlannedPage], start_row: int) -> list[PageTask]:
    """Rows in list order from `start_row`; the tasks, ready to batch."""
    for offset, page in enumerate(pages):
        page.task.row = start_row + offset
    return [p.task for p in pages]
