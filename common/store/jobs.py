"""Job files as every role reads them: a job's rows, batches, pages and kept task payloads.

A job file (`<output_dir>/jobs/job_NNNNNN.json`) is the one record of which page owns which row
(docs/store.md, "Job files"): a header; its pages, one JSON line per row in
`job_NNNNNN.pages.jsonl` with the byte offset of each line in `job_NNNNNN.pages.idx`; and its
batches' task payloads, likewise in `job_NNNNNN.tasks.jsonl` and `.tasks.idx`. A batch's pages or
payload are read by seeking, never the whole file, so that `status`, the writer's start and a
re-send cost the same at a million pages. The producer writes them (producer/jobs.py). Job files
of format 1 (no model, no tasks file) and 2 (pages inside the header) still load.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.messages import (
    JOB_FORMAT,
    MalformedMessage,
    ModelIdentity,
    TaskPayload,
    check_version,
    decode_json,
)

_JOB_FILE = re.compile(r"^job_(\d{6})\.json$")


@dataclass
class JobPage:
    """One page of a job, in list order. `panel_count` is -1 when the producer could not tell;
    `dropped_panels` (its DataSpec's panels not embedded: past max_panels, or without a usable box)
    is -1 where nobody recorded it (jobs enqueued before it was, imported stores)."""

    page_id: str
    manifest_path: str
    source: str = ""
    series: str = ""
    volume: str = ""
    issue: str = ""
    page_num: str = ""
    panel_count: int = -1
    dropped_panels: int = -1


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
    """What keeps task payloads beside its file: a job, or a retry round (common/store/retries.py)."""

    job_id: str
    first_batch: int

    def batch_count(self) -> int: ...


def jobs_dir(output_dir: str | os.PathLike[str]) -> Path:
    return Path(output_dir) / config.JOBS_DIR_NAME


def pages_paths(job_path: Path) -> tuple[Path, Path]:
    """The pages file and its offsets index of a job file."""
    stem = job_path.name.removesuffix(".json")
    return job_path.with_name(f"{stem}.pages.jsonl"), job_path.with_name(f"{stem}.pages.idx")


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

LINE_OFFSET = struct.Struct("<Q")


def tasks_paths(output_dir: str | os.PathLike[str], job_id: str) -> tuple[Path, Path]:
    folder = jobs_dir(output_dir)
    return folder / f"{job_id}.tasks.jsonl", folder / f"{job_id}.tasks.idx"


def has_tasks(output_dir: str | os.PathLike[str], job_id: str) -> bool:
    return tasks_paths(output_dir, job_id)[1].is_file()


def read_indexed_lines(lines_path: Path, index_path: Path, first: int, last: int) -> list[bytes]:
    """Lines [first, last) of a file written by `write_indexed_lines`, read with one seek each."""
    if first < 0 or last < first:
        raise KeyError(f"lines {first}:{last} of {lines_path.name}")
    with open(index_path, "rb") as index:
        index.seek(first * LINE_OFFSET.size)
        raw = index.read((last - first + 1) * LINE_OFFSET.size)
    if len(raw) != (last - first + 1) * LINE_OFFSET.size:
        raise KeyError(f"lines {first}:{last} of {lines_path.name}")
    offsets = [LINE_OFFSET.unpack_from(raw, k * LINE_OFFSET.size)[0] for k in range(last - first + 1)]
    with open(lines_path, "rb") as fh:
        fh.seek(offsets[0])
        block = fh.read(offsets[-1] - offsets[0])
    return [block[a - offsets[0] : b - offsets[0]].rstrip(b"\n") for a, b in zip(offsets, offsets[1:])]


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
