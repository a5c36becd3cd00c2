"""The writer's lease as Redis holds it, declared once for the writer and for `status`.

The writer takes and renews it (writer/lease.py); `status` shows who holds it; neither imports
the other's code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

LEASE_KEY = "comix:writer-lease:{store}"
TOKEN_KEY = "comix:writer-token:{store}"


@dataclass(frozen=True)
class Holder:
    """Who holds a store's lease: the fencing token, and where and since when it runs."""

    token: int
    host: str
    pid: int
    since: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Holder:
        return cls(int(d["token"]), str(d["host"]), int(d["pid"]), str(d["since"]))

    @classmethod
    def parse(cls, raw: bytes | str) -> Holder:
        return cls.from_dict(json.loads(raw))

    def __str__(self) -> str:
        return f"host {self.host}, pid {self.pid}, token {self.token}, since {self.since}"


def current_holder(client: redis.Redis, store: str) -> tuple[Holder, float] | None:
    """The lease's holder and the seconds before the lease expires unless renewed; None when no
    writer holds it."""
    key = LEASE_KEY.format(store=store)
    with client.pipeline(transaction=True) as pipe:
        pipe.get(key)
        pipe.pttl(key)
        raw, left_ms = pipe.execute()
    if raw is None:
        return None
    return Holder.parse(raw), max(int(left_ms), 0) / 1000
