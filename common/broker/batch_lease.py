"""Batch leases: the lease a worker process holds on one delivery of a batch while it embeds it.

Not the writer lease (common/broker/writer_lease.py), which the store's single writer holds.
Every delivery of a batch to a worker process has an owner token and a batch lease the process
renews every BATCH_LEASE_TTL_S / 6 seconds (`COMIX_LEASE_TTL_S`): its expiry in the zset
`keys.BATCH_LEASES`, its `BatchLeaseInfo` in the hash `keys.BATCH_LEASE_INFO`. Whoever removes
the batch lease from the zset first (`claim`) decides how the delivery ended, exactly once
(common/broker/deliveries.py says who may). A delivery that embeds its batch page by page marks
the page it is on (`PageMark`), so that the page that killed it is known.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import redis

from comix_embed.common import config
from comix_embed.common.broker import keys
from comix_embed.common.messages import TaskPayload, decode_json, encode_json

log = logging.getLogger(__name__)

# A page mark outlives any batch lease, so that whoever reaps a dead delivery still finds it.
_MARK_TTL = 4 * config.VISIBILITY_TIMEOUT


def holder_name() -> str:
    """This worker's node name (set by `comix-embed worker`), else the host: who holds a batch lease."""
    return config.WORKER_NAME.get() or socket.gethostname()


class BatchLeaseInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Who holds one delivery of a batch. Redis keeps it as JSON under its token, without the
    token and the expiry (the hash's key and the zset's score)."""

    store: str
    batch: int
    job: str
    queue: str
    task_id: str
    holder: str
    pid: int
    since: float
    token: str = ""
    expires: float = 0.0

    def to_json(self) -> bytes:
        return encode_json(msgspec.structs.replace(self, token="", expires=0.0))

    @classmethod
    def decode(cls, token: str, raw: bytes | str, expires: float = 0.0) -> BatchLeaseInfo:
        """The info Redis keeps under `token`; MalformedMessage names the field at fault."""
        info = decode_json(raw, cls, f"batch lease of delivery {token}")
        info.token, info.expires = token, expires
        return info


class PageMark(msgspec.Struct, kw_only=True):
    """The page a guarded delivery is embedding alone (`keys.PAGE_MARK`); it stays only if the
    delivery's process dies on the page."""

    row: int
    page_id: str
    stage: str


class BatchLease:
    """One delivery's batch lease, renewed by a thread of the process that holds the batch."""

    def __init__(self, client: redis.Redis, info: BatchLeaseInfo) -> None:
        self.client = client
        self.info = info
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name="batch-lease", daemon=True)

    @classmethod
    def take(cls, client: redis.Redis, payload: TaskPayload, queue: str, task_id: str) -> BatchLease:
        info = BatchLeaseInfo(
            token=uuid.uuid4().hex,
            store=payload.store_id,
            batch=payload.batch_id,
            job=payload.job,
            queue=queue,
            task_id=task_id,
            holder=holder_name(),
            pid=os.getpid(),
            since=time.time(),
        )
        pipe = client.pipeline()
        pipe.hset(keys.BATCH_LEASE_INFO, info.token, info.to_json())
        pipe.zadd(keys.BATCH_LEASES, {info.token: time.time() + config.BATCH_LEASE_TTL_S})
        pipe.execute()
        lease = cls(client, info)
        lease._thread.start()
        return lease

    def _renew_loop(self) -> None:
        while not self._stop.wait(config.BATCH_LEASE_TTL_S / 6):
            try:  # XX: a batch lease someone already ended is never brought back
                self.client.zadd(keys.BATCH_LEASES, {self.info.token: time.time() + config.BATCH_LEASE_TTL_S}, xx=True)
            except redis.RedisError as exc:
                log.warning("batch lease of batch %d not renewed: %s", self.info.batch, exc)

    def end(self) -> bool:
        """Stop renewing and remove the batch lease; True when this call ended the delivery
        (nobody declared it lost or given back first)."""
        self._stop.set()
        return claim(self.client, self.info.token) is not None

    @contextmanager
    def page(self, row: int, page_id: str, stage: str) -> Iterator[None]:
        """Mark the page this delivery is embedding alone; the mark goes when the page is done
        (or raised), and stays only if the process dies on it."""
        key = keys.PAGE_MARK.format(store=self.info.store, token=self.info.token)
        self.client.set(key, encode_json(PageMark(row=row, page_id=page_id, stage=stage)), ex=_MARK_TTL)
        try:
            yield
        finally:
            self.client.delete(key)


def claim(client: redis.Redis, token: str) -> BatchLeaseInfo | None:
    """End a delivery's batch lease; its info for the one caller that ended it, None for any other."""
    if not client.zrem(keys.BATCH_LEASES, token):
        return None
    raw = client.hget(keys.BATCH_LEASE_INFO, token)
    client.hdel(keys.BATCH_LEASE_INFO, token)
    return BatchLeaseInfo.decode(token, raw) if raw else None


def batch_leases(client: redis.Redis, store: str | None = None) -> list[BatchLeaseInfo]:
    """Every batch lease (of one store), with its expiry: the batches being embedded right now."""
    scores: Any = client.zrange(keys.BATCH_LEASES, 0, -1, withscores=True)
    infos: Any = client.hgetall(keys.BATCH_LEASE_INFO)
    out = []
    for token, expires in scores:
        raw = infos.get(token)
        if raw is not None:
            info = BatchLeaseInfo.decode(reply_text(token), raw, expires)
            if store is None or info.store == store:
                out.append(info)
    return out


def expired_batch_leases(client: redis.Redis, store: str) -> list[BatchLeaseInfo]:
    """Batch leases no process renewed in time: their holders are gone."""
    now = time.time()
    return [lease for lease in batch_leases(client, store) if lease.expires < now]


def take_page_mark(client: redis.Redis, store: str, token: str) -> PageMark | None:
    """The page a dead delivery was embedding alone (None: it was on no page), its mark removed."""
    key = keys.PAGE_MARK.format(store=store, token=token)
    raw = client.get(key)
    client.delete(key)
    return decode_json(raw, PageMark, f"page mark {key}") if raw else None


def drop_page_mark(client: redis.Redis, store: str, token: str) -> None:
    """Forget a delivery's page mark: its page did not kill it (given back, or committed anyway)."""
    client.delete(keys.PAGE_MARK.format(store=store, token=token))


def reply_text(value: Any) -> str:
    """A Redis reply as text (replies are bytes; a client made with decode_responses gives str)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
