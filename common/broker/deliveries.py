"""A batch's deliveries in Redis: leases, crash marks, lost and refused counts, re-sending.

Every delivery of a batch to a worker process has an owner token and a lease the process renews
every LEASE_TTL_S / 6 seconds. Whoever removes the lease from the index first decides how the
delivery ended, exactly once:
- the task itself: a result was handed to the writer (released), or the results stream stayed
  full (given back: sent again, not an attempt);
- the worker's main process: its pool process died or hit its time limit (lost), or the worker
  is shutting down (given back);
- the writer, for a lease that expired because its holder is gone (lost).
A lost delivery counts against the batch. Below COMIX_MAX_ATTEMPTS it is sent again at once, ahead
of new batches; at the limit the batch is given up and the writer commits its pages as failed
rows with the reason. A batch that lost a delivery is embedded page by page on its next ones,
each page under a mark owned by its delivery: a page whose delivery died while it held the mark
is recorded as crashed and fails alone afterwards. Nothing else records a page as failed, so a
re-send, a give-back or two deliveries running at once never fail a healthy page.

Refused results (another model, malformed, invalid) are set aside with their reason in a stream
that `status` shows, and counted per batch; `run` stops once a batch owed is refused
COMIX_MAX_ATTEMPTS times. The store and its manifests stay the truth: if Redis loses these
records, the producer's reconciliation sends every batch without a manifest again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from comix_embed.common import config
from comix_embed.common.messages import TaskPayload
from comix_embed.common.model.identity import queue_name

log = logging.getLogger(__name__)

LEASES = "comix:leases"  # zset, every store: delivery token -> lease expiry (unix seconds)
LEASE_INFO = "comix:lease-info"  # hash, every store: token -> JSON (store, batch, queue, holder...)
PAGE_MARK = "comix:page-in-progress:{store}:{token}"  # the page a guarded delivery is embedding
LOST = "comix:lost:{store}"  # hash: batch -> deliveries lost (its worker died, time limit, lease)
CRASHED = "comix:crashed:{store}"  # hash: row -> why the page fails alone (it killed its delivery)
GIVEN_UP = "comix:given-up:{store}"  # hash: batch -> JSON reason; the writer commits failed rows
REFUSED = "comix:refused:{store}"  # stream: results set aside, with their reason
REFUSALS = "comix:refusals:{store}"  # hash: batch -> results of it refused
REFUSAL_REASON = "comix:refusal-reason:{store}"  # hash: batch -> the last reason
SENT = "comix:sent:{store}"  # hash: batch -> when last sent (enqueue skips recently sent ones)
REFUSED_KEEP = 1000  # entries the refused stream keeps (the oldest are trimmed)
# A page mark outlives any lease, so that whoever reaps a dead delivery still finds it.
_MARK_TTL = 4 * config.VISIBILITY_TIMEOUT

CRASHED_PAGE = (
    "the worker process died while embedding this page ({stage}: a crash in a decoder or an encoder, "
    "or out of memory); recorded as failed so that the rest of its batch goes on"
)


def holder_name() -> str:
    """This worker's node name (set by `comix-embed worker`), else the host: who holds a lease."""
    return os.environ.get(config.WORKER_NAME_ENV) or socket.gethostname()


@dataclass
class LeaseInfo:
    token: str
    store: str
    batch: int
    job: str
    queue: str
    task_id: str
    holder: str
    pid: int
    since: float
    expires: float = 0.0

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items() if k not in ("token", "expires")})

    @classmethod
    def from_json(cls, token: str, raw: bytes | str, expires: float = 0.0) -> LeaseInfo:
        return cls(token=token, expires=expires, **json.loads(raw))


class Lease:
    """One delivery's lease, renewed by a thread of the process that holds the batch."""

    def __init__(self, client: redis.Redis, info: LeaseInfo) -> None:
        self.client = client
        self.info = info
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name="lease", daemon=True)

    @classmethod
    def take(cls, client: redis.Redis, payload: TaskPayload, queue: str, task_id: str) -> Lease:
        info = LeaseInfo(
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
        pipe.hset(LEASE_INFO, info.token, info.to_json())
        pipe.zadd(LEASES, {info.token: time.time() + config.LEASE_TTL_S})
        pipe.execute()
        lease = cls(client, info)
        lease._thread.start()
        return lease

    def _renew_loop(self) -> None:
        while not self._stop.wait(config.LEASE_TTL_S / 6):
            try:  # XX: a lease someone already ended is never brought back
                self.client.zadd(LEASES, {self.info.token: time.time() + config.LEASE_TTL_S}, xx=True)
            except redis.RedisError as exc:
                log.warning("lease of batch %d not renewed: %s", self.info.batch, exc)

    def end(self) -> bool:
        """Stop renewing and remove the lease; True when this call ended the delivery (nobody
        declared it lost or given back first)."""
        self._stop.set()
        return claim(self.client, self.info.token) is not None

    @contextmanager
    def page(self, row: int, page_id: str, stage: str) -> Iterator[None]:
        """Mark the page this delivery is embedding alone; the mark goes when the page is done
        (or raised), and stays only if the process dies on it."""
        key = PAGE_MARK.format(store=self.info.store, token=self.info.token)
        self.client.set(key, json.dumps({"row": row, "page_id": page_id, "stage": stage}), ex=_MARK_TTL)
        try:
            yield
        finally:
            self.client.delete(key)


def claim(client: redis.Redis, token: str) -> LeaseInfo | None:
    """End a delivery's lease; its info for the one caller that ended it, None for any other."""
    if not client.zrem(LEASES, token):
        return None
    raw = client.hget(LEASE_INFO, token)
    client.hdel(LEASE_INFO, token)
    return LeaseInfo.from_json(token, raw) if raw else None


def leases(client: redis.Redis, store: str | None = None) -> list[LeaseInfo]:
    """Every lease (of one store), with its expiry: the batches being embedded right now."""
    scores: Any = client.zrange(LEASES, 0, -1, withscores=True)
    infos: Any = client.hgetall(LEASE_INFO)
    out = []
    for token, expires in scores:
        raw = infos.get(token)
        if raw is not None:
            info = LeaseInfo.from_json(_text(token), raw, expires)
            if store is None or info.store == store:
                out.append(info)
    return out


def expired_leases(client: redis.Redis, store: str) -> list[LeaseInfo]:
    """Leases no process renewed in time: their holders are gone."""
    now = time.time()
    return [lease for lease in leases(client, store) if lease.expires < now]


def lost_count(client: redis.Redis, store: str, batch: int) -> int:
    return int(client.hget(LOST.format(store=store), batch) or 0)


def crashed_pages(client: redis.Redis, store: str, rows: list[int]) -> dict[int, str]:
    """Rows whose earlier delivery died while embedding them, with the reason."""
    if not rows:
        return {}
    values: Any = client.hmget(CRASHED.format(store=store), rows)
    return {row: _text(v) for row, v in zip(rows, values) if v is not None}


def lost(
    client: redis.Redis, store: str, info: LeaseInfo | None, batch: int, why: str, payload: TaskPayload | None
) -> str:
    """Count a delivery that ended without a result; send the batch again (ahead of new ones) or,
    at the limit, give it up for the writer to commit as failed rows. Returns what was done."""
    if info is not None:
        key = PAGE_MARK.format(store=store, token=info.token)
        mark = client.get(key)
        if mark:
            page = json.loads(mark)
            reason = CRASHED_PAGE.format(stage=page["stage"])
            client.hset(CRASHED.format(store=store), page["row"], reason)
            log.error(
                "page %s (row %d) was being embedded when its worker died: it will fail alone",
                page["page_id"],
                page["row"],
            )
        client.delete(key)
    count = int(client.hincrby(LOST.format(store=store), batch, 1))
    if count >= config.MAX_ATTEMPTS:
        reason = f"the batch was lost {count} times (COMIX_MAX_ATTEMPTS={config.MAX_ATTEMPTS}), last: {why}"
        client.hset(GIVEN_UP.format(store=store), batch, json.dumps({"reason": reason, "lost": count}))
        return f"batch {batch} given up after {count} lost deliveries ({why}): its pages will be committed as failed"
    if payload is None:
        return f"batch {batch} lost ({why}, {count} of {config.MAX_ATTEMPTS}); no payload kept to send it again"
    send(client, payload, info.queue if info else None, config.PRIORITY_AGAIN)
    return f"batch {batch} lost ({why}, {count} of {config.MAX_ATTEMPTS}): sent again ahead of new batches"


def send(client: redis.Redis, payload: TaskPayload, queue: str | None, priority: int, producer: Any = None) -> None:
    """Send one batch to its model's queue; recorded as sent (when) for `enqueue`'s skip."""
    from comix_embed.common.celery_app import app

    if queue is None:
        if payload.model is None:
            raise ValueError(f"batch {payload.batch_id} has no model and no queue to go to")
        queue = queue_name(payload.model)
    app.send_task(
        "comix.embed_batch",
        args=[payload.to_dict()],
        queue=queue,
        priority=priority,
        producer=producer,
        retry=True,
        retry_policy={"max_retries": 10, "interval_start": 0.5, "interval_step": 1},
    )
    client.hset(SENT.format(store=payload.store_id), payload.batch_id, time.time())


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def queued(client: redis.Redis, queue: str) -> int:
    """Batches waiting in a queue: Kombu keeps one Redis list per priority step."""
    sep = "\x06\x16"
    keys = [queue if step == 0 else f"{queue}{sep}{step}" for step in config.PRIORITY_STEPS]
    return sum(int(client.llen(k)) for k in keys)


def given_up(client: redis.Redis, store: str) -> dict[int, str]:
    """Batches lost COMIX_MAX_ATTEMPTS times, with the reason: the writer commits them as failed."""
    return {int(b): json.loads(v)["reason"] for b, v in client.hgetall(GIVEN_UP.format(store=store)).items()}


def forget_given_up(client: redis.Redis, store: str, batch: int) -> None:
    client.hdel(GIVEN_UP.format(store=store), batch)


def refuse(client: redis.Redis, store: str, batch: int | None, reason: str, extra: dict[str, Any] | None = None) -> int:
    """Set a result aside with its reason (shown by `status`); returns how many times its batch
    has been refused (0 when the batch is unknown)."""
    fields: dict[Any, Any] = {
        "batch": "" if batch is None else str(batch),
        "reason": reason,
        "time": f"{time.time():.3f}",
    }
    fields.update({k: v for k, v in (extra or {}).items() if k not in fields})
    client.xadd(REFUSED.format(store=store), fields, maxlen=REFUSED_KEEP, approximate=True)
    if batch is None:
        return 0
    client.hset(REFUSAL_REASON.format(store=store), batch, reason)
    return int(client.hincrby(REFUSALS.format(store=store), batch, 1))


def refused_out(client: redis.Redis, store: str, owed: set[int]) -> dict[int, str]:
    """Batches still owed whose results were refused COMIX_MAX_ATTEMPTS times, with the last reason."""
    counts = {int(b): int(n) for b, n in client.hgetall(REFUSALS.format(store=store)).items()}
    out = [b for b, n in counts.items() if n >= config.MAX_ATTEMPTS and b in owed]
    reasons: Any = client.hmget(REFUSAL_REASON.format(store=store), out) if out else []
    return {b: (_text(r) if r else "") for b, r in zip(out, reasons)}


def refused_entries(client: redis.Redis, store: str, count: int = 10) -> tuple[int, list[dict[str, str]]]:
    """How many results were set aside, and the latest `count` (batch, reason, time)."""
    key = REFUSED.format(store=store)
    latest: Any = client.xrevrange(key, count=count)
    entries = [{k: _text(fields.get(k.encode(), b"")) for k in ("batch", "reason", "time")} for _, fields in latest]
    return int(client.xlen(key)), entries


def recently_sent(client: redis.Redis, store: str) -> dict[int, float]:
    return {int(k): float(v) for k, v in client.hgetall(SENT.format(store=store)).items()}


def give_new_attempts(client: redis.Redis, store: str, batches: list[int]) -> None:
    """An operator's explicit re-send (`enqueue --resend`): earlier refusals and losses no longer count."""
    if batches:
        pipe = client.pipeline()
        for key in (LOST, REFUSALS, REFUSAL_REASON, GIVEN_UP):
            pipe.hdel(key.format(store=store), *batches)
        pipe.execute()


def forget_crashes(client: redis.Redis, store: str, rows: list[int]) -> None:
    """A user's retry of these rows (`--retry-failed`): a crash recorded for them no longer fails them."""
    if rows:
        client.hdel(CRASHED.format(store=store), *rows)
