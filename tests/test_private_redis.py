"""The private Redis that `run` and the tests start: it is the server that answers, or an error.

Between choosing a free port and binding it, another program can take the port (a second run, a
parallel test process). A ping would then be answered by that other server, and a run would
talk to a Redis it does not own; these tests take the port first with a real second server.
"""

from __future__ import annotations

import pytest
import redis

from comix_embed import private_redis
from comix_embed.private_redis import PrivateRedis


def _pid(server: PrivateRedis) -> int:
    return int(redis.Redis.from_url(server.url).info("server")["process_id"])


def test_a_port_taken_before_the_bind_is_replaced_by_another(monkeypatch: pytest.MonkeyPatch) -> None:
    with PrivateRedis() as first:
        choose = private_redis.free_port
        offered = iter([first.port])  # the port chosen first is already taken, as in the race
        monkeypatch.setattr(private_redis, "free_port", lambda: next(offered, None) or choose())
        with PrivateRedis() as second:
            assert second.port != first.port
            assert second.proc is not None and _pid(second) == second.proc.pid
        assert first.proc is not None and _pid(first) == first.proc.pid  # the first server untouched


def test_a_given_port_that_is_taken_is_an_error_naming_it() -> None:
    with PrivateRedis() as first:
        taken = PrivateRedis(port=first.port)
        with pytest.raises(RuntimeError, match=f"port {first.port}"):
            taken.start()
        taken.stop()
        assert first.proc is not None and _pid(first) == first.proc.pid
