"""`comix-embed status` from the store and a real (private) Redis."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from comix_embed.common.model.identity import identity_of, queue_name
from comix_embed.common.store.reading import read_attrs
from comix_embed.common.store.schema import store_path
from comix_embed.private_redis import PrivateRedis
from tests.cli import run_cli


def test_status_of_an_interrupted_job(interrupted_store: Path) -> None:
    queue = queue_name(identity_of(read_attrs(store_path(interrupted_store))))  # the store's model's queue
    with PrivateRedis() as server:
        redis.Redis.from_url(server.url).rpush(queue, b"{}")  # one batch waiting
        proc = run_cli("status", "--output-dir", str(interrupted_store), "--broker", server.url, "--json")
        text = run_cli("status", "--output-dir", str(interrupted_store), "--broker", server.url)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    assert state["registered_pages"] == 24
    assert state["pages_with_manifest"] == 12  # batches 0, 1 and 3
    assert state["committed_rows"] == 8  # readable in order: batch 3 waits for batch 2
    assert state["owed_batches"] == 3
    assert state["queued_batches"] == 1
    assert "committed: 12 of 24 pages (8 rows readable in order)" in text.stdout


def test_status_with_failed_pages_and_no_broker(pipeline_store: Path) -> None:
    proc = run_cli("status", "--output-dir", str(pipeline_store), "--broker", "redis://127.0.0.1:1/0")
    assert proc.returncode == 0, proc.stderr
    assert "committed: 19 of 19 pages" in proc.stdout and "failed: 3" in proc.stdout
    assert "broker: unreachable" in proc.stdout


def test_status_without_a_job_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("status", "--output-dir", str(tmp_path))
    assert proc.returncode == 2 and "no job" in proc.stderr
