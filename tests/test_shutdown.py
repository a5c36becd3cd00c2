"""Shutdowns that finish or hand back: SIGTERM to workers and to the writer, with real processes.

Each worker here is started with the batch fault point (common/failpoint.py): its pool process
stops itself (SIGSTOP) holding the first batch it takes, so the signal always lands mid-batch, on
a loaded machine as on an idle one. Batch leases last ten minutes (COMIX_LEASE_TTL_S): a batch
that comes back within the test came back because its worker handed it back, never because its
batch lease expired. The job must end identical to a clean run.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis

from comix_embed.common.broker import keys
from comix_embed.common.broker.batch_lease import BatchLeaseInfo, batch_leases
from comix_embed.common.broker.results_stream import results_key
from comix_embed.common.store.manifests import manifest_ids
from comix_embed.common.store.schema import store_path
from comix_embed.private_redis import PrivateRedis
from tests.cli import enqueue_args, run_cli
from tests.corpora import PIPELINE_PAGES
from tests.harness import (
    Proc,
    assert_same_store,
    stopped_at,
    wait_committed,
    wait_results,
    with_switches,
    worker,
    writer,
)
from tests.typed import broker_store, entries

ROWS = PIPELINE_PAGES + 3  # the pipeline corpus: 21 pages in 6 batches of 4
LONG = {"COMIX_LEASE_TTL_S": "600"}  # no batch lease expires during a test
WARM = "warm shutdown: no new batch"


def _wait(condition, timeout: float, what) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what() if callable(what) else what}"
        time.sleep(0.02)


def _stopped_mid_batch(w: Proc, url: str) -> tuple[int, BatchLeaseInfo]:
    """The pool process of `w` stopped at its first batch, and that batch's lease."""
    pid = stopped_at(w.stop_file("batch"), 300)
    held = next(info for info in batch_leases(redis.Redis.from_url(url)) if info.pid == pid)
    return pid, held


def test_workers_given_sigterm_finish_their_batch_or_hand_it_back_at_once(
    clean_store: Path, job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    """One job, four shutdowns in turn, then a worker that finishes the job:
    1. SIGTERM to the worker, its batch able to finish: it finishes it and exits 0, nothing given back;
    2. SIGTERM, and the batch cannot finish within COMIX_WORKER_SHUTDOWN_S: given back at once;
    3. SIGTERM twice: the second is a cold shutdown, the batch given back at once (the bound of ten
       minutes is not waited for);
    4. SIGTERM to the whole worker (its process group, as systemd stops a service): its pool
       process dies of it, and the batch is given back, not counted as lost.
    Each batch given back is the next worker's first batch: sent again ahead of new ones."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    client = redis.Redis.from_url(broker.url)
    assert run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url)).returncode == 0
    wr = writer(out, broker.url, logs)
    procs = [wr]

    def start(name: str, bound: str) -> Proc:
        env = {**LONG, "COMIX_WORKER_SHUTDOWN_S": bound}
        procs.append(worker(tiny_checkpoint, broker.url, logs, name, env, stop_at=("batch",)))
        return procs[-1]

    try:
        # 1. the batch at hand finishes within the bound
        w = start("finishes", "600")
        pid, held = _stopped_mid_batch(w, broker.url)
        os.kill(w.pid, signal.SIGTERM)
        _wait(lambda: WARM in w.text(), 60, w.text)
        os.kill(pid, signal.SIGCONT)
        assert w.proc.wait(120) == 0, w.text()
        _wait(lambda: held.batch in manifest_ids(store_path(out)), 120, wr.text)
        assert "given back on shutdown" not in w.text()

        # 2. the batch at hand cannot finish within the bound (its process stays stopped)
        w = start("too_slow", "1")
        pid, held = _stopped_mid_batch(w, broker.url)
        os.kill(w.pid, signal.SIGTERM)
        _wait(lambda: f"batch {held.batch} given back on shutdown" in w.text(), 60, w.text)
        assert "cold shutdown (1 s passed)" in w.text()
        os.kill(pid, signal.SIGKILL)  # the stuck process: Celery's cold shutdown waits for it
        assert w.proc.wait(120) == 0  # the shutdown asked for, though it ended cold
        given_back = held.batch

        # 3. a second SIGTERM
        w = start("twice", "600")
        pid, held = _stopped_mid_batch(w, broker.url)
        assert held.batch == given_back  # sent again at once, ahead of new batches
        os.kill(w.pid, signal.SIGTERM)
        _wait(lambda: WARM in w.text(), 60, w.text)
        os.kill(w.pid, signal.SIGTERM)
        _wait(lambda: f"batch {held.batch} given back on shutdown" in w.text(), 60, w.text)
        assert "cold shutdown (a second signal)" in w.text()
        os.kill(pid, signal.SIGKILL)
        assert w.proc.wait(120) == 0
        given_back = held.batch

        # 4. SIGTERM to the whole process group
        w = start("whole", "600")
        pid, held = _stopped_mid_batch(w, broker.url)
        assert held.batch == given_back
        os.killpg(w.pid, signal.SIGTERM)
        _wait(lambda: WARM in w.text(), 60, w.text)
        os.kill(pid, signal.SIGCONT)  # the pool process dies of its SIGTERM
        _wait(lambda: f"batch {held.batch} given back on shutdown" in w.text(), 60, w.text)
        assert w.proc.wait(120) == 0  # a warm shutdown that had nothing left to wait for
        given_back = held.batch

        last = worker(tiny_checkpoint, broker.url, logs, "last", LONG, stop_at=("batch",))
        procs.append(last)
        pid, held = _stopped_mid_batch(last, broker.url)
        assert held.batch == given_back
        os.kill(pid, signal.SIGCONT)
        wait_committed(out, ROWS, 300, [wr, last])
    finally:
        for p in procs:
            p.stop()
    store = broker_store(out)
    assert client.hlen(keys.LOST.format(store=store)) == 0  # given back, never lost
    assert "batch lease expired" not in wr.text()
    assert_same_store(out, clean_store)


def test_the_writer_given_sigterm_mid_commit_finishes_it_and_acknowledges_only_what_it_committed(
    clean_store: Path, job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    """Every result waits in Redis before the writer starts; it reads them all and commits one at a
    time (--read 1), and stops itself in its first commit, its rows written, its manifest not yet
    (the "commit" fault point). SIGTERM lands there: the writer finishes that commit, acknowledges
    it alone, and exits 0. The results it read without committing stay unacknowledged, and the
    next writer takes them over at once and ends the job as a clean run does."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    client = redis.Redis.from_url(broker.url)
    assert run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url)).returncode == 0
    w = worker(tiny_checkpoint, broker.url, logs, "w")
    stop = logs / "writer.commit.pid"
    env = with_switches({"COMIX_TEST_STOP_AT": f"commit:{stop}"}, {"COMIX_WRITER_LINGER_S": "0"})
    procs = [w]
    try:
        wait_results(broker.url, out, 6, 300)
        first = writer(out, broker.url, logs, "first", "--read", "1", env=env)
        procs.append(first)
        assert stopped_at(stop, 120) == first.pid
        os.kill(first.pid, signal.SIGTERM)  # delivered once it runs again, mid-commit
        os.kill(first.pid, signal.SIGCONT)
        assert first.proc.wait(120) == 0, first.text()
        committed = manifest_ids(store_path(out))
        assert len(committed) == 1
        key = results_key(broker_store(out))
        left = {int(fields[b"batch"]) for _, fields in entries(client, key)}
        assert left == set(range(6)) - committed  # what it committed it acknowledged, and nothing else
        assert client.xpending(key, "writer")["pending"] == 5  # read, not committed: not acknowledged
        again = writer(out, broker.url, logs, "again")
        procs.append(again)
        wait_committed(out, ROWS, 300, [again])
    finally:
        for p in procs:
            p.stop()
    assert "writer stopped" in first.text()
    assert "took over 5 results that earlier writers left unacknowledged" in again.text()
    assert "waiting up to" not in again.text()  # the writer lease was given back on the way out
    assert_same_store(out, clean_store)
