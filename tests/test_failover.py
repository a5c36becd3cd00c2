"""A broker that survives its machine: Sentinel failovers and Redis restarts mid-job, the store as a clean run makes it.

Real servers (a master, a replica and three sentinels, tests/sentinel.py; or one private Redis),
`comix-embed run` with its real writer and Celery workers, kills chosen by the job's progress
(manifests on disk), never by time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from comix_embed.common import config
from comix_embed.common.broker import keys
from comix_embed.common.errors import EXIT_FAILED, EXIT_PAGES_FAILED, EXIT_USAGE
from comix_embed.common.store.manifests import manifest_ids
from comix_embed.common.store.schema import store_path
from comix_embed.private_redis import PrivateRedis, free_port
from tests.cli import enqueue_args, run_args, run_cli
from tests.corpora import PIPELINE_PAGES
from tests.harness import Proc, assert_same_store
from tests.sentinel import MASTER_NAME, SentinelSet
from tests.typed import broker_store

ROWS = PIPELINE_PAGES + 3  # the job corpus's pages, 3 of them broken; one batch per page
# The writer commits each result as it comes (no lingering), so that progress is one manifest per
# batch and a kill chosen by progress lands mid-job; a delivery cancelled by its worker's lost
# connection is sent again within 12 s (its batch lease, renewed every 1.7 s, outlives a failover).
EAGER_WRITER = {"COMIX_WRITER_LINGER_S": "0", "COMIX_WRITER_GAP_LINGER_S": "0", "COMIX_LEASE_TTL_S": "10"}
TIMEOUT = 240  # a safety net on a loaded machine; every wait ends on what the processes do


def _run(checkpoint: Path, corpus: Path, out: Path, broker: str, env: dict[str, str]) -> Proc:
    """`comix-embed run` of the job corpus, one page per batch, two workers, in the background."""
    argv = run_args(checkpoint, corpus, out, "--broker", broker, workers=2, batch_size=1)
    return Proc("run", argv, out.parent / "test-logs", {**EAGER_WRITER, **env})


def _logs(run: Proc) -> str:
    """`run`'s output, and the logs of its writer and workers (beside it in the output folder)."""
    parts = [f"--- run\n{run.text()[-3000:]}"]
    children = sorted((run.log.parent.parent / "out" / "logs").glob("*.log"))
    parts += [f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in children]
    return "\n".join(parts)


def _finished(run: Proc) -> int:
    """`run`'s exit status, once it has ended by itself."""
    try:
        return run.proc.wait(TIMEOUT)
    except Exception:
        run.stop()
        raise AssertionError(f"run did not end within {TIMEOUT} s\n{_logs(run)}") from None


def _each_page_committed_once(out: Path, clean: Path) -> None:
    """The store is the clean run's, and the audit log names every page once: no batch committed twice."""
    assert_same_store(out, clean)
    pages = [json.loads(line)["page_id"] for line in (out / "audit.jsonl").read_text().splitlines()]
    assert len(pages) == len(set(pages)) == ROWS
    assert manifest_ids(store_path(out)) == set(range(ROWS))
    proc = run_cli("diagnose", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _wait_for(done: Callable[[], bool], what: str, proc: subprocess.Popen, logs: Callable[[], str]) -> None:
    """Until `done()`, failing at once (with the logs) if `proc` has ended meanwhile."""
    deadline = time.monotonic() + TIMEOUT
    while not done():
        assert proc.poll() is None, f"the process ended ({proc.returncode}) before {what}\n{logs()}"
        assert time.monotonic() < deadline, f"no {what} within {TIMEOUT} s\n{logs()}"
        time.sleep(0.005)


def _manifests(out: Path, count: int, run: Proc) -> None:
    """Until `count` batches have a manifest."""
    _wait_for(lambda: len(manifest_ids(store_path(out))) >= count, f"{count} manifests", run.proc, lambda: _logs(run))


def _writer_token(out: Path) -> int:
    return int(json.loads((out / "writer.token.json").read_text())["token"])


def test_run_survives_failovers_of_its_broker_and_the_writes_they_lose(
    tiny_checkpoint: Path, job_corpus: Path, clean_store: Path, tmp_path: Path
) -> None:
    """Two failovers mid-job, with no manifest step: the first loses every write of the run (its
    replica never saw them: tasks, results, the writer lease and its fencing counter), the second
    comes halfway. The batches lost are sent again, the fencing token still grows (the store holds
    it), and the store is the clean run's."""
    out = tmp_path / "out"
    with SentinelSet() as sentinels:
        runs: list[Proc] = []

        def until_the_first_manifest() -> None:
            runs.append(
                _run(tiny_checkpoint, job_corpus, out, sentinels.url, {"COMIX_BROKER_MASTER_NAME": MASTER_NAME})
            )
            _manifests(out, 1, runs[0])

        old, new = sentinels.kill_master(freeze_replica=until_the_first_manifest)
        (run,) = runs
        try:
            assert run.proc.poll() is None, _logs(run)
            assert len(manifest_ids(store_path(out))) < ROWS  # killed mid-job
            store = broker_store(out)
            master = sentinels.client(new)
            # the new master never saw the first writer lease: its counter holds no token 1
            assert master.get(keys.WRITER_TOKEN.format(store=store)) in (None, b"2")
            sentinels.restart_as_replica(old)

            _manifests(out, ROWS // 2, run)
            assert len(manifest_ids(store_path(out))) < ROWS, "the second failover came after the job"
            sentinels.kill_master()
            status = run_cli(
                "status", "--output-dir", str(out), "--broker", sentinels.url, "--json",
                env={"COMIX_BROKER_MASTER_NAME": MASTER_NAME},
            )  # fmt: skip
            code = _finished(run)
        finally:
            run.stop()
    logs = _logs(run)
    assert code == EXIT_PAGES_FAILED, logs  # done; the 3 broken pages failed, as in a clean run
    assert "re-sent" in run.text() and "batches the broker no longer held" in run.text(), logs
    writer_log = (out / "logs" / "writer.log").read_text()
    assert "token 1" in writer_log and "was gone (Redis wiped, or expired): token 2 now" in writer_log, logs
    assert _writer_token(out) >= 2
    assert status.returncode == 0, status.stderr
    assert "broker_error" not in json.loads(status.stdout), status.stdout  # read from the new master
    _each_page_committed_once(out, clean_store)


def test_run_survives_a_restart_of_its_redis_without_sentinel(
    tiny_checkpoint: Path, job_corpus: Path, clean_store: Path, tmp_path: Path
) -> None:
    """Redis killed mid-job and started again empty on its port (a reboot without persistence):
    the workers and the writer wait, saying so, and reconnect; `run` goes on and completes."""
    out = tmp_path / "out"
    redis_server = PrivateRedis().start()
    run = _run(tiny_checkpoint, job_corpus, out, redis_server.url, {})
    try:
        _manifests(out, 3, run)
        assert redis_server.proc is not None
        os.killpg(redis_server.proc.pid, signal.SIGKILL)
        redis_server.proc.wait()
        killed_at = len(manifest_ids(store_path(out)))
        assert killed_at < ROWS, "Redis was killed after the job"
        writer_log = out / "logs" / "writer.log"
        _wait_for(lambda: "unreachable" in writer_log.read_text(), "the writer waiting", run.proc, lambda: _logs(run))
        redis_server.stop()
        redis_server = PrivateRedis(port=redis_server.port).start()
        code = _finished(run)
    finally:
        run.stop()
        redis_server.stop()
    logs = _logs(run)
    assert code == EXIT_PAGES_FAILED, logs
    assert "retrying in" in writer_log.read_text() and "COMIX_BROKER_WAIT_S" in writer_log.read_text()
    assert _writer_token(out) == 2  # Redis forgot token 1; the store did not
    _each_page_committed_once(out, clean_store)


def _queued_in_flower(port: int) -> int | None:
    """The batches Flower counts in the default queue (its HTTP API), None while it cannot say."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/queues/length", timeout=10) as answer:
            queues = json.loads(answer.read())["active_queues"]
    except OSError:
        return None
    return next((q["messages"] for q in queues if q["name"] == config.EMBED_QUEUE), None)


def test_flower_follows_the_master_the_sentinels_name(tmp_path: Path) -> None:
    """Flower, started as compose.yaml starts it with the Sentinel URL, counts the queue of the
    master, and after a failover that of the new one."""
    with SentinelSet() as sentinels:
        port = free_port()
        env = {
            **os.environ,
            "COMIX_BROKER_URL": sentinels.url,
            "COMIX_BROKER_MASTER_NAME": MASTER_NAME,
            "FLOWER_UNAUTHENTICATED_API": "1",
        }
        argv = [sys.executable, "-m", "celery", "-A", "comix_embed.common.celery_app", "flower"]
        log = tmp_path / "flower.log"
        with open(log, "wb") as out:
            flower = subprocess.Popen(
                [*argv, f"--port={port}", "--address=127.0.0.1", "--persistent=False"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            old = sentinels.client(sentinels.master_port())
            old.lpush(config.EMBED_QUEUE, b"{}")
            _wait_for(lambda: _queued_in_flower(port) == 1, "Flower counting 1 batch", flower, log.read_text)
            replica = next(p for p in sentinels.servers if p != sentinels.master_port())
            _wait_for(
                lambda: sentinels.client(replica).llen(config.EMBED_QUEUE) == 1,
                "the batch replicated",
                flower,
                log.read_text,
            )
            _, new = sentinels.kill_master()
            sentinels.client(new).lpush(config.EMBED_QUEUE, b"{}")
            _wait_for(lambda: _queued_in_flower(port) == 2, "Flower counting the new master's 2", flower, log.read_text)
        finally:
            os.killpg(flower.pid, signal.SIGKILL)
            flower.wait()


def test_a_broker_that_stays_unreachable_ends_the_command_after_the_wait(
    tiny_checkpoint: Path, job_corpus: Path, tmp_path: Path
) -> None:
    """COMIX_BROKER_WAIT_S bounds the wait: each retry is logged, then the command names the broker."""
    with PrivateRedis() as gone:
        url = gone.url
    proc = run_cli(*enqueue_args(tiny_checkpoint, job_corpus, tmp_path, url), env={"COMIX_BROKER_WAIT_S": "1"})
    assert proc.returncode == EXIT_FAILED, proc.stdout + proc.stderr
    assert "unreachable" in proc.stderr and "retrying in" in proc.stderr and "COMIX_BROKER_WAIT_S=1" in proc.stderr
    assert f"error: cannot reach the broker at {url}" in proc.stderr


@pytest.mark.parametrize(
    ("env", "argv", "said"),
    [
        ({"COMIX_BROKER_URL": "sentinel://127.0.0.1:26379"}, [], "COMIX_BROKER_MASTER_NAME"),
        ({}, ["--broker", "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380"], "COMIX_BROKER_MASTER_NAME"),
        ({"COMIX_BROKER_URL": "sentinel://127.0.0.1:26379;redis://127.0.0.1:6379"}, [], "sentinel://host:port parts"),
        ({"COMIX_BROKER_URL": "sentinel://:secret@127.0.0.1:26379/x"}, [], "database that is no number"),
    ],
)
def test_a_sentinel_url_that_cannot_work_stops_the_command_at_its_start(
    tmp_path: Path, env: dict[str, str], argv: list[str], said: str
) -> None:
    proc = run_cli("writer", "--output-dir", str(tmp_path), *argv, env={"COMIX_BROKER_MASTER_NAME": "", **env})
    assert proc.returncode == EXIT_USAGE, proc.stdout + proc.stderr
    assert said in proc.stderr and "secret" not in proc.stderr
