"""One writer per store, also across hosts: the writer lease in Redis, with a fencing token that only grows.

Why: the output folder's flock holds on one host; on a network filesystem, where stores often
live, it may not. The writer lease (not a worker's batch lease, common/broker/batch_lease.py) is
one key per store, `keys.WRITER_LEASE` (`comix:writer-lease:<store>`), set only if absent
(one Lua script) with a short TTL (COMIX_WRITER_LEASE_TTL_S), holding its token, host, pid and
since when; a thread renews it every third of the TTL, so renewal never waits on a commit.
- A writer that finds the writer lease held takes it over at once when its holder is provably
  dead: it ran on this host, and this writer holds the output folder's flock (`writer.lock`),
  which every writer takes before the writer lease and which the kernel released when the holder
  died, zombie or not. Otherwise (another host, or no flock) it waits for the writer lease to
  expire, and stops (exit status 2) only if the holder renews it meanwhile: a live writer.
- Tokens grow even across a wiped Redis: a new token is max(the token recorded in the output
  folder, Redis's counter) + 1, recorded in the folder (`writer.token.json`, a `WriterTokenRecord`)
  before the writer writes anything, and in every manifest it writes.
- `check()` comes before each manifest: within half a TTL of the last renewal it is a local test
  (no other writer can hold the key before it expires), else it asks Redis. A writer lease
  another token holds raises `WriterLeaseLost` and the writer writes nothing more. A writer lease
  simply gone (Redis wiped, or expired while no one took it) is taken again with a new token,
  unless another writer held the store meanwhile.
- A filesystem checks no token, so a writer that lost its writer lease between its check and its
  write can still land a manifest. Recovery treats those as never committed: the record names
  the batches whose manifests the holder accepted when it took the store (as ranges), and a
  manifest of a lower token that is not among them is set aside and its rows cleared (`admit`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import redis

from comix_embed.common import config
from comix_embed.common.broker import keys
from comix_embed.common.broker.writer_lease import WriterLeaseHolder, current_holder
from comix_embed.common.durable import write_json_atomic
from comix_embed.common.errors import UsageError
from comix_embed.common.messages import MalformedMessage, decode_json
from comix_embed.common.store.manifests import BatchManifest
from comix_embed.common.timestamps import utc_now

log = logging.getLogger(__name__)

# KEYS: lease, counter. ARGV: floor, host, pid, since, ttl ms, expected counter (or -1), the
# holder's value to take over ('' for none). Returns {1, value} when taken, {0, value of the
# holder}, or {-1, counter} when a writer with a token above the expected one held the store meanwhile.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[7] then return {0, held} end
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
local expected = tonumber(ARGV[6])
if expected >= 0 and counter > expected then return {-1, tostring(counter)} end
local token = math.max(counter, tonumber(ARGV[1])) + 1
local value = cjson.encode({token = token, host = ARGV[2], pid = tonumber(ARGV[3]), since = ARGV[4]})
redis.call('SET', KEYS[2], token)
redis.call('SET', KEYS[1], value, 'PX', tonumber(ARGV[5]))
return {1, value}
"""
# KEYS: lease. ARGV: token, ttl ms. 1 renewed, 0 gone, -1 held by another token (PEXPIRE passes
# a Redis out of memory: renewal goes on while Redis refuses new data).
_RENEW = """
local held = redis.call('GET', KEYS[1])
if not held then return 0 end
if cjson.decode(held).token ~= tonumber(ARGV[1]) then return -1 end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and cjson.decode(held).token == tonumber(ARGV[1]) then return redis.call('DEL', KEYS[1]) end
return 0
"""


class WriterLeaseHeld(UsageError):
    """Another writer holds the store's writer lease (exit status 2)."""


class WriterLeaseLost(UsageError):
    """The writer lease passed to another writer: this one must write nothing more (exit status 2)."""


class WriterTokenRecord(WriterLeaseHolder, frozen=True, kw_only=True):
    """What the output folder keeps of the latest writer lease (`writer.token.json`): its holder
    and the batches whose manifests that holder accepted when it took the store (inclusive ranges
    of batch ids)."""

    accepted: list[tuple[int, int]]

    def holder(self) -> WriterLeaseHolder:
        return WriterLeaseHolder(token=self.token, host=self.host, pid=self.pid, since=self.since)

    def accepts(self, batch_id: int) -> bool:
        return any(a <= batch_id <= b for a, b in self.accepted)


def read_record(output_dir: Path) -> WriterTokenRecord | None:
    """The token record of the output folder (None when no writer took the store yet); a record
    that does not decode is a UsageError naming the file and the field at fault."""
    path = output_dir / config.WRITER_TOKEN_NAME
    if not path.exists():
        return None
    try:
        return decode_json(path.read_bytes(), WriterTokenRecord, f"{path} is unreadable")
    except MalformedMessage as exc:
        raise UsageError(f"{exc}; it records the writer lease's token") from None


def ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted ids as inclusive ranges: a million batches committed mostly in order stay a few lines."""
    out: list[list[int]] = []
    for i in sorted(ids):
        if out and out[-1][1] + 1 == i:
            out[-1][1] = i
        else:
            out.append([i, i])
    return [(a, b) for a, b in out]


class WriterLease:
    """The store's lease, held from `acquire()` to `release()`; `token` is the current fencing token."""

    def __init__(
        self,
        client: redis.Redis,
        store: str,
        output_dir: Path,
        ttl_s: float = config.WRITER_LEASE_TTL_S,
        locked: bool = False,
    ) -> None:
        self.client = client
        self.locked = locked  # this process holds the output folder's flock: a holder of this host is dead
        self.store = store
        self.output_dir = Path(output_dir)
        self.ttl_s = ttl_s
        self.key = keys.WRITER_LEASE.format(store=store)
        self.counter = keys.WRITER_TOKEN.format(store=store)
        self.host = socket.gethostname()
        self.token = 0
        self.committed: Callable[[], Iterable[int]] = lambda: ()  # the writer's batches, for re-sealing
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._confirmed = 0.0  # monotonic time of the last renewal Redis confirmed
        self._state = 1  # the renewal thread's latest answer: 1 held, 0 gone, -1 another token
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def consumer(self) -> str:
        """The results consumer's name: it carries the token, so a writer's reads are its own."""
        return f"writer-t{self.token}"

    # --- taking and giving back ---

    def acquire(self) -> WriterLease:
        """Take the writer lease, or raise WriterLeaseHeld naming a live holder. A holder of this host
        is dead when this writer holds the output folder's flock: taken over at once, under a new
        token. Any other holder is waited for until its writer lease expires; one that renews it
        meanwhile is alive."""
        record = read_record(self.output_dir)
        floor = record.token if record else 0
        waited_for: WriterLeaseHolder | None = None
        last_left, deadline = 0.0, 0.0
        while True:
            taken, raw = self._try(floor, expected=-1)
            if taken == 1:
                break
            holder = WriterLeaseHolder.parse(raw)
            if self.locked and holder.host == self.host:
                taken, raw = self._try(floor, expected=-1, replace=raw)
                if taken == 1:
                    log.warning(
                        "writer lease of store %s taken over at once from %s, without waiting for it to expire: "
                        "that writer ran on this host, and the output folder's lock (%s), which it held, was "
                        "free, so the kernel released it when that writer died (zombie or not)",
                        self.store,
                        holder,
                        config.WRITER_LOCK_NAME,
                    )
                    break
                continue  # it changed meanwhile: look again
            seen = current_holder(self.client, self.store)
            if seen is None:
                continue  # expired or released meanwhile: take it
            holder, left = seen
            if waited_for is None:
                why = "it runs on another host" if holder.host != self.host else "the output folder is not locked"
                log.warning(
                    "the writer lease of store %s is held by %s, which this writer cannot prove dead (%s): "
                    "waiting up to %.1f s for it to expire; should its holder renew it, this writer stops",
                    self.store,
                    holder,
                    why,
                    left,
                )
                waited_for, deadline = holder, time.monotonic() + max(left, self.ttl_s) + 5
            elif holder != waited_for or left > last_left or time.monotonic() > deadline:
                raise WriterLeaseHeld(
                    f"store {self.store} ({self.output_dir}) has a writer: {holder}; one writer per store "
                    f"(writer lease {self.key} in Redis, TTL {self.ttl_s:g} s, renewed by its holder while this "
                    "writer waited for it to expire)"
                )
            last_left = left
            time.sleep(0.1)
        self._took(raw)
        self._thread = threading.Thread(target=self._renew_loop, name="writer-lease", daemon=True)
        self._thread.start()
        return self

    def _try(self, floor: int, expected: int, replace: bytes = b"") -> tuple[int, Any]:
        """One attempt to take the writer lease: while it is free, or while it still holds `replace`."""
        since = utc_now()
        ttl_ms = int(self.ttl_s * 1000)
        taken, raw = self._acquire(
            keys=[self.key, self.counter], args=[floor, self.host, os.getpid(), since, ttl_ms, expected, replace]
        )
        return int(taken), raw

    def _took(self, raw: Any) -> None:
        holder = WriterLeaseHolder.parse(raw)
        self.token = holder.token
        self._confirmed = time.monotonic()
        self._state = 1
        log.info("writer lease of store %s taken: %s", self.store, holder)

    def seal(self, committed: Iterable[int]) -> None:
        """Record the token in the output folder with the batches this holder accepted, before it
        writes anything else: a later recovery sets aside what a lower token wrote past them."""
        holder = self._holder()
        record = WriterTokenRecord(**msgspec.structs.asdict(holder), accepted=ranges(committed))
        write_json_atomic(self.output_dir / config.WRITER_TOKEN_NAME, record, fsync=True)

    def _holder(self) -> WriterLeaseHolder:
        raw = self.client.get(self.key)
        if raw is not None:
            holder = WriterLeaseHolder.parse(raw)
            if holder.token == self.token:
                return holder
        return WriterLeaseHolder(token=self.token, host=self.host, pid=os.getpid(), since=utc_now())

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours: a restart need not wait."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl_s)
            self._thread = None
        if self.token and self._state != -1:
            try:
                self._release(keys=[self.key], args=[self.token])
            except redis.RedisError as exc:
                log.warning("could not release the writer lease (%s); it expires in %g s", exc, self.ttl_s)

    def __enter__(self) -> WriterLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # --- holding ---

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._renew_once()
            except redis.RedisError as exc:
                log.warning("could not renew the writer lease (%s: %s); retrying", type(exc).__name__, exc)

    def _renew_once(self) -> int:
        token = self.token
        state = int(self._renew(keys=[self.key], args=[token, int(self.ttl_s * 1000)]))
        if token != self.token:
            # a renewal that waited out a failover, while the writer took the lease again under a
            # new token: its answer is about the old token, not about who holds the lease now
            return self._state
        if state == 1:
            self._confirmed = time.monotonic()
        elif state == -1 and self._state != -1:
            log.error("the writer lease of store %s passed to another writer: committing nothing more", self.store)
        self._state = state
        return state

    def check(self) -> int:
        """The token to write under, or WriterLeaseLost: called before each manifest. Redis errors
        propagate (the writer retries, writing nothing meanwhile)."""
        fresh = time.monotonic() - self._confirmed < self.ttl_s / 2
        if self._state == 1 and fresh:
            return self.token
        state = self._state if self._state == -1 else self._renew_once()
        if state == 1:
            return self.token
        if state == -1:
            raw = self.client.get(self.key)
            now = WriterLeaseHolder.parse(raw) if raw is not None else "unknown"
            raise WriterLeaseLost(
                f"the writer lease of store {self.store} passed to another writer ({now}); this writer "
                f"(token {self.token}) stops and writes nothing more"
            )
        return self._take_again()

    def _take_again(self) -> int:
        """The lease is gone (Redis wiped, or it expired while no one took it): take it again with a
        new token, unless another writer held the store meanwhile."""
        record = read_record(self.output_dir)
        if record is not None and record.token > self.token:
            self._state = -1
            raise WriterLeaseLost(
                f"the writer lease of store {self.store} expired and another writer held the store "
                f"meanwhile ({record.holder()}); this writer (token {self.token}) stops and writes nothing more"
            )
        old = self.token
        taken, raw = self._try(self.token, expected=self.token)
        if taken != 1:
            self._state = -1
            who = WriterLeaseHolder.parse(raw) if taken == 0 else f"token {int(raw)} was issued meanwhile"
            raise WriterLeaseLost(
                f"the writer lease of store {self.store} expired and another writer took the store ({who}); "
                f"this writer (token {old}) stops and writes nothing more"
            )
        self._took(raw)
        self.seal(self.committed())
        log.warning("writer lease of store %s was gone (Redis wiped, or expired): token %d now", self.store, self.token)
        return self.token

    # --- recovery ---

    def admit(self, found: dict[int, BatchManifest]) -> tuple[dict[int, BatchManifest], dict[int, BatchManifest]]:
        """Split the manifests found on disk into those committed and those a writer wrote after it
        had lost the writer lease (a token below the record's, for a batch the record did not accept)."""
        record = read_record(self.output_dir)
        if record is None:
            return found, {}
        valid, fenced = {}, {}
        for batch_id, manifest in found.items():
            if (manifest.token or 0) >= record.token or record.accepts(batch_id):
                valid[batch_id] = manifest
            else:
                fenced[batch_id] = manifest
        return valid, fenced
