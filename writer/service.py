"""`comix-embed writer`: the store's single writer, fed from the results stream in Redis.

Reads up to `--read` results at a time (its own unacknowledged ones first, after a crash),
waiting up to a short linger for a whole chunk's worth, commits them (rows, then manifests, then `committed_rows`) and only then acknowledges them in
Redis. A result that does not fit its job or comes from another model is set aside in a
dead-letter stream with its reason, and the others go on; a failing --verify-batches or
--write-check stops the writer (exit status 1) naming the batch and page.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from pathlib import Path

import redis

from comix_embed.common import config
from comix_embed.common.celery_app import configure
from comix_embed.common.errors import UsageError
from comix_embed.common.results import BatchResult
from comix_embed.common.results_channel import Entry, ResultsReader, connect, store_id
from comix_embed.common.store import ModelMismatch
from comix_embed.writer.checks import CheckFailed
from comix_embed.writer.commit import InvalidResult, StoreWriter

log = logging.getLogger("comix.writer")
DEAD_KEY = "comix:dead:{store}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, required=True)
    parser.add_argument("--broker", help="broker URL (default $COMIX_BROKER_URL, else redis://127.0.0.1:6379/0)")
    parser.add_argument("--verify-batches", "--verify_batches", dest="verify_batches", action="store_true")
    parser.add_argument("--write-check", "--write_check", dest="write_check", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="one [PAGE] line per committed page")
    parser.add_argument("--read", type=int, default=64, help="results read and committed together, at most")


class WriterService:
    """The loop: read results, commit, acknowledge; stops on SIGTERM/SIGINT after the commit at hand."""

    def __init__(self, writer: StoreWriter, client: redis.Redis, output_dir: Path, read: int) -> None:
        self.writer = writer
        self.client = client
        self.output_dir = output_dir
        self.read = read
        self.stopping = False
        self.reader: ResultsReader | None = None
        self._owed: set[int] | None = None  # batch ids the jobs still owe, kept as commits go

    def stop(self, *_: object) -> None:
        self.stopping = True

    def _reader(self) -> ResultsReader | None:
        if self.reader is None:
            store = store_id(self.output_dir)
            if store is None:
                return None
            self.reader = ResultsReader(self.client, store)
            log.info("reading results of store %s from %s", store, self.reader.key)
        return self.reader

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
                group = self._gather(reader)
            except redis.ConnectionError as exc:
                log.warning("broker unreachable (%s); retrying", exc)
                time.sleep(1.0)
                continue
            if group:
                self.commit(reader, [e for e, _ in group], [r for _, r in group])

    def _gather(self, reader: ResultsReader) -> list[tuple[Entry, BatchResult]]:
        """Results to commit together: a chunk's worth of rows if they come within the linger
        time, so that a writer that keeps up still writes whole chunks instead of rewriting one
        chunk per small batch; at once when they are all that the jobs still owe."""
        group = [(e, BatchResult.from_bytes(e.data)) for e in reader.read(self.read, block_ms=500)]
        deadline = time.monotonic() + config.WRITER_LINGER_S
        while group and len(group) < self.read and not self.stopping and not self._enough(group):
            left_ms = int(1000 * (deadline - time.monotonic()))
            if left_ms <= 0:
                break
            group += [
                (e, BatchResult.from_bytes(e.data)) for e in reader.read(self.read - len(group), block_ms=left_ms)
            ]
        return group

    def _enough(self, group: list[tuple[Entry, BatchResult]]) -> bool:
        if sum(len(r.page_ids) for _, r in group) >= config.CHUNK_ROWS:
            return True
        ids = {r.batch_id for _, r in group}
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
            log.info(
                "committed %d batches (%d pages); committed_rows=%d",
                len(new),
                pages,
                self.writer.committed_rows,
            )

    def _one_by_one(self, reader: ResultsReader, entries: list[Entry], results: list[BatchResult]) -> list:
        """Commit each result alone, so that one bad result is set aside and the others go on."""
        outcomes = []
        for _entry, result in zip(entries, results):
            try:
                outcomes += self.writer.commit([result])
            except (InvalidResult, ModelMismatch) as exc:
                log.error("batch %d set aside: %s", result.batch_id, exc)
                self.client.xadd(DEAD_KEY.format(store=reader.store), {"batch": result.batch_id, "reason": str(exc)})
        return outcomes


def run(args: argparse.Namespace) -> int:
    app = configure(args.broker)
    client = connect(app.conf.broker_url)
    with StoreWriter(
        args.output_dir, verify_batches=args.verify_batches, write_check=args.write_check, verbose=args.verbose
    ) as writer:
        service = WriterService(writer, client, args.output_dir, args.read)
        signal.signal(signal.SIGTERM, service.stop)
        signal.signal(signal.SIGINT, service.stop)
        log.info("writer for %s: %d rows committed", writer.path, writer.committed_rows)
        try:
            service.serve()
        except CheckFailed as exc:
            log.error("check failed, stopping: %s", exc)
            print(f"error: {exc}", flush=True)
            return 1
        except UsageError:
            raise
    log.info("writer stopped")
    return 0
