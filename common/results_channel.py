"""Batch results from workers to the writer: a bounded Redis stream with a consumer group.

Workers add a packed BatchResult only while the stream holds fewer than a bound of entries (one
atomic script), otherwise they wait: when the writer falls behind, Redis does not fill up. The
writer reads through a consumer group and acknowledges (and deletes) an entry only after the
batch's manifest exists; after a writer crash it re-reads its own pending entries first. If Redis
loses everything, the producer's reconciliation sends the batches that have no manifest again.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import redis

from comix_embed.common.jobs import load_jobs

GROUP = "writer"
CONSUMER = "writer-1"  # one writer per store, so one consumer name: a restart inherits its pending

# Adds the entry only below the bound; returns the entry id, or false when full.
_BOUNDED_ADD = """
if redis.call('XLEN', KEYS[1]) < tonumber(ARGV[1]) then
  return redis.call('XADD', KEYS[1], '*', 'batch', ARGV[2], 'data', ARGV[3])
end
return false
"""


def store_id(output_dir: str | os.PathLike[str]) -> str | None:
    """The store's name on the broker, from its first job file (None before any job).

    Producer and writer both read the job files, so they agree on it without talking, and two
    stores sharing one Redis never mix their results.
    """
    jobs = load_jobs(output_dir)
    if not jobs:
        return None
    first = jobs[0]
    return hashlib.sha256(f"{first.list_sha256}:{first.created}".encode()).hexdigest()[:16]


def results_key(store: str) -> str:
    return f"comix:results:{store}"


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_keepalive=True, health_check_interval=25)


class ResultsFull(Exception):
    """The writer stayed too far behind for too long; the task gives its batch back to the queue."""


def push(client: redis.Redis, store: str, batch_id: int, payload: bytes, bound: int, timeout: float) -> bytes:
    """Add a result, waiting while the stream holds `bound` entries; ResultsFull after `timeout` s."""
    script = client.register_script(_BOUNDED_ADD)
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        entry = script(keys=[results_key(store)], args=[bound, batch_id, payload])
        if entry:
            return entry
        if time.monotonic() > deadline:
            raise ResultsFull(f"results for store {store} stayed at {bound} entries for {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


@dataclass
class Entry:
    entry_id: bytes
    batch_id: int
    data: bytes


class ResultsReader:
    """The writer's side of the stream."""

    def __init__(self, client: redis.Redis, store: str) -> None:
        self.client = client
        self.store = store
        self.key = results_key(store)
        self._pending_first = True

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int, block_ms: int) -> list[Entry]:
        """Own pending entries first (left over from a crash), then new ones."""
        try:
            return self._read(count, block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):  # the stream vanished under us (FLUSHALL): start again
                raise
            return []

    def _read(self, count: int, block_ms: int) -> list[Entry]:
        self.ensure_group()  # also after a FLUSHALL wiped the stream and its group
        if self._pending_first:
            got = self.client.xreadgroup(GROUP, CONSUMER, {self.key: "0"}, count=count)
            entries = self._entries(got)
            if entries:
                return entries
            self._pending_first = False
        got = self.client.xreadgroup(GROUP, CONSUMER, {self.key: ">"}, count=count, block=block_ms)
        return self._entries(got)

    @staticmethod
    def _entries(reply) -> list[Entry]:
        out = []
        for _key, items in reply or []:
            for entry_id, fields in items:
                if fields:  # a pending entry deleted meanwhile comes back with no fields
                    out.append(Entry(entry_id, int(fields[b"batch"]), fields[b"data"]))
        return out

    def done(self, entries: list[Entry]) -> None:
        """Forget entries whose batches are committed (their manifests exist)."""
        if entries:
            ids = [e.entry_id for e in entries]
            pipe = self.client.pipeline()
            pipe.xack(self.key, GROUP, *ids)
            pipe.xdel(self.key, *ids)
            pipe.execute()

    def backlog(self) -> int:
        return int(self.client.xlen(self.key))
