"""Real Redis Sentinel for the failover tests: a master, a replica and three sentinels on 127.0.0.1.

The servers are private Redis servers (comix_embed/private_redis.py); the sentinels are Debian's
`redis-sentinel`, or `redis-server --sentinel` (the same program) where only that is installed.
Every wait is on what the servers say: the sentinels naming a new master, a replica online.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from comix_embed.private_redis import PrivateRedis, find_redis_server, free_port

MASTER_NAME = "comix"
# A master that answers no ping for this long is down for a sentinel; two of three agreeing, one
# of them fails it over.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def _wait(what: str, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def _sentinel_argv(conf: Path) -> list[str]:
    found = shutil.which("redis-sentinel")
    return [found, str(conf)] if found else [find_redis_server(), str(conf), "--sentinel"]


class SentinelSet:
    """Context manager: one master, one replica and three sentinels watching them, all stopped on exit.

    `servers` maps each server's port to its process; a master killed is started again as a
    replica of the new one (`restart_as_replica`), so that the next failover has a replica to promote.
    """

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="comix-sentinel-")
        self.servers: dict[int, PrivateRedis] = {}
        self.sentinels: list[tuple[int, subprocess.Popen]] = []

    @property
    def url(self) -> str:
        """The broker URL in Celery's form: every sentinel, separated by ';'."""
        return ";".join(f"sentinel://127.0.0.1:{port}/0" for port, _ in self.sentinels)

    def __enter__(self) -> SentinelSet:
        try:
            master = self._server(None)
            self._server(master.port)
            for _ in range(3):
                self._start_sentinel(master.port)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _server(self, replica_of: int | None, port: int | None = None) -> PrivateRedis:
        server = PrivateRedis(port=port, replica_of=replica_of).start()
        self.servers[server.port] = server
        return server

    def _start_sentinel(self, master_port: int) -> None:
        port = free_port()
        conf = Path(self._dir.name) / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self._dir.name}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        proc = subprocess.Popen(
            _sentinel_argv(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.sentinels.append((port, proc))

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5)

    def master_port(self, sentinel: int = 0) -> int:
        """The master's port, as one sentinel names it."""
        _host, port = self.client(self.sentinels[sentinel][0]).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
        )
        return int(port)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until every sentinel names the same master, knows the other two sentinels and one
        replica that is up, and the master sees that replica online: a failover can happen."""
        master = self.master_port()

        def ready() -> bool:
            for port, _ in self.sentinels:
                sentinel = self.client(port)
                if int(sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)[1]) != master:
                    return False
                if len(sentinel.execute_command("SENTINEL", "SENTINELS", MASTER_NAME)) != 2:
                    return False
                replicas = sentinel.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
                up = [r for r in replicas if b"down" not in r[b"flags"] and r.get(b"master-link-status") == b"ok"]
                if len(up) != 1:
                    return False
            info = self.client(master).info("replication")
            return info.get("connected_slaves") == 1 and info["slave0"]["state"] == "online"

        _wait("the sentinels ready to fail the master over", ready, timeout)

    def kill_master(self, freeze_replica: Callable[[], None] | None = None, timeout: float = 60) -> tuple[int, int]:
        """SIGKILL the master; wait until every sentinel names the replica as the new master, and
        that server says it is one. With `freeze_replica`, the replica is stopped (SIGSTOP) first,
        its link to the master cut, `freeze_replica()` runs while the master takes writes the replica
        never sees, and the replica goes on only once the master is dead: those writes are lost, as asynchronous
        replication loses them. Returns (old master's port, new master's port)."""
        old = self.master_port()
        (replica,) = [port for port in self.servers if port != old]
        frozen = self.servers[replica].proc
        assert frozen is not None
        if freeze_replica is not None:
            os.kill(frozen.pid, signal.SIGSTOP)
            # what the master sent before reaches the replica still (its socket holds it); what it
            # writes from here on never does: the link is cut, and the stopped replica cannot reconnect
            self.client(old).client_kill_filter(_type="replica")
            try:
                freeze_replica()
            finally:
                self._kill(old)
                os.kill(frozen.pid, signal.SIGCONT)
        else:
            self._kill(old)

        def promoted() -> bool:
            named = {self.master_port(i) for i in range(len(self.sentinels))}
            return named == {replica} and self.client(replica).info("replication")["role"] == "master"

        _wait(f"a failover from port {old} to {replica}", promoted, timeout)
        return old, replica

    def _kill(self, port: int) -> None:
        server = self.servers.pop(port)
        assert server.proc is not None
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        server.stop()

    def restart_as_replica(self, port: int) -> None:
        """Start a killed master again on its port, as a replica of the current master, and wait
        until the sentinels could fail over to it."""
        self._server(self.master_port(), port=port)
        self.wait_ready()

    def stop(self) -> None:
        for _, proc in self.sentinels:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for server in list(self.servers.values()):
            if server.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.proc.pid, signal.SIGCONT)  # a frozen replica must hear its SIGTERM
            server.stop()
        self.servers.clear()
        self.sentinels.clear()
        self._dir.cleanup()
