"""A Redis that refuses writes because it is out of memory: recognise it and say which limit.

Why: with `maxmemory` and the `noeviction` policy (the one a job's queue needs: evicting keys would
drop batches), a full Redis answers every write with an OOM error. Workers then hold their
batches and `enqueue` stops; both say which limit was reached and how to raise it, instead of a
bare error or, worse, a batch that silently vanishes.
"""

from __future__ import annotations

import redis


def is_out_of_memory(exc: BaseException | None) -> bool:
    """True for an OOM refusal, also from inside a script or wrapped by a library (kombu, Celery)."""
    while exc is not None:
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM command not allowed" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def describe_limit(client: redis.Redis) -> str:
    """`Redis refuses writes: it is out of memory (maxmemory N bytes, used M, policy P)` and the fix."""
    try:
        info: dict = client.info("memory")
        limit = (
            f"maxmemory {info.get('maxmemory')} bytes, used {info.get('used_memory')}, "
            f"policy {info.get('maxmemory_policy')}"
        )
    except redis.RedisError as exc:
        limit = f"its limit could not be read: {exc}"
    return (
        f"Redis refuses writes: it is out of memory ({limit}); raise it "
        f"(redis-cli CONFIG SET maxmemory 4gb, and in redis.conf) or free memory"
    )
