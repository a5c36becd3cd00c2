"""`comix-embed status`: where a store's jobs stand, from the store and from the broker.

Committed and failed pages come from the manifests (the truth), retries (`--retry-failed`)
from the retry manifests; the model each job is bound to from its job file; queued and in-flight
batches, batches whose holder is gone (their batch lease expired), lost deliveries, batches given
up and results set aside (with their reasons) from Redis (a view that may lag or be empty after a
broker restart: `enqueue` again re-sends what is owed), and the writer holding the store's writer
lease. The rate is measured over the most recent manifests, so it reflects the run now going.
The report is a `StatusReport`; `--json` prints it as one object.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import msgspec
import redis

from comix_embed.common import config
from comix_embed.common.broker import batch_lease, deliveries, keys
from comix_embed.common.broker.connection import connect
from comix_embed.common.broker.deliveries import Refusal
from comix_embed.common.broker.results_stream import results_key, store_id
from comix_embed.common.broker.writer_lease import WriterLeaseHolder, current_holder
from comix_embed.common.celery_app import configure
from comix_embed.common.errors import EXIT_OK, UsageError
from comix_embed.common.messages import ModelIdentity, encode_json
from comix_embed.common.model.identity import describe, identity_of, is_legacy_tokenizer, queue_name
from comix_embed.common.store.attributes import StoreAttributes
from comix_embed.common.store.jobs import Job, load_jobs
from comix_embed.common.store.manifests import Committed, load_committed, owed_batches, recent_manifests
from comix_embed.common.store.reading import read_attrs
from comix_embed.common.store.retries import failed_now, owed_retries
from comix_embed.common.store.schema import store_path

RATE_WINDOW = 50  # most recent manifests the rate is measured over
UNSET = msgspec.UNSET


class WriterShown(WriterLeaseHolder, frozen=True, kw_only=True):
    """The writer holding the store's writer lease, and the seconds before that lease expires
    unless its writer renews it."""

    lease_left_s: float


class HolderGone(msgspec.Struct, kw_only=True):
    """A batch whose batch lease expired: its holder (a worker's node name, and pid) is gone."""

    batch: int
    holder: str
    pid: int
    lease_expired_s_ago: float


class StatusReport(msgspec.Struct, kw_only=True):
    """What `status` shows, and what `status --json` prints as one object: the store's side,
    then the broker's (every broker field, or `broker_error` when the broker cannot be reached)."""

    store: str
    jobs: list[str]
    models: dict[str, str]  # job id -> its model, described
    store_model: str | None
    registered_pages: int
    committed_rows: int
    pages_with_manifest: int
    failed_pages: int
    owed_batches: int
    retry_rounds: int
    retried_pages: int
    retried_embedded: int
    owed_retry_batches: int
    pages_per_s: float | None
    eta_s: int | None
    broker_error: str | msgspec.UnsetType = UNSET
    writer: WriterShown | None | msgspec.UnsetType = UNSET
    queues: list[str] | msgspec.UnsetType = UNSET
    queued_batches: int | msgspec.UnsetType = UNSET
    in_flight_batches: int | msgspec.UnsetType = UNSET
    awaiting_writer_batches: int | msgspec.UnsetType = UNSET
    holders_gone: list[HolderGone] | msgspec.UnsetType = UNSET
    lost_deliveries: dict[int, int] | msgspec.UnsetType = UNSET
    given_up_batches: dict[int, str] | msgspec.UnsetType = UNSET
    refused_results: int | msgspec.UnsetType = UNSET
    refused_latest: list[Refusal] | msgspec.UnsetType = UNSET
    refused_out: dict[int, str] | msgspec.UnsetType = UNSET


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, required=True)
    parser.add_argument("--broker", help="broker URL (default $COMIX_BROKER_URL, else redis://127.0.0.1:6379/0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _rate(store: Path, jobs: list[Job]) -> float | None:
    """Pages per second over the last manifests, from their files' modification times."""
    recent = recent_manifests(store, RATE_WINDOW)
    if len(recent) < 2 or recent[-1][0] - recent[0][0] <= 0:
        return None
    return sum(_batch_pages(jobs, b) for _, b in recent[1:]) / (recent[-1][0] - recent[0][0])


def _batch_pages(jobs: list[Job], batch_id: int) -> int:
    for job in jobs:
        if job.holds_batch(batch_id):
            start, end = job.batch(batch_id)
            return end - start
    return 0


def _models(jobs: list[Job], attrs: dict | None) -> dict[str, ModelIdentity]:
    """The model each job is bound to; a job from before binding takes the store's."""
    store_model = identity_of(attrs) if attrs and "checkpoint_sha256" in attrs else None
    return {j.job_id: m for j in jobs if (m := j.model or store_model) is not None}


# `status` answers at once: it waits this long for a broker that does not answer (a failover under
# way) before it shows the broker as unreachable, not COMIX_BROKER_WAIT_S.
BROKER_WAIT_S = 3.0


def _broker_view(report: StatusReport, url: str, store: str, models: dict[str, ModelIdentity], owed: set[int]) -> None:
    """Fill in the broker's side of `report`, or why the broker could not be read."""
    client = connect(url, wait_s=BROKER_WAIT_S)
    queues = sorted({queue_name(m) for m in models.values() if not is_legacy_tokenizer(m.tokenizer)})
    try:
        now = time.time()
        held = batch_lease.batch_leases(client, store)
        writer = current_holder(client, store)
        refused_count, refused_latest = deliveries.refused_entries(client, store)
        lost = {int(b): int(n) for b, n in client.hgetall(keys.LOST.format(store=store)).items()}
        queued = sum(deliveries.queued(client, q) for q in queues)
        awaiting = int(client.xlen(results_key(store)))
        given_up = deliveries.given_up(client, store)
        refused_out = deliveries.refused_out(client, store, owed)
    except redis.RedisError as exc:
        report.broker_error = f"{config.masked_url(url)}: {exc}"
        return
    if writer is not None:
        report.writer = WriterShown(**msgspec.structs.asdict(writer[0]), lease_left_s=round(writer[1], 1))
    else:
        report.writer = None
    report.queues = queues
    report.queued_batches = queued
    report.in_flight_batches = sum(1 for info in held if info.expires >= now)
    report.awaiting_writer_batches = awaiting
    report.holders_gone = [
        HolderGone(batch=info.batch, holder=info.holder, pid=info.pid, lease_expired_s_ago=round(now - info.expires, 1))
        for info in held
        if info.expires < now
    ]
    report.lost_deliveries = {b: n for b, n in sorted(lost.items()) if b in owed}
    report.given_up_batches = given_up
    report.refused_results = refused_count
    report.refused_latest = refused_latest
    report.refused_out = refused_out


def collect(output_dir: Path, broker: str | None) -> StatusReport:
    jobs = load_jobs(output_dir)
    if not jobs:
        raise UsageError(f"no job in {output_dir / config.JOBS_DIR_NAME}: nothing was enqueued there")
    path = store_path(output_dir)
    attrs = read_attrs(path) if path.exists() else None
    # the checkpoint and the few manifests past it: a million pages cost what a hundred do
    committed = load_committed(path)[0] if path.exists() else Committed()
    registered = sum(j.page_count for j in jobs)
    done = committed.pages()
    failed, retried = failed_now(path, committed.status_count("failed"))
    embedded_again = sum(1 for st in retried.values() if st != "failed")
    owed_retry = owed_retries(output_dir, path)
    rate = _rate(path, jobs) if len(committed) else None
    owed = owed_batches(jobs, committed)
    models = _models(jobs, attrs)
    report = StatusReport(
        store=str(path),
        jobs=[j.job_id for j in jobs],
        models={job_id: describe(m) for job_id, m in models.items()},
        store_model=describe(attrs) if attrs and "checkpoint_sha256" in attrs else None,
        registered_pages=registered,
        committed_rows=StoreAttributes.of(attrs).committed_rows if attrs else 0,
        pages_with_manifest=done,
        failed_pages=failed,
        owed_batches=sum(len(v) for v in owed.values()),
        retry_rounds=len(owed_retry),
        retried_pages=len(retried),
        retried_embedded=embedded_again,
        owed_retry_batches=sum(len(v) for v in owed_retry.values()),
        pages_per_s=round(rate, 2) if rate else None,
        eta_s=round((registered - done) / rate) if rate and done < registered else None,
    )
    all_owed = {b for v in (*owed.values(), *owed_retry.values()) for b in v}
    store = store_id(output_dir)
    assert store is not None  # there is a first job
    _broker_view(report, configure(broker).conf.broker_url, store, models, all_owed)
    return report


def duration(seconds: float) -> str:
    """H:MM:SS, with days in front past 24 hours ("3d 04:05:06"): a million pages take days."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def _lines(s: StatusReport) -> list[str]:
    out = [f"store: {s.store} ({', '.join(s.jobs)})"]
    if s.store_model:
        out.append(f"store model: {s.store_model}")
    for job_id, model in s.models.items():
        out.append(f"{job_id} model: {model}")
    out.append(
        f"committed: {s.pages_with_manifest} of {s.registered_pages} pages "
        f"({s.committed_rows} rows readable in order), failed: {s.failed_pages}"
    )
    if s.retry_rounds:
        out.append(
            f"retries: {s.retry_rounds} round(s); {s.retried_pages} failed pages retried, "
            f"{s.retried_embedded} now embedded, {s.retried_pages - s.retried_embedded} still failed; "
            f"{s.owed_retry_batches} retry batches owed"
        )
    if s.broker_error:
        out.append(f"broker: unreachable ({s.broker_error})")
    else:
        out.append(
            f"broker: {s.queued_batches} batches queued, {s.in_flight_batches} in flight, "
            f"{s.awaiting_writer_batches} waiting for the writer; {s.owed_batches} batches owed"
        )
        w = s.writer
        out.append(
            f"writer: host {w.host}, pid {w.pid}, writer lease token {w.token} since {w.since}"
            f" (the writer lease expires in {w.lease_left_s} s unless its writer renews it)"
            if w
            else "writer: none holds the store's writer lease (no writer is running, or none started yet)"
        )
    for gone in s.holders_gone or []:
        out.append(
            f"holder gone: batch {gone.batch} was held by {gone.holder} (pid {gone.pid}), whose batch lease "
            f"expired {gone.lease_expired_s_ago} s ago; the writer sends it again"
        )
    for batch, n in (s.lost_deliveries or {}).items():
        out.append(f"lost deliveries: batch {batch} lost {n} of {config.MAX_ATTEMPTS}")
    for batch, reason in (s.given_up_batches or {}).items():
        out.append(f"given up: batch {batch}: {reason}")
    if s.refused_results:
        out.append(f"results set aside: {s.refused_results} (latest first)")
        out += [f"  batch {e.batch or '?'}: {e.reason}" for e in s.refused_latest or []]
    for batch, reason in (s.refused_out or {}).items():
        out.append(f"refused {config.MAX_ATTEMPTS} times: batch {batch}: {reason}")
    if s.pages_per_s:
        eta = duration(s.eta_s) if s.eta_s else "done"
        out.append(f"rate: {s.pages_per_s} pages/s, ETA {eta}")
    if s.owed_batches and not s.queued_batches and not s.in_flight_batches and not s.awaiting_writer_batches:
        out.append("nothing is queued for the owed batches: run `comix-embed enqueue` again to re-send them")
    return out


def run(args: argparse.Namespace) -> int:
    report = collect(args.output_dir, args.broker)
    print(encode_json(report).decode() if args.json else "\n".join(_lines(report)))
    return EXIT_OK
