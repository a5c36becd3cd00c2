"""Batch results from workers to the writer: a bounded Redis stream with a consumer group.

Workers add a packed BatchResult only while the stream holds fewer than a bound of entries (one
atomic script), otherwise they wait: when the writer falls behind, Redis does not fill up. They
also wait, saying why, while Redis refuses writes for lack of memory. The
writer reads through a consumer group and acknowledges (and deletes) an entry only after the
batch's manifest exists; after a writer crash it re-reads its own pending entries first, each
once (a cursor walks the pending list; reading it from id 0 every time would return the same
entries over and over). An entry whose fields do not decode comes back as `Malformed`, never as
an exception, so that the writer moves it aside and goes on. If Redis loses everything, the
producer's reconciliation sends the batches that have no manifest again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import redis

from comix_embed.common.broker import keys
from comix_embed.common.broker.redis_memory import describe_limit, is_out_of_memory
from comix_embed.common.store.jobs import Job, first_job

log = logging.getLogger("comix.results")

GROUP = "writer"
# The consumer of a writer without a writer lease token (tests of the writer alone, and writers
# from before the writer lease); a writer with one reads as `writer-t<token>` and adopts what the
# others left pending (`adopt`).
CONSUMER = "writer-1"

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
    first = first_job(output_dir)
    return None if first is None else store_id_of(first)


def store_id_of(first: Job) -> str:
    """The store's name on the broker, from the output folder's first job."""
    return hashlib.sha256(f"{first.list_sha256}:{first.created}".encode()).hexdigest()[:16]


def results_key(store: str) -> str:
    return keys.RESULTS.format(store=store)


class ResultsFull(Exception):
    """The writer stayed too far behind for too long; the task gives its batch back to the queue."""


def push(client: redis.Redis, store: str, batch_id: int, payload: bytes, bound: int, timeout: float) -> bytes:
    """Add a result, waiting while the stream holds `bound` entries; ResultsFull after `timeout` s."""
    script = client.register_script(_BOUNDED_ADD)
    deadline = time.monotonic() + timeout
    delay = 0.05
    refused = ""  # why Redis refused the last write (out of memory), said once
    while True:
        try:
            entry = script(keys=[results_key(store)], args=[bound, batch_id, payload])
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            if not refused:
                refused = describe_limit(client)
                log.warning("batch %d waits: %s; its result is handed over once Redis takes writes", batch_id, refused)
            entry = None
        if entry:
            return entry
        if time.monotonic() > deadline:
            why = refused or f"results for store {store} stayed at {bound} entries"
            raise ResultsFull(f"{why} for {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


@dataclass
class Entry:
    entry_id: bytes
    batch_id: int
    data: bytes


@dataclass
class Malformed:
    """An entry that is not a result this writer can read: its fields, and what is wrong."""

    entry_id: bytes
    fields: dict[bytes, bytes]
    reason: str

    @property
    def batch_id(self) -> int | None:
        try:
            return int(self.fields[b"batch"])
        except (KeyError, ValueError):
            return None


class ResultsReader:
    """The writer's side of the stream."""

    def __init__(self, client: redis.Redis, store: str, consumer: str = CONSUMER) -> None:
        self.client = client
        self.store = store
        self.consumer = consumer
        self.key = results_key(store)
        self._pending: bytes | str | None = "0"  # cursor in our own pending entries; None: read new ones

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int, block_ms: int) -> list[Entry | Malformed]:
        """Own pending entries first (left over from a crash or a Redis error), each once, then new ones."""
        try:
            return self._read(count, block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):  # the stream vanished under us (FLUSHALL): start again
                raise
            return []

    def adopt(self, idle_ms: int) -> int:
        """Take over the entries other consumers of the group read without acknowledging (earlier
        writers, whose tokens are lower), to read them again first; consumers left with nothing,
        idle for `idle_ms`, are removed. Returns how many entries were taken over."""
        self.ensure_group()
        taken = 0
        for info in self.client.xinfo_consumers(self.key, GROUP):
            name = info["name"].decode() if isinstance(info["name"], bytes) else str(info["name"])
            if name == self.consumer:
                continue
            if info["pending"]:
                pending = self.client.xpending_range(self.key, GROUP, "-", "+", info["pending"], consumername=name)
                ids: list[Any] = [p["message_id"] for p in pending]
                if ids:
                    taken += len(self.client.xclaim(self.key, GROUP, self.consumer, 0, ids, justid=True))
            elif info["idle"] >= idle_ms:
                self.client.xgroup_delconsumer(self.key, GROUP, name)
        if taken:
            self._pending = "0"
        return taken

    def reread_pending(self) -> None:
        """After a Redis error: what was read but not acknowledged is read again, from the start."""
        self._pending = "0"

    def _read(self, count: int, block_ms: int) -> list[Entry | Malformed]:
        self.ensure_group()  # also after a FLUSHALL wiped the stream and its group
        while self._pending is not None:
            got: Any = self.client.xreadgroup(GROUP, self.consumer, {self.key: self._pending}, count=count)
            items = [item for _key, batch in got or [] for item in batch]
            if not items:
                self._pending = None
                break
            self._pending = items[-1][0]  # the next read starts after the last one returned
            entries = self._entries(items)
            if entries:
                return entries
        new: Any = self.client.xreadgroup(GROUP, self.consumer, {self.key: ">"}, count=count, block=block_ms)
        return self._entries([item for _key, batch in new or [] for item in batch])

    @staticmethod
    def _entries(items: list) -> list[Entry | Malformed]:
        out: list[Entry | Malformed] = []
        for entry_id, fields in items:
            if not fields:  # a pending entry deleted meanwhile comes back with no fields
                continue
            try:
                out.append(Entry(entry_id, int(fields[b"batch"]), bytes(fields[b"data"])))
            except KeyError as exc:
                missing = exc.args[0].decode()
                out.append(Malformed(entry_id, fields, f"entry {entry_id.decode()} has no field {missing!r}"))
            except ValueError:
                batch = fields[b"batch"].decode(errors="replace")
                out.append(Malformed(entry_id, fields, f"entry {entry_id.decode()}: batch {batch!r} is not a number"))
        return out

    def done(self, entries: list[Entry] | list[Malformed] | list[Entry | Malformed]) -> None:
        """Forget entries whose batches are committed (their manifests exist)."""
        if entries:
            ids = [e.entry_id for e in entries]
            pipe = self.client.pipeline()
            pipe.xack(self.key, GROUP, *ids)
            pipe.xdel(self.key, *ids)
            pipe.execute()

    def backlog(self) -> int:
        return int(self.client.xlen(self.key))
