"""Real servers for the remote-input tests and benchmarks: an S3 API, a fault proxy, a web server.

The S3 API is moto in server mode, in its own process; the fault proxy stands in front of it; the
web server serves image roots over plain HTTP.

Nothing here is a mock of a client: the code under test talks HTTP to these servers on 127.0.0.1
exactly as it would talk to AWS, MinIO or a web server. The fault proxy injects, with bounded
counts, what object storage does under load: latency, 503 SlowDown, dropped connections.
"""

from __future__ import annotations

import http.client
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3

# Started in a child: moto's ThreadedMotoServer on a free port, which it prints once it listens.
_MOTO = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@dataclass
class S3Server:
    """A running S3 API server and the environment a client needs to reach it."""

    endpoint: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen[str]

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The standard AWS variables for this server (credentials, endpoint, no other source)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": endpoint or self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self) -> Any:
        """A client of this server, for a test's setup (made with the same environment)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def upload_tree(self, folder: Path, bucket: str, prefix: str) -> int:
        """Every file below `folder` as `prefix/<relative path>` in `bucket` (made if missing)."""
        client = self.client()
        with suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        count = 0
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.put_object(
                    Bucket=bucket, Key=prefix + path.relative_to(folder).as_posix(), Body=path.read_bytes()
                )
                count += 1
        return count


@contextmanager
def s3_server(auth: bool = False) -> Iterator[S3Server]:
    """A moto S3 server in its own process. With `auth`, it checks credentials as AWS does
    (INITIAL_NO_AUTH_ACTION_COUNT=0): none it has not issued are accepted."""
    env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # werkzeug's request log
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdin is not None
    port = int(proc.stdout.readline())  # printed once it listens
    try:
        yield S3Server(f"http://127.0.0.1:{port}", "AKIDCOMIXTEST", "secret-" + secrets.token_hex(16), proc)
    finally:
        stop_child(proc)


def stop_child(proc: subprocess.Popen[str]) -> None:
    """Stop a server child that runs until its stdin closes (killed if it has not gone in 30 s)."""
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)

DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)


@dataclass
class Faults:
    """What the proxy injects: `latency_s` before every request, the next `slow_down` (503
    SlowDown) and `drop` (connection closed, no answer) requests whose path holds `match`, and a
    403 AccessDenied for every request whose path holds `deny` (when set)."""

    latency_s: float = 0.0
    slow_down: int = 0
    drop: int = 0
    match: str = ""
    deny: str = ""
    injected: dict[str, int] = field(default_factory=lambda: {"slow_down": 0, "drop": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, path: str) -> str | None:
        """The fault for this request, if one is left: counted down under the lock."""
        if self.deny and self.deny in path:
            return "deny"
        if self.match not in path:
            return None
        with self.lock:
            for kind in ("slow_down", "drop"):
                if getattr(self, kind) > 0:
                    setattr(self, kind, getattr(self, kind) - 1)
                    self.injected[kind] += 1
                    return kind
        return None


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each small answer waits for the client's delayed ACK (~40 ms)
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _forward(self) -> None:
        faults = self.server.faults
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if faults.latency_s:
            time.sleep(faults.latency_s)
        fault = faults.take(self.path)
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault in ("slow_down", "deny"):
            status, reason, body = (503, "Slow Down", SLOW_DOWN) if fault == "slow_down" else (403, "Forbidden", DENIED)
            self.send_response(status, reason)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        upstream = self.server.connection()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException):
            self.server.drop_connection()
            raise
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, faults: Faults) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.faults = faults
        self.local = threading.local()

    def connection(self) -> http.client.HTTPConnection:
        """This handler thread's keep-alive connection to the upstream server."""
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        return conn

    def drop_connection(self) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
            self.local.conn = None


@contextmanager
def serving_in_thread(server: HTTPServer) -> Iterator[str]:
    """`server` answering in a thread until the block ends; yields its URL."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def fault_proxy(upstream: str, faults: Faults) -> Iterator[str]:
    """A proxy on 127.0.0.1 in front of `upstream`, injecting `faults`; yields its URL."""
    with serving_in_thread(_ProxyServer(upstream, faults)) as url:
        yield url


class _ImageHandler(SimpleHTTPRequestHandler):
    """Files below the server's folder; `/images/moved/<x>` redirects to `/images/<x>` (inside the
    root), `/images/away/<x>` to `/outside/<x>` (out of it)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        for prefix, target in (("/images/moved/", "/images/"), ("/images/away/", "/outside/")):
            if self.path.startswith(prefix):
                self.send_response(302)
                self.send_header("Location", target + self.path[len(prefix) :])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        super().do_GET()


@contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """A web server for `folder` on 127.0.0.1; yields its base URL."""

    def handler(*args: Any, **kwargs: Any) -> _ImageHandler:
        return _ImageHandler(*args, directory=str(folder), **kwargs)

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with serving_in_thread(server) as url:
        yield url
