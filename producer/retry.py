"""`--retry-failed` for `run` and `enqueue`: the store's failed rows planned as a retry round and sent.

The failed rows (status 2) of every committed batch are read from the store; their list lines are
read again (each job's list: the `--list` given when it is that job's, else the one the job
recorded), so their DataSpecs are read again and their images located again; the images are read
by the workers. A page that still cannot be planned goes with its new reason and stays failed.
A round not finished (a retry interrupted) is resumed instead of planning another: its batches
without a retry manifest are sent again. Rounds and retry manifests: common/store/retries.py.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import zarr

from comix_embed.common import config
from comix_embed.common.broker import deliveries
from comix_embed.common.broker.connection import connect
from comix_embed.common.broker.results_stream import store_id
from comix_embed.common.celery_app import configure
from comix_embed.common.durable import write_json_atomic
from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.listfile import entries_of_lines, read_list
from comix_embed.common.inputs.pages import PageTask
from comix_embed.common.inputs.paths import ImageResolver, parse_path_map
from comix_embed.common.messages import TASK_FORMAT, ModelIdentity, TaskPayload
from comix_embed.common.store.jobs import Job, iter_tasks, load_jobs
from comix_embed.common.store.manifests import scan_manifests
from comix_embed.common.store.retries import RETRY_BASE, RetryRound, load_rounds, owed_retries, round_path
from comix_embed.common.store.schema import STATUS_FAILED, store_path
from comix_embed.common.store.v2 import find_v2_store
from comix_embed.common.timestamps import utc_now
from comix_embed.producer.jobs import planning_lock, write_tasks
from comix_embed.producer.plan import plan_entry

NO_FAILED = "no failed pages"


@dataclass
class RetryPlan:
    """The round to send: a new one, or one resumed; and the batches it still owes."""

    round: RetryRound
    resumed: bool
    owed: list[int]
    still_failing: list[str] = field(default_factory=list)  # pages that cannot even be planned again

    def lines(self) -> list[str]:
        rnd = self.round
        verb = "resumed" if self.resumed else "planned"
        out = [
            f"{rnd.job_id} ({verb}): {rnd.pages()} failed pages in {rnd.batch_count()} retry batches, "
            f"{len(self.owed)} to send"
        ]
        if self.still_failing:
            out.append(f"pages that will fail again: {len(self.still_failing)}")
            out += [f"  {m}" for m in self.still_failing[:20]]
        return out


def failed_rows(output_dir: Path) -> list[int]:
    """Rows of committed batches whose status is failed now (retries included), in row order."""
    path = store_path(output_dir)
    found, _ = scan_manifests(path)
    status = zarr.open_array(path / "status", mode="r")
    rows: list[int] = []
    for _, manifest in sorted(found.items()):
        if manifest.statuses.get("failed", 0):
            start, end = manifest.rows()
            rows += (start + np.flatnonzero(np.asarray(status[start:end]) == STATUS_FAILED)).tolist()
    return sorted(rows)


def _tasks(args: argparse.Namespace, jobs: list[Job], rows: list[int]) -> tuple[list[PageTask], list[str]]:
    """A task per failed row, its list line read again; the reasons of those that fail already."""
    path_maps = [parse_path_map(m) for m in args.path_map]
    resolver = ImageResolver(args.image_root, path_maps)
    given = read_list(args.list, args.dataspec_root, path_maps) if getattr(args, "list", None) else None
    tasks: list[PageTask] = []
    problems: list[str] = []
    for job in jobs:
        mine = [r for r in rows if job.start_row <= r < job.end_row]
        if not mine:
            continue
        if find_v2_store(job.list_path) is not None:  # imported (import-v2): its lines are the pages' manifest paths
            list_path = job.list_path
            lines = [job.page(row).manifest_path for row in mine]
            entries = {e.page_id: e for e in entries_of_lines(lines, args.dataspec_root, path_maps) if e is not None}
        else:
            listed = given if given is not None and given.sha256 == job.list_sha256 else None
            listed = listed or read_list(job.list_path, args.dataspec_root, path_maps)
            list_path = str(listed.list_path)
            entries = {e.page_id: e for e in listed.entries}
        for row in mine:
            page_id = job.page(row).page_id
            entry = entries.get(page_id)
            if entry is None:
                task = PageTask(row=row, page_id=page_id, error=f"page {page_id} is no longer in {list_path}")
            else:
                task = plan_entry(entry, resolver).task
                task.row = row
            if task.error:
                problems.append(task.error)
            tasks.append(task)
    return tasks, problems


def prepare(args: argparse.Namespace, model: ModelIdentity) -> RetryPlan | None:
    """The round to send (None when the store has no failed page); written before anything is sent."""
    path = store_path(args.output_dir)
    if not path.exists():
        raise UsageError(f"--retry-failed: no store at {path}")
    with planning_lock(args.output_dir):
        rounds = load_rounds(args.output_dir)
        if rounds:
            owed = owed_retries(args.output_dir, path)[rounds[-1].job_id]
            if owed:
                return RetryPlan(rounds[-1], resumed=True, owed=owed)
        rows = failed_rows(args.output_dir)
        if not rows:
            return None
        tasks, problems = _tasks(args, load_jobs(args.output_dir), rows)
        size = args.batch_size
        if size < 1:
            raise UsageError(f"batch size must be at least 1, got {size}")
        batches = [tasks[i : i + size] for i in range(0, len(tasks), size)]
        number, first = next_round_layout(args.output_dir)
        rnd = new_round(
            number, first, [[t.row for t in b] for b in batches], [[t.page_id for t in b] for b in batches], model
        )
        store = store_id(args.output_dir)
        assert store is not None  # a store has a first job
        roots = ImageResolver(args.image_root).texts()

        def payloads() -> Iterator[TaskPayload]:
            for k, pages in enumerate(batches):
                yield TaskPayload(
                    v=TASK_FORMAT,
                    job=rnd.job_id,
                    batch_id=first + k,
                    store_id=store,
                    image_roots=roots,
                    pages=pages,
                    model=model,
                )

        write_tasks(args.output_dir, rnd, payloads())
        write_round(args.output_dir, rnd)
    return RetryPlan(rnd, resumed=False, owed=rnd.batch_ids(), still_failing=problems)


def send(args: argparse.Namespace, plan: RetryPlan) -> int:
    """Send the batches the round owes (a new round's rows lose any crash recorded for them: the
    user asks for a new attempt); how many were sent."""
    app = configure(args.broker)
    client = connect(app.conf.broker_url)
    store = store_id(args.output_dir)
    assert store is not None
    if not plan.resumed:
        deliveries.forget_crashes(client, store, [r for rows in plan.round.rows for r in rows])
    payloads = iter_tasks(args.output_dir, plan.round)
    assert payloads is not None  # a round always keeps its payloads
    wanted = set(plan.owed)
    sent = 0
    with app.producer_or_acquire() as producer:
        for payload in payloads:
            if payload.batch_id in wanted:
                deliveries.send(
                    client, payload, None, config.PRIORITY_AGAIN if plan.resumed else config.PRIORITY_NEW, producer
                )
                sent += 1
    return sent


def write_round(output_dir: str | os.PathLike[str], rnd: RetryRound) -> None:
    write_json_atomic(round_path(output_dir, rnd.number), msgspec.to_builtins(rnd))


def next_round_layout(output_dir: str | os.PathLike[str]) -> tuple[int, int]:
    """(number, first batch id) of the next round."""
    rounds = load_rounds(output_dir)
    if not rounds:
        return 1, RETRY_BASE
    last = rounds[-1]
    return last.number + 1, last.first_batch + last.batch_count()


def new_round(number: int, first_batch: int, rows: list[list[int]], page_ids: list[list[str]], model: ModelIdentity):
    return RetryRound(
        job_id=f"retry_{number:06d}",
        number=number,
        created=utc_now(),
        first_batch=first_batch,
        rows=rows,
        page_ids=page_ids,
        model=model,
    )
