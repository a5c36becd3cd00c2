"""Redis clients from the broker URL, the one place: plain Redis or Sentinel, waiting out an outage.

Every role's own client (the results stream, the batch and writer leases, deliveries, `run`,
`status`) comes from `connect`, so that each follows a Sentinel failover and waits out a restart
without code of its own. Celery's transport takes the same URL with `transport_options()`.
- `redis://` and `rediss://` name one server. `sentinel://host:port;sentinel://host:port;...` is
  Celery's form for Redis Sentinel: the sentinels to ask for the master named by
  COMIX_BROKER_MASTER_NAME; a password and database in the first one are the master's, as kombu
  reads them. Each (re)connection asks the sentinels afresh, so after a failover the next command
  goes to the new master.
- A command that finds the broker unreachable (refused, reset, timed out, no master known yet,
  or a master demoted to replica) reconnects with exponential backoff, logging each wait, for up to
  COMIX_BROKER_WAIT_S seconds since its first failure, then raises the last ConnectionError.
  Replication is asynchronous: what the new master lacks, the store's manifests and job files
  put right (docs/store.md, "A failover of the broker").
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from comix_embed.common import config

log = logging.getLogger("comix.broker")

T = TypeVar("T")

# A dead host answers nothing: give up connecting to it after this long and try again (after a
# failover, the sentinels name the new master); an idle connection whose peer vanished is found
# by TCP keepalive within about KEEPIDLE + KEEPCNT * KEEPINTVL seconds, and a command that waits
# for its reply (no command of ours blocks for more than a second) after REPLY_TIMEOUT_S.
CONNECT_TIMEOUT_S = 5.0
REPLY_TIMEOUT_S = 30.0
_KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}
# Backoff between tries: doubling from the first, at most the last.
_BACKOFF_S = (0.1, 2.0)


def keepalive_options() -> dict[int, int]:
    """TCP keepalive timings, for the platforms that have them (Linux); empty elsewhere."""
    return {getattr(socket, name): value for name, value in _KEEPALIVE.items() if hasattr(socket, name)}


class Patience(Retry):
    """Retry a command on a lost or refused connection until `wait_s` has passed since its first
    failure, saying each wait in the log; then the last error goes up to the caller."""

    def __init__(self, shown: str, wait_s: float) -> None:
        super().__init__(NoBackoff(), -1, (RedisConnectionError, RedisTimeoutError, socket.timeout))
        self.shown = shown
        self.wait_s = wait_s

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        first = 0.0
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                if is_retryable is not None and not is_retryable(error):
                    raise
                now = time.monotonic()
                first = first or now
                left = self.wait_s - (now - first)
                if left <= 0:
                    raise
                delay = min(_BACKOFF_S[0] * 2 ** (failures - 1), _BACKOFF_S[1], left)
                log.warning(
                    "broker %s unreachable (%s: %s); retrying in %.1f s (%.0f s of %s=%g s left)",
                    self.shown,
                    type(error).__name__,
                    error,
                    delay,
                    left,
                    config.BROKER_WAIT_S.name,
                    self.wait_s,
                )
                time.sleep(delay)


class FollowingConnection(SentinelManagedConnection):
    """A connection to a Sentinel's master that asks the sentinels where the master is each time it
    connects. redis-py reconnects a dropped connection to the address it had (and would retry a
    dead master for the whole wait); this one goes to the master the sentinels name now."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        # one try here: a failure goes up to the command's Patience, whose next try asks again
        super().connect_check_health(check_health=check_health, retry_socket_connect=False)


def socket_options() -> dict[str, Any]:
    """How every connection to the broker is made, ours and Celery's alike: TCP keepalive, and a
    connect that gives up on a dead host after CONNECT_TIMEOUT_S."""
    return {
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
    }


def connect(url: str, wait_s: float | None = None) -> redis.Redis:
    """The Redis client for broker `url` (checked by `config.check_broker`), its commands retried
    for up to `wait_s` seconds (default COMIX_BROKER_WAIT_S) while the broker is unreachable."""
    config.check_broker(url)
    patience = Patience(config.masked_url(url), config.BROKER_WAIT_S.get() if wait_s is None else wait_s)
    options: dict[str, Any] = {
        **socket_options(),
        "socket_timeout": REPLY_TIMEOUT_S,
        "health_check_interval": 25,
        "retry": patience,
    }
    if not config.is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    where = config.parse_sentinel_url(url)
    sentinel = Sentinel(
        where.sentinels,
        sentinel_kwargs={"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": CONNECT_TIMEOUT_S},
        username=where.username,
        password=where.password,
        db=where.db,
        **options,
    )
    return sentinel.master_for(
        config.BROKER_MASTER_NAME.get(), redis_class=redis.Redis, connection_class=FollowingConnection
    )


def transport_options() -> dict[str, Any]:
    """What Celery's Redis transport needs beyond the URL to reach the same broker: the master's
    name for a `sentinel://` URL, and the same connection timeouts as `connect`."""
    options = socket_options()
    name = config.BROKER_MASTER_NAME.get()
    if name:
        options["master_name"] = name
    return options
