"""`comix-embed enqueue`: validate a list, register it as a job, send one task per batch.

Run again, it sends only the batches that have no manifest (and were not sent within the last
visibility timeout): that is how anything lost anywhere (a flushed or restarted Redis, a task
dropped at fetch) is recovered. The store and its manifests are the truth, never Redis.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from comix_embed.common import config
from comix_embed.common.celery_app import configure
from comix_embed.common.jobs import Job, JobPage, plan_job
from comix_embed.common.listfile import read_list
from comix_embed.common.manifests import owed_batches
from comix_embed.common.paths import ImageResolver, parse_path_map
from comix_embed.common.results_channel import connect, store_id
from comix_embed.common.store import store_path
from comix_embed.producer.plan import PlannedPage, plan_pages

log = logging.getLogger(__name__)
SENT_KEY = "comix:sent:{store}"  # hash: batch id -> time sent, forgotten with Redis itself


@dataclass
class EnqueueReport:
    job: Job | None
    store: str | None
    pages: int = 0
    failed_at_producer: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    dropped_panels: int = 0
    batches_sent: int = 0
    batches_committed: int = 0
    batches_in_flight: int = 0

    def lines(self, limit: int = 20) -> list[str]:
        out = []
        if self.job is None:
            out.append(f"nothing to do: all {len(self.skipped)} pages are already in the store")
            return out
        total = len(self.job.batches())
        out.append(
            f"{self.job.job_id}: {len(self.job.pages)} pages in rows {self.job.start_row}-{self.job.end_row - 1}, "
            f"{total} batches of {self.job.batch_size}"
        )
        out.append(
            f"batches: {self.batches_committed} already committed, {self.batches_in_flight} already queued, "
            f"{self.batches_sent} sent now"
        )
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
        "--list", "--amazon_json_list", dest="list", type=Path, required=True, help="list file of DataSpec paths"
    )
    parser.add_argument(
        "--image-root",
        "--amazon_image_root",
        dest="image_root",
        type=Path,
        action="append",
        required=True,
        help="directory the page images lie under (repeatable)",
    )
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, required=True)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    parser.add_argument(
        "--path-map", action="append", default=[], help=r"PREFIX=DIR, e.g. E:\CalibreComics_extracted=/data/comics"
    )
    parser.add_argument("--dataspec-root", type=Path, help="directory relative list lines resolve against")
    parser.add_argument("--incremental", action="store_true", help="append a new list to an existing store")
    parser.add_argument("--broker", help="broker URL (default $COMIX_BROKER_URL, else redis://127.0.0.1:6379/0)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--resend", action="store_true", help="send every uncommitted batch, even if recently sent")


def plan(args: argparse.Namespace) -> tuple[Job | None, list[PlannedPage], EnqueueReport]:
    """Read and check the list, register the job (or find it); no broker needed."""
    path_maps = [parse_path_map(m) for m in args.path_map]
    listed = read_list(args.list, args.dataspec_root, path_maps)
    resolver = ImageResolver(args.image_root, path_maps)
    planned = plan_pages(listed, resolver, progress=len(listed.entries) > 2000)
    job_pages = [
        JobPage(page_id=p.task.page_id, manifest_path=p.manifest_path, panel_count=p.panel_count, **p.metadata)
        for p in planned
    ]
    job, skipped = plan_job(args.output_dir, args.list, job_pages, args.batch_size, args.incremental)
    report = EnqueueReport(job=job, store=store_id(args.output_dir), pages=len(planned))
    report.problems = [d.message for d in listed.duplicates]
    report.failed_at_producer = [p.task.error for p in planned if p.task.error]
    report.skipped = [f"{page.manifest_path}: {reason}" for page, reason in skipped]
    report.dropped_panels = sum(p.dropped_panels for p in planned)
    return job, planned, report


def batch_payloads(job: Job, planned: list[PlannedPage], store: str, roots: list[Path]) -> dict[int, dict]:
    """One JSON task payload per batch of the job, pages with their rows."""
    by_id = {p.task.page_id: p.task for p in planned}
    payloads = {}
    for batch_id, start, end in job.batches():
        pages = []
        for row in range(start, end):
            task = by_id[job.page(row).page_id]
            task.row = row
            pages.append(task.to_json())
        payloads[batch_id] = {
            "job": job.job_id,
            "batch_id": batch_id,
            "store_id": store,
            "image_roots": [str(r.resolve()) for r in roots],
            "pages": pages,
        }
    return payloads


def send_owed(
    job: Job, planned: list[PlannedPage], args: argparse.Namespace, report: EnqueueReport, resend: bool = False
) -> None:
    """Send every batch of `job` without a manifest, unless it was sent within the lease."""
    app = configure(args.broker)
    client = connect(app.conf.broker_url)
    owed = owed_batches(store_path(args.output_dir), job)
    report.batches_committed = len(job.batches()) - len(owed)
    sent_key = SENT_KEY.format(store=report.store)
    sent = {int(k): float(v) for k, v in client.hgetall(sent_key).items()}
    now = time.time()
    payloads = batch_payloads(job, planned, report.store, args.image_root)
    sent_now = {}
    with app.producer_or_acquire() as producer:
        for batch_id in owed:
            if not resend and now - sent.get(batch_id, 0.0) < config.VISIBILITY_TIMEOUT:
                report.batches_in_flight += 1
                continue
            app.send_task(
                "comix.embed_batch",
                args=[payloads[batch_id]],
                queue=config.EMBED_QUEUE,
                producer=producer,
                retry=True,
                retry_policy={"max_retries": 10, "interval_start": 0.5, "interval_step": 1},
            )
            sent_now[batch_id] = now
            if len(sent_now) % 1000 == 0:  # large jobs: record as it goes
                client.hset(sent_key, mapping=sent_now)
    if sent_now:
        client.hset(sent_key, mapping=sent_now)
    report.batches_sent += len(sent_now)


def enqueue(args: argparse.Namespace, resend: bool = False) -> EnqueueReport:
    job, planned, report = plan(args)
    if job is not None:
        send_owed(job, planned, args, report, resend)
    return report


def run(args: argparse.Namespace) -> int:
    report = enqueue(args, resend=args.resend)
    print("\n".join(report.lines()))
    return 0
