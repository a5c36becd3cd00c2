"""A batch's deliveries in Redis: crash marks, lost and refused counts, re-sending.

Every delivery of a batch to a worker process holds a batch lease (common/broker/batch_lease.py).
Whoever ends the batch lease first decides how the delivery ended, exactly once:
- the task itself: a result was handed to the writer (released), or the results stream stayed
  full (given back: sent again, not an attempt);
- the worker's main process: its pool process died or hit its time limit (lost), or the worker
  is shutting down (given back);
- the writer, for a batch lease that expired because its holder is gone (lost).
A lost delivery counts against the batch. Below COMIX_MAX_ATTEMPTS it is sent again at once, ahead
of new batches; at the limit the batch is given up (`GivenUp`) and the writer commits its pages as
failed rows with the reason. A batch that lost a delivery is embedded page by page on its next
ones, each page under a mark owned by its delivery: a page whose delivery died while it held the
mark is recorded as crashed and fails alone afterwards. Nothing else records a page as failed, so
a re-send, a give-back or two deliveries running at once never fail a healthy page.

Refused results (another model, malformed, invalid) are set aside with their reason in a stream
that `status` shows (`Refusal`), and counted per batch; `run` stops once a batch owed is refused
COMIX_MAX_ATTEMPTS times. The store and its manifests stay the truth: if Redis loses these
records, the producer's reconciliation sends every batch without a manifest again. The keys are
declared in common/broker/keys.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
import redis

from comix_embed.common import config
from comix_embed.common.broker import keys
from comix_embed.common.broker.batch_lease import BatchLeaseInfo, reply_text, take_page_mark
from comix_embed.common.messages import TaskPayload, decode_json, encode_json
from comix_embed.common.model.identity import queue_name

log = logging.getLogger(__name__)

REFUSED_KEEP = 1000  # entries the refused stream keeps (the oldest are trimmed)

CRASHED_PAGE = (
    "the worker process died while embedding this page ({stage}: a crash in a decoder or an encoder, "
    "or out of memory); recorded as failed so that the rest of its batch goes on"
)


class GivenUp(msgspec.Struct, kw_only=True):
    """A batch lost COMIX_MAX_ATTEMPTS times (`keys.GIVEN_UP`): why, for its failed rows."""

    reason: str
    lost: int = 0


class Refusal(msgspec.Struct, kw_only=True):
    """One result set aside (`keys.REFUSED`), as `status` shows it: its batch ("" when unknown),
    why, and when (unix seconds, as text)."""

    batch: str
    reason: str
    time: str


def lost_count(client: redis.Redis, store: str, batch: int) -> int:
    return int(client.hget(keys.LOST.format(store=store), batch) or 0)


def crashed_pages(client: redis.Redis, store: str, rows: list[int]) -> dict[int, str]:
    """Rows whose earlier delivery died while embedding them, with the reason."""
    if not rows:
        return {}
    values: Any = client.hmget(keys.CRASHED.format(store=store), rows)
    return {row: reply_text(v) for row, v in zip(rows, values) if v is not None}


def lost(
    client: redis.Redis, store: str, info: BatchLeaseInfo | None, batch: int, why: str, payload: TaskPayload | None
) -> str:
    """Count a delivery that ended without a result; send the batch again (ahead of new ones) or,
    at the limit, give it up for the writer to commit as failed rows. Returns what was done."""
    if info is not None:
        mark = take_page_mark(client, store, info.token)
        if mark is not None:
            client.hset(keys.CRASHED.format(store=store), mark.row, CRASHED_PAGE.format(stage=mark.stage))
            log.error(
                "page %s (row %d) was being embedded when its worker died: it will fail alone", mark.page_id, mark.row
            )
    count = int(client.hincrby(keys.LOST.format(store=store), batch, 1))
    if count >= config.MAX_ATTEMPTS:
        reason = f"the batch was lost {count} times (COMIX_MAX_ATTEMPTS={config.MAX_ATTEMPTS}), last: {why}"
        client.hset(keys.GIVEN_UP.format(store=store), batch, encode_json(GivenUp(reason=reason, lost=count)))
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
        keys.EMBED_BATCH_TASK,
        args=[payload.to_dict()],
        queue=queue,
        priority=priority,
        producer=producer,
        retry=True,
        retry_policy={"max_retries": 10, "interval_start": 0.5, "interval_step": 1},
    )
    client.hset(keys.SENT.format(store=payload.store_id), payload.batch_id, time.time())


def queued(client: redis.Redis, queue: str) -> int:
    """Batches waiting in a queue: Kombu keeps one Redis list per priority step."""
    sep = "\x06\x16"
    lists = [queue if step == 0 else f"{queue}{sep}{step}" for step in config.PRIORITY_STEPS]
    return sum(int(client.llen(k)) for k in lists)


def given_up(client: redis.Redis, store: str) -> dict[int, str]:
    """Batches lost COMIX_MAX_ATTEMPTS times, with the reason: the writer commits them as failed."""
    key = keys.GIVEN_UP.format(store=store)
    return {
        int(b): decode_json(v, GivenUp, f"{key} batch {reply_text(b)}").reason for b, v in client.hgetall(key).items()
    }


def forget_given_up(client: redis.Redis, store: str, batch: int) -> None:
    client.hdel(keys.GIVEN_UP.format(store=store), batch)


def refuse(client: redis.Redis, store: str, batch: int | None, reason: str, extra: dict[str, Any] | None = None) -> int:
    """Set a result aside with its reason (shown by `status`); returns how many times its batch
    has been refused (0 when the batch is unknown)."""
    entry = Refusal(batch="" if batch is None else str(batch), reason=reason, time=f"{time.time():.3f}")
    fields: dict[Any, Any] = msgspec.structs.asdict(entry)
    fields.update({k: v for k, v in (extra or {}).items() if k not in fields})
    client.xadd(keys.REFUSED.format(store=store), fields, maxlen=REFUSED_KEEP, approximate=True)
    if batch is None:
        return 0
    client.hset(keys.REFUSAL_REASON.format(store=store), batch, reason)
    return int(client.hincrby(keys.REFUSALS.format(store=store), batch, 1))


def refused_out(client: redis.Redis, store: str, owed: set[int]) -> dict[int, str]:
    """Batches still owed whose results were refused COMIX_MAX_ATTEMPTS times, with the last reason."""
    counts = {int(b): int(n) for b, n in client.hgetall(keys.REFUSALS.format(store=store)).items()}
    out = [b for b, n in counts.items() if n >= config.MAX_ATTEMPTS and b in owed]
    reasons: Any = client.hmget(keys.REFUSAL_REASON.format(store=store), out) if out else []
    return {b: (reply_text(r) if r else "") for b, r in zip(out, reasons)}


def refused_entries(client: redis.Redis, store: str, count: int = 10) -> tuple[int, list[Refusal]]:
    """How many results were set aside, and the latest `count`."""
    key = keys.REFUSED.format(store=store)
    latest: Any = client.xrevrange(key, count=count)
    names = msgspec.structs.fields(Refusal)
    entries = [Refusal(**{f.name: reply_text(fields.get(f.name.encode(), b"")) for f in names}) for _, fields in latest]
    return int(client.xlen(key)), entries


def recently_sent(client: redis.Redis, store: str) -> dict[int, float]:
    return {int(k): float(v) for k, v in client.hgetall(keys.SENT.format(store=store)).items()}


def give_new_attempts(client: redis.Redis, store: str, batches: list[int]) -> None:
    """An operator's explicit re-send (`enqueue --resend`): earlier refusals and losses no longer count."""
    if batches:
        pipe = client.pipeline()
        for key in (keys.LOST, keys.REFUSALS, keys.REFUSAL_REASON, keys.GIVEN_UP):
            pipe.hdel(key.format(store=store), *batches)
        pipe.execute()


def forget_crashes(client: redis.Redis, store: str, rows: list[int]) -> None:
    """A user's retry of these rows (`--retry-failed`): a crash recorded for them no longer fails them."""
    if rows:
        client.hdel(keys.CRASHED.format(store=store), *rows)
