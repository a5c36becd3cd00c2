"""Jobs: a list of pages given rows and batches, recorded in a job file before any work starts.

The producer plans a job and writes `<output_dir>/jobs/job_NNNNNN.json` (temporary file, then
rename); the writer later registers the job's rows in the store from that file. Rows and batch ids
continue from one job to the next, so batch ids are global and consecutive: the manifests of all
jobs never collide, and a contiguous prefix of batch ids is a contiguous prefix of rows.
The job file is the single record of which page owns which row; nothing else assigns rows.

A job also records the model it is bound to (common/identity.py) and keeps, beside its file, the
task payload of every batch (`job_NNNNNN.tasks.jsonl`, one JSON line per batch, and
`job_NNNNNN.tasks.idx`, the byte offset of each line): whatever re-sends a batch (the writer when
a lease expires, `run` and `enqueue` resuming any unfinished job) reads that one line by seeking,
never the whole file. Job files of format 1 (no model, no tasks file) still load.

The pages live beside the job file too (format 3): `job_NNNNNN.json` is a header (everything but
the pages, with `num_pages`), `job_NNNNNN.pages.jsonl` one JSON line per page in row order and
`job_NNNNNN.pages.idx` the byte offset of each line. A million pages make about 300 MB of pages:
`status`, the writer's start and the summaries read the headers only, and a batch's pages are
read by seeking (`Job.page`, `Job.page_slice`). Pages and index are renamed into place before the
header, so a job file exists only beside its complete pages. Job files of format 1 and 2 hold
their pages inline and still load.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import msgspec

from comix_embed.common import config
from comix_embed.common.digest import file_sha256
from comix_embed.common.durable import fsync_dir, write_json_atomic
from comix_embed.common.errors import UsageError
from comix_embed.common.locks import held_lock
from comix_embed.common.messages import (
    JOB_FORMAT,
    MalformedMessage,
    ModelIdentity,
    TaskPayload,
    check_version,
    decode_json,
    encode_json,
)

_JOB_FILE = re.compile(r"^job_(\d{6})\.json$")


@dataclass
class JobPage:
    """One page of a job, in list order. `panel_count` is -1 when the producer could not tell."""

    page_id: str
    manifest_path: str
    source: str = ""
    series: str = ""
    volume: str = ""
    issue: str = ""
    page_num: str = ""
    panel_count: int = -1


@dataclass
class Job:
    """A registered list: its pages own rows [start_row, start_row + num_pages).

    `pages` is filled when the job is planned, or read from an older job file; a job loaded from
    a header (format 3) reads its pages from the pages file when asked (`all_pages`, `page`).
    """

    job_id: str
    number: int
    list_path: str
    list_sha256: str
    created: str
    start_row: int
    batch_size: int
    first_batch: int
    pages: list[JobPage] = field(default_factory=list)
    model: ModelIdentity | None = None  # the model the job is bound to (None in format 1)
    format: int = 1
    num_pages: int = -1  # format 3; -1 in older files, whose pages are inline

    def __post_init__(self) -> None:
        # the job file whose pages file is read (set by `read_job` for a header); not part of the file
        self._source: Path | None = None

    @property
    def page_count(self) -> int:
        return self.num_pages if self.num_pages >= 0 else len(self.pages)

    @property
    def end_row(self) -> int:
        return self.start_row + self.page_count

    def batches(self) -> list[tuple[int, int, int]]:
        """(global batch id, start row, end row) of every batch, in order; the last may be short."""
        out = []
        for k, offset in enumerate(range(0, self.page_count, self.batch_size)):
            start = self.start_row + offset
            out.append((self.first_batch + k, start, min(start + self.batch_size, self.end_row)))
        return out

    def batch(self, batch_id: int) -> tuple[int, int]:
        """Row range of one of this job's batches; KeyError when the batch is not this job's."""
        k = batch_id - self.first_batch
        start = self.start_row + k * self.batch_size
        if k < 0 or start >= self.end_row:
            raise KeyError(f"batch {batch_id} is not part of {self.job_id}")
        return start, min(start + self.batch_size, self.end_row)

    def page(self, row: int) -> JobPage:
        return self.page_slice(row, row + 1)[0]

    def page_slice(self, start_row: int, end_row: int) -> list[JobPage]:
        """The pages of rows [start_row, end_row), read with one seek when they are not in memory."""
        first, last = start_row - self.start_row, end_row - self.start_row
        if self._source is None or self.pages:
            return self.pages[first:last]
        lines, index = pages_paths(self._source)
        raw = read_indexed_lines(lines, index, first, min(last, self.page_count))
        return [decode_json(line, JobPage, f"{lines.name} line {first + k + 1}") for k, line in enumerate(raw)]

    def all_pages(self) -> list[JobPage]:
        """Every page, in row order (read from the pages file once, then kept)."""
        if not self.pages and self.page_count:
            self.pages = self.page_slice(self.start_row, self.end_row)
        return self.pages

    def batch_count(self) -> int:
        """Batches in the job, counted without listing them (status asks per manifest)."""
        return -(-self.page_count // self.batch_size)

    def batch_ids(self) -> range:
        """The job's batch ids (a range: membership is a comparison, not a scan)."""
        return range(self.first_batch, self.first_batch + self.batch_count())

    def holds_batch(self, batch_id: int) -> bool:
        return batch_id in self.batch_ids()

    def to_json(self) -> dict[str, Any]:
        """The job file's content: the header (the pages go to their own file)."""
        header = msgspec.to_builtins(self)
        header["pages"] = []
        header["num_pages"] = self.page_count
        return header


class KeepsTasks(Protocol):
    """What keeps task payloads beside its file: a job, or a retry round (common/retries.py)."""

    job_id: str
    first_batch: int

    def batch_count(self) -> int: ...


def jobs_dir(output_dir: str | os.PathLike[str]) -> Path:
    return Path(output_dir) / config.JOBS_DIR_NAME


def job_id_of(number: int) -> str:
    return f"job_{number:06d}"


def pages_paths(job_path: Path) -> tuple[Path, Path]:
    """The pages file and its offsets index of a job file."""
    stem = job_path.name.removesuffix(".json")
    return job_path.with_name(f"{stem}.pages.jsonl"), job_path.with_name(f"{stem}.pages.idx")


def write_job(output_dir: str | os.PathLike[str], job: Job) -> Path:
    """Write the job: its pages and their index, then the header, each whole or not at all
    (temporary file, fsync, rename, directory fsync)."""
    folder = jobs_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job.job_id}.json"
    write_indexed_lines(*pages_paths(path), (msgspec.json.encode(p) for p in job.all_pages()))
    write_json_atomic(path, job.to_json())
    return path


def read_job(path: Path) -> Job:
    """One job file, checked as it decodes (a broken one is named with the field at fault); the
    header only, for a job of format 3 (its pages are read when asked)."""
    try:
        job = decode_json(path.read_bytes(), Job, f"job file {path}")
        check_version(f"job file {path}", job.format, JOB_FORMAT, "program")
    except MalformedMessage as exc:
        raise UsageError(str(exc)) from None
    if job.num_pages >= 0:
        job._source = path
    return job


def load_jobs(output_dir: str | os.PathLike[str]) -> list[Job]:
    """Every job file of the output folder, in job-number order."""
    folder = jobs_dir(output_dir)
    if not folder.is_dir():
        return []
    jobs = [read_job(entry) for entry in sorted(folder.iterdir()) if _JOB_FILE.match(entry.name)]
    jobs.sort(key=lambda j: j.number)
    return jobs


def first_job(output_dir: str | os.PathLike[str]) -> Job | None:
    """The output folder's first job (it names the store on the broker), reading that file only."""
    folder = jobs_dir(output_dir)
    names = sorted(e.name for e in os.scandir(folder) if _JOB_FILE.match(e.name)) if folder.is_dir() else []
    return read_job(folder / names[0]) if names else None


# --- the task payloads kept with a job ---

_OFFSET = struct.Struct("<Q")


def tasks_paths(output_dir: str | os.PathLike[str], job_id: str) -> tuple[Path, Path]:
    folder = jobs_dir(output_dir)
    return folder / f"{job_id}.tasks.jsonl", folder / f"{job_id}.tasks.idx"


def has_tasks(output_dir: str | os.PathLike[str], job_id: str) -> bool:
    return tasks_paths(output_dir, job_id)[1].is_file()


def write_indexed_lines(lines_path: Path, index_path: Path, lines: Iterable[bytes]) -> int:
    """Write one line per item and the byte offset of each (and of the end) in the index, both
    fsynced; the lines are renamed into place first, the index last (an index exists only beside
    complete lines). Returns the number of lines."""
    tmp_lines = lines_path.with_name(f".{lines_path.name}.tmp")
    tmp_index = index_path.with_name(f".{index_path.name}.tmp")
    count = 0
    with open(tmp_lines, "wb") as out, open(tmp_index, "wb") as index:
        for line in lines:
            index.write(_OFFSET.pack(out.tell()))
            out.write(line + b"\n")
            count += 1
        index.write(_OFFSET.pack(out.tell()))
        for fh in (out, index):
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp_lines, lines_path)
    os.replace(tmp_index, index_path)
    fsync_dir(lines_path.parent)
    return count


def read_indexed_lines(lines_path: Path, index_path: Path, first: int, last: int) -> list[bytes]:
    """Lines [first, last) of a file written by `write_indexed_lines`, read with one seek each."""
    if first < 0 or last < first:
        raise KeyError(f"lines {first}:{last} of {lines_path.name}")
    with open(index_path, "rb") as index:
        index.seek(first * _OFFSET.size)
        raw = index.read((last - first + 1) * _OFFSET.size)
    if len(raw) != (last - first + 1) * _OFFSET.size:
        raise KeyError(f"lines {first}:{last} of {lines_path.name}")
    offsets = [_OFFSET.unpack_from(raw, k * _OFFSET.size)[0] for k in range(last - first + 1)]
    with open(lines_path, "rb") as fh:
        fh.seek(offsets[0])
        block = fh.read(offsets[-1] - offsets[0])
    return [block[a - offsets[0] : b - offsets[0]].rstrip(b"\n") for a, b in zip(offsets, offsets[1:])]


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


def iter_tasks(output_dir: str | os.PathLike[str], job: KeepsTasks) -> Iterator[TaskPayload] | None:
    """Every batch's payload in order, read as a stream; None when the job keeps none (format 1)."""
    lines_path, index_path = tasks_paths(output_dir, job.job_id)
    if not index_path.is_file():
        return None

    def lines() -> Iterator[TaskPayload]:
        with open(lines_path, "rb") as fh:
            for n, line in enumerate(fh):
                yield decode_json(line, TaskPayload, f"{lines_path.name} line {n + 1}")

    return lines()


def read_task(output_dir: str | os.PathLike[str], job: KeepsTasks, batch_id: int) -> TaskPayload | None:
    """One batch's payload, read by seeking; None when the job keeps none (format 1)."""
    lines_path, index_path = tasks_paths(output_dir, job.job_id)
    if not index_path.is_file():
        return None
    try:
        (line,) = read_indexed_lines(lines_path, index_path, batch_id - job.first_batch, batch_id - job.first_batch + 1)
    except KeyError:
        raise KeyError(f"batch {batch_id} is not part of {job.job_id}") from None
    return decode_json(line, TaskPayload, f"{lines_path.name} batch {batch_id}")


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
) -> tuple[Job | None, list[tuple[JobPage, str]]]:
    """Register a list as a job (writing its job file), or find the job it already is.

    Returns the job and the pages skipped with the reason (already in the store, or repeated in
    the list). The same list file planned again returns its existing job unchanged, whatever
    batch size is asked, so that a re-run resumes instead of registering the pages twice. A
    different list needs `incremental`; `incremental` with nothing to append to is refused, as
    users know it. Returns (None, skipped) when every page is already stored.

    A new job is bound to `model`; `tasks(job, first_job)` gives its batches' payloads, kept
    before the job file is written (also for a job found without them: one from before).
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    output_dir = Path(output_dir)
    store = output_dir / config.STORE_NAME
    sha = file_sha256(list_path)
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


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def planning_lock(output_dir: Path) -> Iterator[None]:
    """Two producers planning at once would give two jobs (or retry rounds) the same rows or ids: serialise them."""
    folder = jobs_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with held_lock(folder / ".plan.lock"):
        yield
