"""The page-ids check: no page id twice among the registered rows, each in the row its job gave it."""

from __future__ import annotations

from collections import defaultdict

from comix_embed.common.store.snapshots import SNAPSHOT_ATTRIBUTE
from comix_embed.tools.diagnose.load import Store
from comix_embed.tools.diagnose.report import LISTED, Check, listed


def check_page_ids(s: Store) -> Check:
    check = Check("page-ids")
    registered = [str(x) for x in s.page_ids[: s.registered]]
    rows_of: dict[str, list[int]] = defaultdict(list)
    for row, page_id in enumerate(registered):
        rows_of[page_id].append(row)
    duplicates = {pid: rows for pid, rows in rows_of.items() if len(rows) > 1 and pid}
    for pid, rows in list(duplicates.items())[:LISTED]:
        check.fails.append(f"page id {pid!r} is in rows {listed(rows)}")
    if len(duplicates) > LISTED:
        check.fails.append(f"{len(duplicates) - LISTED} more page ids are repeated")
    if rows_of.get(""):
        check.fails.append(f"registered rows {listed(rows_of[''])} have no page id")
    check.fails += job_row_problems(s, registered)
    if not check.fails:
        check.notes.append(f"{len(registered)} registered page ids, unique, each in the row its job file gave it")
    return check


def job_row_problems(s: Store, registered: list[str]) -> list[str]:
    """Every registered job's file exists and its pages sit in its rows (in a snapshot, those of
    its rows the snapshot holds: a job it caught mid-way goes on past its last row)."""
    files = {j.job_id: j for j in s.jobs}
    snapshot = SNAPSHOT_ATTRIBUTE in s.attrs
    problems = []
    for record in s.kept.jobs:
        job = files.get(record.job_id)
        if job is None:
            problems.append(f"{record.job_id} is registered but its job file is gone")
            continue
        pages = job.all_pages()
        end = min(job.end_row, len(registered)) if snapshot else job.end_row
        wrong = [
            r
            for r in range(job.start_row, end)
            if r >= len(registered) or registered[r] != pages[r - job.start_row].page_id
        ]
        if wrong:
            problems.append(f"rows {listed(wrong)} do not hold the page {job.job_id} gave them")
    return problems
