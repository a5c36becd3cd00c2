"""`comix-embed writer`: the store's single writer, fed from the results stream in Redis.

Reads results as they come (its own unacknowledged ones first, after a crash) and holds them
until `writer/grouping.py` says they go: runs that continue the readable prefix, cut at shard
boundaries, within about a second; results past a gap within WRITER_GAP_LINGER_S. It commits them
(rows, then manifests, then `committed_rows`) and only then acknowledges them in Redis. A failing
--verify-batches or --write-check stops the writer (exit status 1) naming the batch and page.
Nothing else stops it:
- a result it cannot use (another model, one that does not fit its job, one that does not decode)
  is set aside with its reason (`status` shows it), acknowledged, counted against its batch and
  the batch sent again, up to COMIX_MAX_ATTEMPTS refusals; the others go on;
- any Redis error is retried like a lost connection, re-reading what was not acknowledged.
Being the one process always there, it also ends deliveries whose holder is gone: every
WRITER_SCAN_S it sends again (from the job's kept payloads) each batch whose batch lease expired
without a manifest (common/broker/batch_lease.py), and commits as failed rows the batches lost
COMIX_MAX_ATTEMPTS times (common/broker/deliveries.py). Every commit goes through `_may_commit`,
where the store's writer lease (writer/lease.py) is checked: a writer whose writer lease passed to
another stops (exit status 2). At start it takes the output folder's lock before the writer lease,
which proves a writer of this host that held the lease dead and lets it take over at once; a
writer that finds a live writer's lock, or a writer lease its holder keeps renewing, stops (exit
status 2). A full disk stops it with exit status 4 (writer/diskfull.py); started again once there
is room, it resumes. SIGTERM or SIGINT stops it after the commit under way: what it read and did
not commit stays unacknowledged, for the next writer to read first.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Any

import redis

from comix_embed.common import config
from comix_embed.common.broker import batch_lease, deliveries
from comix_embed.common.broker.connection import connect
from comix_embed.common.broker.results_stream import Entry, Malformed, ResultsReader, store_id
from comix_embed.common.celery_app import configure
from comix_embed.common.errors import EXIT_OK
from comix_embed.common.messages import MalformedMessage, TaskPayload
from comix_embed.common.model.identity import ModelMismatch
from comix_embed.common.store.jobs import read_task
from comix_embed.common.store.results import BatchResult
from comix_embed.common.store.retries import batch_rows
from comix_embed.writer import grouping, recovery
from comix_embed.writer.commit import InvalidResult, StoreWriter
from comix_embed.writer.grouping import Held
from comix_embed.writer.lease import WriterLease

log = logging.getLogger("comix.writer")
_KEPT_BYTES = 4096  # of a malformed entry's data, kept beside its reason


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, required=True)
    parser.add_argument("--broker", help="broker URL (default $COMIX_BROKER_URL, else redis://127.0.0.1:6379/0)")
    parser.add_argument("--verify-batches", "--verify_batches", dest="verify_batches", action="store_true")
    parser.add_argument("--write-check", "--write_check", dest="write_check", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="one [PAGE] line per committed page")
    parser.add_argument(
        "--read", type=int, default=0, help="results committed together, at most (default: as group commit cuts them)"
    )


class WriterService:
    """The loop: read results, commit, acknowledge; stops on SIGTERM/SIGINT after the commit at hand."""

    def __init__(
        self, writer: StoreWriter, client: redis.Redis, output_dir: Path, read: int, lease: WriterLease | None = None
    ) -> None:
        self.writer = writer
        self.lease = lease
        self.client = client
        self.output_dir = output_dir
        self.read = read
        self.stopping = False
        self.reader: ResultsReader | None = None
        self._owed: set[int] | None = None  # batch ids the jobs still owe, kept as commits go
        self._held: dict[int, Held] = {}  # read, not committed yet (writer/grouping.py)
        self._next_scan = 0.0

    def stop(self, *_: object) -> None:
        self.stopping = True

    def _reader(self) -> ResultsReader | None:
        if self.reader is None:
            store = store_id(self.output_dir)
            if store is None:
                return None
            if self.lease is None:
                self.reader = ResultsReader(self.client, store)
            else:
                self.reader = ResultsReader(self.client, store, self.lease.consumer)
                self._adopt()
            log.info("reading results of store %s from %s as %s", store, self.reader.key, self.reader.consumer)
        return self.reader

    def _adopt(self) -> None:
        """Read again first what earlier writers (lower tokens) read without acknowledging."""
        if self.reader is not None and self.lease is not None:
            taken = self.reader.adopt(idle_ms=int(2000 * self.lease.ttl_s))
            if taken:
                log.info("took over %d results that earlier writers left unacknowledged", taken)

    def _may_commit(self) -> None:
        """Checked before each commit: a writer whose writer lease passed to another raises
        WriterLeaseLost here and commits nothing more; a writer lease taken again after Redis lost
        it brings a new token, and so a new consumer name."""
        if self.lease is None:
            return
        self.lease.check()
        if self.reader is not None and self.reader.consumer != self.lease.consumer:
            self.reader.consumer = self.lease.consumer
            self.reader.reread_pending()
            self._adopt()

    def serve(self) -> None:
        waited = False
        while not self.stopping:
            reader = self._reader()
            if reader is None:
                if not waited:
                    log.info("waiting for a job in %s", self.output_dir / config.JOBS_DIR_NAME)
                    waited = True
                time.sleep(0.5)
                continue
            try:
                self._may_commit()
                self._scan(reader.store)
                malformed = self._fill(reader)
                if malformed:
                    self._set_aside(reader, malformed)
                group = self._due()
                if group:
                    self._may_commit()
                    self.commit(reader, [e for h in group for e in h.entries], [h.result for h in group])
            except redis.RedisError as exc:
                log.warning("broker error (%s: %s); retrying", type(exc).__name__, exc)
                self._held.clear()  # read again, with whatever else was not acknowledged
                reader.reread_pending()
                time.sleep(1.0)

    def _fill(self, reader: ResultsReader) -> list[Malformed]:
        """Read what has come (waiting up to 0.5 s when nothing is held, 0.1 s when something
        is, so that lingering results go on time); entries that do not decode are returned."""
        decoded: list[tuple[Entry, BatchResult]] = []
        malformed: list[Malformed] = []
        self._decode(reader.read(config.SHARD_ROWS, block_ms=100 if self._held else 500), decoded, malformed)
        now = time.monotonic()
        for entry, result in decoded:
            held = self._held.setdefault(result.batch_id, Held(result, now))
            held.entries.append(entry)
        return malformed

    def _due(self) -> list[Held]:
        """The held results to commit now (writer/grouping.py), at most --read of them."""
        if not self._held:
            return []
        rows = max(len(h.result.page_ids) for h in self._held.values())
        full = len(self._held) >= config.pending_bound(rows)  # workers wait: nothing more comes
        group = grouping.due(
            self._held, self.writer.committed_rows, time.monotonic(), self.writer, flush=full or self._all_owed()
        )
        if self.read:
            group = group[: self.read]
        for h in group:
            del self._held[h.result.batch_id]
        return group

    @staticmethod
    def _decode(
        entries: list[Entry | Malformed], group: list[tuple[Entry, BatchResult]], malformed: list[Malformed]
    ) -> None:
        for e in entries:
            if isinstance(e, Malformed):
                malformed.append(e)
                continue
            try:
                group.append((e, BatchResult.from_bytes(e.data)))
            except MalformedMessage as exc:
                fields = {b"batch": str(e.batch_id).encode(), b"data": e.data}
                malformed.append(Malformed(e.entry_id, fields, str(exc)))

    def _all_owed(self) -> bool:
        """Whether the held results are everything the jobs still owe (no reason to wait)."""
        ids = set(self._held)
        if self._owed is None or not ids <= self._owed:
            self._owed = {b for batches in self.writer.owed().values() for b in batches}
        return self._owed <= ids

    def commit(self, reader: ResultsReader, entries: list[Entry], results: list[BatchResult]) -> None:
        try:
            outcomes = self.writer.commit(results)
        except (InvalidResult, ModelMismatch):
            outcomes = self._one_by_one(reader, entries, results)
        reader.done(entries)
        if self._owed is not None:
            self._owed -= {o.batch_id for o in outcomes}
        new = [o for o in outcomes if o.committed]
        if new:
            pages = sum(o.end - o.start for o in new)
            past, waiting = self.writer.out_of_order()
            gap = f"; {past} batches committed out of order, waiting for batch {waiting}" if past else ""
            log.info(
                "committed %d batches (%d pages); committed_rows=%d%s", len(new), pages, self.writer.committed_rows, gap
            )

    def _one_by_one(self, reader: ResultsReader, entries: list[Entry], results: list[BatchResult]) -> list:
        """Commit each result alone, so that one bad result is set aside and the others go on."""
        outcomes = []
        for entry, result in zip(entries, results):
            try:
                outcomes += self.writer.commit([result])
            except (InvalidResult, ModelMismatch) as exc:
                self._refuse(reader.store, result.batch_id, str(exc), {"entry": entry.entry_id.decode()})
        return outcomes

    def _set_aside(self, reader: ResultsReader, malformed: list[Malformed]) -> None:
        """Entries that are no result this writer reads: kept aside with their reason, acknowledged."""
        for m in malformed:
            extra: dict[str, Any] = {"entry": m.entry_id.decode()}
            for name, value in m.fields.items():
                key = name.decode(errors="replace")
                if key not in ("batch", "reason", "time"):
                    extra[key] = bytes(value[:_KEPT_BYTES])
                    extra[f"{key}_bytes"] = str(len(value))
            self._refuse(reader.store, m.batch_id, m.reason, extra)
        reader.done(malformed)

    def _refuse(self, store: str, batch: int | None, reason: str, extra: dict) -> None:
        count = deliveries.refuse(self.client, store, batch, reason, extra)
        if batch is None:
            log.error("result set aside: %s", reason)
            return
        log.error("result of batch %d set aside (%d of %d): %s", batch, count, config.MAX_ATTEMPTS, reason)
        if count < config.MAX_ATTEMPTS and not self.writer.is_committed(batch):
            payload = self._payload(batch)
            if payload is not None:
                deliveries.send(self.client, payload, None, config.PRIORITY_AGAIN)

    def _payload(self, batch: int) -> TaskPayload | None:
        """A batch's task as its job keeps it, to send it again (None for a job from before)."""
        job = self.writer.job_of(batch)
        payload = read_task(self.output_dir, job, batch) if job is not None else None
        if payload is None:
            log.warning("batch %d: its job keeps no task payloads; `enqueue` its list again to resend it", batch)
        elif payload.model is None:
            payload.model = job.model if job is not None else None
        return payload if payload is not None and payload.model is not None else None

    def _scan(self, store: str) -> None:
        """Deliveries whose holder is gone (batch lease expired), and batches given up, every WRITER_SCAN_S."""
        if time.monotonic() < self._next_scan:
            return
        self._next_scan = time.monotonic() + config.WRITER_SCAN_S
        self._adopt()
        for info in batch_lease.expired_batch_leases(self.client, store):
            if batch_lease.claim(self.client, info.token) is None:
                continue  # its worker ended it meanwhile
            why = f"batch lease expired: its holder {info.holder} (pid {info.pid}) stopped renewing it"
            if self.writer.is_committed(info.batch):
                batch_lease.drop_page_mark(self.client, store, info.token)
                continue
            log.error(deliveries.lost(self.client, store, info, info.batch, why, self._payload(info.batch)))
        for batch, reason in deliveries.given_up(self.client, store).items():
            if not self.writer.is_committed(batch):
                self._commit_given_up(store, batch, reason)
            deliveries.forget_given_up(self.client, store, batch)

    def _commit_given_up(self, store: str, batch: int, reason: str) -> None:
        job = self.writer.job_of(batch)
        if job is None:
            log.error("batch %d was given up but belongs to no job of %s", batch, self.output_dir)
            return
        rows = batch_rows(job, batch)
        crashed = deliveries.crashed_pages(self.client, store, rows)
        payload = read_task(self.output_dir, job, batch)
        images = [p.image for p in payload.pages] if payload is not None else [""] * len(rows)
        self._may_commit()
        try:
            if self.writer.commit_failed(job, batch, crashed, reason, images):
                log.error("batch %d committed as %d failed pages: %s", batch, len(rows), reason)
        except (InvalidResult, ModelMismatch) as exc:
            log.error("batch %d was given up but cannot be committed as failed rows: %s", batch, exc)


def _wait_for_store(output_dir: Path, stopping: list[bool]) -> str | None:
    """The store's id once its first job exists (the writer lease is per store); None if stopped first."""
    store = store_id(output_dir)
    if store is None:
        log.info("waiting for a job in %s", output_dir / config.JOBS_DIR_NAME)
    while store is None and not stopping:
        time.sleep(0.5)
        store = store_id(output_dir)
    return store


def run(args: argparse.Namespace) -> int:
    app = configure(args.broker)
    client = connect(app.conf.broker_url)
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    store = _wait_for_store(args.output_dir, stopping)
    if store is None:
        return EXIT_OK
    # The output folder's lock comes first: holding it proves a writer of this host that held the
    # writer lease dead, so the lease is taken over at once (writer/lease.py).
    lock = recovery.lock(args.output_dir) if config.WRITER_FLOCK else None
    # a failed check (CheckFailed), a full disk (DiskFull), a writer lease lost (WriterLeaseLost)
    # end the command with their exit status (common/errors.py)
    with (
        lock if lock is not None else contextlib.nullcontext(),
        WriterLease(client, store, args.output_dir, locked=lock is not None) as lease,
        StoreWriter(
            args.output_dir,
            verify_batches=args.verify_batches,
            write_check=args.write_check,
            verbose=args.verbose,
            fence=lease,
            lock=lock,
        ) as writer,
    ):
        service = WriterService(writer, client, args.output_dir, args.read, lease)
        signal.signal(signal.SIGTERM, service.stop)
        signal.signal(signal.SIGINT, service.stop)
        log.info(
            "writer for %s: %d rows committed (writer lease token %d)", writer.path, writer.committed_rows, lease.token
        )
        service.serve()
    log.info("writer stopped")
    return EXIT_OK
