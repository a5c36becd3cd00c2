"""Planning a job: the list's pages given rows and batches, and its job file written before any work starts.

Rows and batch ids continue from one job to the next (`next_job_layout`), so batch ids are global
and consecutive. The task payloads, then the pages, then the header are written whole, in that
order, so that a job file exists only beside its complete tasks and pages (docs/store.md, "Job
files"). Two producers planning at once are serialised by a lock in the jobs folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from comix_embed.common import config
from comix_embed.common.digest import file_sha256
from comix_embed.common.durable import fsync_dir, write_json_atomic
from comix_embed.common.errors import UsageError
from comix_embed.common.locks import held_lock
from comix_embed.common.messages import (
    JOB_FORMAT,
    ModelIdentity,
    TaskPayload,
    encode_json,
)
from comix_embed.common.store.jobs import (
    LINE_OFFSET,
    Job,
    JobPage,
    KeepsTasks,
    has_tasks,
    jobs_dir,
    load_jobs,
    pages_paths,
    tasks_paths,
)
from comix_embed.common.timestamps import utc_now


def job_id_of(number: int) -> str:
    return f"job_{number:06d}"


def write_job(output_dir: str | os.PathLike[str], job: Job) -> Path:
    """Write the job: its pages and their index, then the header, each whole or not at all
    (temporary file, fsync, rename, directory fsync)."""
    folder = jobs_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job.job_id}.json"
    write_indexed_lines(*pages_paths(path), (msgspec.json.encode(p) for p in job.all_pages()))
    write_json_atomic(path, job.to_json())
    return path


def write_indexed_lines(lines_path: Path, index_path: Path, lines: Iterable[bytes]) -> int:
    """Write one line per item and the byte offset of each (and of the end) in the index, both
    fsynced; the lines are renamed into place first, the index last (an index exists only beside
    complete lines). Returns the number of lines."""
    tmp_lines = lines_path.with_name(f".{lines_path.name}.tmp")
    tmp_index = index_path.with_name(f".{index_path.name}.tmp")
    count = 0
    with open(tmp_lines, "wb") as out, open(tmp_index, "wb") as index:
        for line in lines:
            index.write(LINE_OFFSET.pack(out.tell()))
            out.write(line + b"\n")
            count += 1
        index.write(LINE_OFFSET.pack(out.tell()))
        for fh in (out, index):
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp_lines, lines_path)
    os.replace(tmp_index, index_path)
    fsync_dir(lines_path.parent)
    return count


def write_tasks(output_dir: str | os.PathLike[str], job: KeepsTasks, payloads: Iterable[TaskPayload]) -> None:
    """Keep every batch's payload, in batch order (`write_indexed_lines`)."""
    lines_path, index_path = tasks_paths(output_dir, job.job_id)

    def lines() -> Iterator[bytes]:
        for count, payload in enumerate(payloads):
            if payload.batch_id != job.first_batch + count:
                raise ValueError(f"task of batch {payload.batch_id} out of order in {job.job_id}")
            yield encode_json(payload)

    count = write_indexed_lines(lines_path, index_path, lines())
    if count != job.batch_count():
        index_path.unlink()
        raise ValueError(f"{count} task payloads for the {job.batch_count()} batches of {job.job_id}")


def next_job_layout(output_dir: str | os.PathLike[str]) -> tuple[int, int, int]:
    """(number, start_row, first_batch) of the next job: right after the last job's rows and batches."""
    jobs = load_jobs(output_dir)
    if not jobs:
        return 1, 0, 0
    last = jobs[-1]
    return last.number + 1, last.end_row, last.first_batch + last.batch_count()


def registered_page_ids(output_dir: str | os.PathLike[str]) -> set[str]:
    """page_ids of every job already planned: these pages are never embedded again."""
    return {p.page_id for job in load_jobs(output_dir) for p in job.all_pages()}


def plan_job(
    output_dir: str | os.PathLike[str],
    list_path: str | os.PathLike[str],
    pages: list[JobPage],
    batch_size: int,
    incremental: bool,
    model: ModelIdentity | None = None,
    tasks: Callable[[Job, Job], Iterable[TaskPayload]] | None = None,
    list_sha256: str | None = None,
) -> tuple[Job | None, list[tuple[JobPage, str]]]:
    """Register a list as a job (writing its job file), or find the job it already is.

    Returns the job and the pages skipped with the reason (already in the store, or repeated in
    the list). The same list file planned again returns its existing job unchanged, whatever
    batch size is asked, so that a re-run resumes instead of registering the pages twice. A
    different list needs `incremental`; `incremental` with nothing to append to is refused, as
    users know it. Returns (None, skipped) when every page is already stored.

    A new job is bound to `model`; `tasks(job, first_job)` gives its batches' payloads, kept
    before the job file is written (also for a job found without them: one from before).
    `list_sha256` is the list's digest when it was read already (a list on object storage is read
    once); otherwise the local file `list_path` is hashed.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    output_dir = Path(output_dir)
    store = output_dir / config.STORE_NAME
    sha = list_sha256 or file_sha256(list_path)
    with planning_lock(output_dir):
        jobs = load_jobs(output_dir)
        for job in jobs:
            if job.list_sha256 == sha:
                if tasks is not None and not has_tasks(output_dir, job.job_id):
                    write_tasks(output_dir, job, tasks(job, jobs[0]))
                return job, []
        if incremental and not jobs and not store.exists():
            raise UsageError(f"Incremental mode requested but Zarr not found: {store}")
        if not incremental and jobs:
            first = jobs[0]
            raise UsageError(f"{store} holds {first.job_id} from {first.list_path}; pass --incremental to append")
        if not incremental and store.exists():
            raise UsageError(f"{store} exists but {jobs_dir(output_dir)} has no job files")
        known = {p.page_id for job in jobs for p in job.all_pages()}
        kept: list[JobPage] = []
        skipped: list[tuple[JobPage, str]] = []
        seen: set[str] = set()
        for page in pages:
            if page.page_id in known:
                skipped.append((page, "already in the store"))
            elif page.page_id in seen:
                skipped.append((page, "repeated in the list"))
            else:
                seen.add(page.page_id)
                kept.append(page)
        if not kept:
            return None, skipped
        number, start_row, first_batch = next_job_layout(output_dir)
        job = Job(
            job_id=job_id_of(number),
            number=number,
            list_path=str(list_path),
            list_sha256=sha,
            created=utc_now(),
            start_row=start_row,
            batch_size=batch_size,
            first_batch=first_batch,
            pages=kept,
            model=model,
            format=JOB_FORMAT,
            num_pages=len(kept),
        )
        if tasks is not None:
            write_tasks(output_dir, job, tasks(job, jobs[0] if jobs else job))
        write_job(output_dir, job)
        return job, skipped


@contextmanager
def planning_lock(output_dir: Path) -> Iterator[None]:
    """Two producers planning at once would give two jobs (or retry rounds) the same rows or ids: serialise them."""
    folder = jobs_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with held_lock(folder / ".plan.lock"):
        yield
