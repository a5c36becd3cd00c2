"""`comix-embed enqueue`: validate a list, register it as a job bound to a model, send its batches.

The job records the model's identity (`--checkpoint`, `--tokenizer`, `--encoder-mode`; for a job
appended to a store, the store's model unless named) and keeps every batch's task payload beside
its job file. Batches go to their model's queue, which only workers with that model consume.
Run again, it sends what EVERY registered job of the store still owes (batches without a
manifest), not only the current list's, skipping those sent within the last visibility timeout
(`--resend` sends them all, and gives batches refused or lost before new attempts): that is how
anything lost anywhere (a flushed or restarted Redis, a task dropped at fetch) is recovered.
Batches sent before go ahead of new ones. The store and its manifests are the truth, never Redis.
With `--retry-failed` it plans (or resumes) a retry round of the store's failed pages and sends
that instead (producer/retry.py).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from comix_embed.common import config
from comix_embed.common.broker import deliveries
from comix_embed.common.broker.connection import connect
from comix_embed.common.broker.redis_memory import describe_limit, is_out_of_memory
from comix_embed.common.broker.results_stream import store_id, store_id_of
from comix_embed.common.celery_app import configure
from comix_embed.common.errors import EXIT_OK, CommandError, UsageError
from comix_embed.common.inputs.listfile import read_list
from comix_embed.common.inputs.paths import ImageResolver, parse_path_map
from comix_embed.common.inputs.reading import add_remote_arguments
from comix_embed.common.messages import TASK_FORMAT, ModelIdentity, TaskPayload
from comix_embed.common.model.identity import check_same_model, describe, identify, queue_name
from comix_embed.common.model.options import add_model_arguments
from comix_embed.common.store.jobs import Job, JobPage, iter_tasks, load_jobs
from comix_embed.common.store.manifests import store_owed
from comix_embed.common.store.reading import read_attrs
from comix_embed.common.store.schema import store_path
from comix_embed.common.store.v2 import IMPORT_ATTRIBUTE
from comix_embed.producer import retry
from comix_embed.producer.jobs import plan_job
from comix_embed.producer.plan import PlannedPage, plan_pages

log = logging.getLogger(__name__)


@dataclass
class EnqueueReport:
    job: Job | None
    store: str | None
    pages: int = 0
    failed_at_producer: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    dropped_panels: int = 0
    model: ModelIdentity | None = None
    batches_sent: int = 0
    batches_committed: int = 0
    batches_recently_sent: int = 0  # owed, but sent within the visibility timeout: not sent again
    other_jobs: list[str] = field(default_factory=list)  # what earlier unfinished jobs owed
    sent: bool = False  # batches were sent (the counts below are known)

    def sent_lines(self) -> list[str]:
        """What was sent, once it was: the unfinished jobs and the batch counts."""
        if not self.sent:
            return []
        return [
            *self.other_jobs,
            f"batches: {self.batches_committed} already committed, {self.batches_recently_sent} sent recently "
            f"(not again), {self.batches_sent} sent now",
        ]

    def lines(self, limit: int = 20) -> list[str]:
        out = []
        if self.job is None:
            out.append(f"no new job: all {len(self.skipped)} pages are already in the store")
        else:
            total = self.job.batch_count()
            out.append(
                f"{self.job.job_id}: {self.job.page_count} pages in rows {self.job.start_row}-{self.job.end_row - 1}, "
                f"{total} batches of {self.job.batch_size}"
            )
        if self.model is not None:
            out.append(f"model: {describe(self.model)}; queue {queue_name(self.model)}")
        out += self.sent_lines()
        for label, items in (
            ("list problems", self.problems),
            ("pages that will be recorded as failed", self.failed_at_producer),
            ("pages skipped (not embedded again)", self.skipped),
        ):
            if items:
                out.append(f"{label}: {len(items)}")
                out += [f"  {m}" for m in items[:limit]]
                if len(items) > limit:
                    out.append(f"  ... and {len(items) - limit} more")
        if self.dropped_panels:
            out.append(
                f"panels beyond {config.MAX_PANELS} per page or without a usable box: {self.dropped_panels} (not embedded)"
            )
        return out


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say what to embed and where it goes (shared with `run`)."""
    parser.add_argument(
        "--list",
        "--amazon_json_list",
        dest="list",
        required=True,
        help="list file of DataSpec paths: a local file, or s3://bucket/key",
    )
    parser.add_argument(
        "--image-root",
        "--amazon_image_root",
        dest="image_root",
        action="append",
        required=True,
        help="where the page images lie: a folder, s3://bucket/prefix/ or https://host/prefix/ (repeatable)",
    )
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, required=True)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    parser.add_argument(
        "--path-map",
        action="append",
        default=[],
        help=r"PREFIX=DIR or PREFIX=s3://bucket/prefix/, e.g. E:\CalibreComics_extracted=/data/comics",
    )
    parser.add_argument(
        "--dataspec-root", help="folder, or s3://bucket/prefix/, that relative list lines resolve against"
    )
    add_remote_arguments(parser)
    parser.add_argument("--incremental", action="store_true", help="append a new list to an existing store")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="embed again the store's failed pages (status 2), reading their DataSpecs and images again",
    )
    parser.add_argument("--broker", help="broker URL (default $COMIX_BROKER_URL, else redis://127.0.0.1:6379/0)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    # the model the job is bound to (`run` takes the same options from the worker's)
    add_model_arguments(
        parser,
        required=False,
        checkpoint_help="the model the job is bound to (default: the store's, for an existing store)",
    )
    parser.add_argument(
        "--resend",
        action="store_true",
        help="send every uncommitted batch, even if recently sent, and give refused or lost batches new attempts",
    )


def bind_model(args: argparse.Namespace, jobs: list[Job], named: ModelIdentity | None = None) -> ModelIdentity:
    """The model this run binds the list to: `named` (or the one `--checkpoint` names), which must
    be the store's and every earlier job's; without one, the store's latest job's."""
    path = store_path(args.output_dir)
    attrs = read_attrs(path) if path.exists() else None
    imported = (attrs or {}).get(IMPORT_ATTRIBUTE)
    if isinstance(imported, dict) and not imported.get("finished"):
        raise UsageError(
            f"{path} is an import from {imported.get('path')} that is not finished: run `comix-embed import-v2` "
            "again with the same --from and --output-dir to finish it"
        )
    if named is None and getattr(args, "checkpoint", None) is not None:
        named = identify(args.checkpoint, args.tokenizer, args.encoder_mode, trust=args.trust_checkpoint)
    if named is None:
        bound = [j.model for j in jobs if j.model is not None]
        if not bound:
            raise UsageError("pass --checkpoint: a job is bound to the model that embeds it (and so is its store)")
        named = bound[-1]
    what = f"checkpoint {getattr(args, 'checkpoint', None) or named.checkpoint_sha256}"
    if attrs is not None:
        check_same_model(attrs, named, what=what, whose=f"store {path}")
    for job in jobs:
        if job.model is not None:
            check_same_model(job.model, named, what=what, whose=f"job {job.job_id}")
    return named


def plan(args: argparse.Namespace, model: ModelIdentity | None = None) -> tuple[Job | None, EnqueueReport]:
    """Read and check the list, bind it to the model, register the job with its task payloads
    (or find it); no broker needed."""
    path_maps = [parse_path_map(m) for m in args.path_map]
    listed = read_list(args.list, args.dataspec_root, path_maps)
    resolver = ImageResolver(args.image_root, path_maps)
    model = bind_model(args, load_jobs(args.output_dir), model)
    planned = plan_pages(listed, resolver, progress=len(listed.entries) > 2000)
    job_pages = [
        JobPage(
            page_id=p.task.page_id,
            manifest_path=p.manifest_path,
            panel_count=p.panel_count,
            dropped_panels=p.dropped_panels,
            **p.metadata,
        )
        for p in planned
    ]

    def tasks(job: Job, first: Job):
        return batch_payloads(job, planned, store_id_of(first), resolver.texts(), job.model or model)

    job, skipped = plan_job(
        args.output_dir,
        str(listed.list_path),
        job_pages,
        args.batch_size,
        args.incremental,
        model,
        tasks,
        list_sha256=listed.sha256,
    )
    report = EnqueueReport(job=job, store=store_id(args.output_dir), pages=len(planned), model=model)
    report.problems = [d.message for d in listed.duplicates]
    report.failed_at_producer = [p.task.error for p in planned if p.task.error]
    report.skipped = [f"{page.manifest_path}: {reason}" for page, reason in skipped]
    report.dropped_panels = sum(p.dropped_panels for p in planned)
    return job, report


def batch_payloads(job: Job, planned: list[PlannedPage], store: str, image_roots: list[str], model: ModelIdentity):
    """One task payload per batch of the job, in order, pages with their rows (`image_roots` as
    the resolver gives them: absolute folders, prefix URLs)."""
    by_id = {p.task.page_id: p.task for p in planned}
    for batch_id, start, end in job.batches():
        pages = []
        for row in range(start, end):
            task = by_id[job.page(row).page_id]
            task.row = row
            pages.append(task)
        yield TaskPayload(
            v=TASK_FORMAT,
            job=job.job_id,
            batch_id=batch_id,
            store_id=store,
            image_roots=image_roots,
            pages=pages,
            model=model,
        )


def send_owed(
    args: argparse.Namespace, report: EnqueueReport, skip_recent: bool = True, new_attempts: bool = False
) -> dict[str, list[int]]:
    """Send every batch that any job of the store still owes (no manifest), unless it was sent
    within the visibility timeout (`skip_recent`); batches sent before go ahead of new ones.
    Returns what each job owed. A Redis out of memory stops it with RedisFull, naming the limit:
    what was sent stays sent, and running it again sends the rest."""
    app = configure(args.broker)
    client = connect(app.conf.broker_url)
    jobs = load_jobs(args.output_dir)
    owed = store_owed(store_path(args.output_dir), jobs)
    store = report.store
    assert store is not None
    report.batches_committed = sum(j.batch_count() - len(owed[j.job_id]) for j in jobs)
    report.other_jobs = []
    sent_now: list[int] = []
    try:
        _send(args, report, client, app, jobs, owed, skip_recent, sent_now)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        total = sum(len(b) for b in owed.values())
        raise RedisFull(
            f"{describe_limit(client)}. enqueue sent {len(sent_now)} of {total} batches owed; once Redis has "
            "room, run it again: it sends the rest"
        ) from None
    if new_attempts:
        deliveries.give_new_attempts(client, store, sent_now)
    report.batches_sent += len(sent_now)
    report.sent = True
    return owed


def _send(
    args: argparse.Namespace,
    report: EnqueueReport,
    client: redis.Redis,
    app: Any,
    jobs: list[Job],
    owed: dict[str, list[int]],
    skip_recent: bool,
    sent_now: list[int],
) -> None:
    """The sending loop of `send_owed`; `sent_now` gets each batch id once it is sent."""
    assert report.store is not None
    sent = deliveries.recently_sent(client, report.store)
    now = time.time()
    with app.producer_or_acquire() as producer:
        for job in jobs:
            wanted = set(owed[job.job_id])
            if not wanted:
                continue
            if report.job is None or job.job_id != report.job.job_id:
                report.other_jobs.append(
                    f"{job.job_id} (unfinished): {len(wanted)} of {job.batch_count()} batches owed"
                )
            payloads = iter_tasks(args.output_dir, job)
            if payloads is None:
                report.other_jobs.append(
                    f"  {job.job_id} was enqueued by an older version and keeps no task payloads: "
                    f"enqueue its list ({job.list_path}) again to resume it"
                )
                continue
            for payload in payloads:
                if payload.batch_id not in wanted:
                    continue
                if skip_recent and now - sent.get(payload.batch_id, 0.0) < config.VISIBILITY_TIMEOUT:
                    report.batches_recently_sent += 1
                    continue
                payload.model = payload.model or job.model or report.model
                again = payload.batch_id in sent
                deliveries.send(
                    client, payload, None, config.PRIORITY_AGAIN if again else config.PRIORITY_NEW, producer
                )
                sent_now.append(payload.batch_id)


class RedisFull(CommandError):
    """Redis refused the batches for lack of memory: `enqueue` stops with exit status 1."""


def enqueue(args: argparse.Namespace, resend: bool = False) -> EnqueueReport:
    _job, report = plan(args)
    send_owed(args, report, skip_recent=not resend, new_attempts=resend)
    return report


def run(args: argparse.Namespace) -> int:
    if args.retry_failed:
        return _retry(args)
    report = enqueue(args, resend=args.resend)
    print("\n".join(report.lines()))
    return EXIT_OK


def _retry(args: argparse.Namespace) -> int:
    """Plan (or resume) a retry round of the store's failed pages and send it; the writer commits it."""
    plan_ = retry.prepare(args, bind_model(args, load_jobs(args.output_dir)))
    if plan_ is None:
        print(f"{retry.NO_FAILED} in {store_path(args.output_dir)}")
        return EXIT_OK
    print("\n".join(plan_.lines()))
    print(f"retry batches sent: {retry.send(args, plan_)}")
    return EXIT_OK
