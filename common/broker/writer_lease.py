"""The writer lease as Redis holds it, declared once for the writer and for `status`.

The writer lease is the store's single-writer lease (not a batch lease, which a worker process
holds on one delivery: common/broker/batch_lease.py). The writer takes and renews it
(writer/lease.py); `status` shows who holds it; neither imports the other's code.
"""

from __future__ import annotations

import msgspec
import redis

from comix_embed.common.broker import keys
from comix_embed.common.messages import decode_json


class WriterLeaseHolder(msgspec.Struct, frozen=True, kw_only=True):
    """Who holds a store's writer lease: the fencing token, and where and since when it runs.

    Redis keeps it as JSON under `keys.WRITER_LEASE`, written by the writer's Lua script."""

    token: int
    host: str
    pid: int
    since: str

    @classmethod
    def parse(cls, raw: bytes | str) -> WriterLeaseHolder:
        """The holder Redis keeps; MalformedMessage names the field at fault."""
        return decode_json(raw, cls, "writer lease holder")

    def __str__(self) -> str:
        return f"host {self.host}, pid {self.pid}, token {self.token}, since {self.since}"


def current_holder(client: redis.Redis, store: str) -> tuple[WriterLeaseHolder, float] | None:
    """The writer lease's holder and the seconds before the lease expires unless renewed; None
    when no writer holds it."""
    key = keys.WRITER_LEASE.format(store=store)
    with client.pipeline(transaction=True) as pipe:
        pipe.get(key)
        pipe.pttl(key)
        raw, left_ms = pipe.execute()
    if raw is None:
        return None
    return WriterLeaseHolder.parse(raw), max(int(left_ms), 0) / 1000
