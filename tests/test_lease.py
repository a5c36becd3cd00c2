"""One writer per store across hosts: the Redis lease and its fencing token.

What they hold to is docs/store.md, "The writer lease and fencing tokens". Real writer processes
on one store with the output folder's flock off (COMIX_TEST_WRITER_FLOCK=0, a test switch: the
flock would stop the second writer first), over a private Redis that the tests wipe; with the
flock on, for the takeovers it proves (a writer of this host dead) or cannot prove (another host).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import msgspec
import redis

from comix_embed.common.broker.keys import WRITER_LEASE, WRITER_TOKEN
from comix_embed.common.broker.results_stream import push, results_key
from comix_embed.common.broker.writer_lease import WriterLeaseHolder
from comix_embed.common.store.jobs import Job
from comix_embed.common.store.manifests import manifest_file, manifest_ids, read_manifest, scan_manifests
from comix_embed.common.store.schema import store_path
from comix_embed.common.timestamps import utc_now
from comix_embed.private_redis import PrivateRedis
from comix_embed.writer.commit import StoreWriter
from comix_embed.writer.lease import WriterLease, read_record
from comix_embed.writer.manifests import write_manifest
from tests import synthetic
from tests.cli import run_cli
from tests.harness import process_state, with_switches, writer
from tests.typed import StoreArrays, broker_store, read_new

TTL = "3"  # seconds: a short lease keeps the takeover tests short
ENV = with_switches({"COMIX_TEST_WRITER_FLOCK": "0"}, {"COMIX_WRITER_LEASE_TTL_S": TTL, "COMIX_WRITER_LINGER_S": "0"})


def _wait(condition, timeout: float, what) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what() if callable(what) else what}"
        time.sleep(0.02)


def _job(out: Path) -> tuple[Job, str]:
    job, _ = synthetic.plan(out, synthetic.make_pages(48), 8)
    return job, broker_store(out)


def _send(client: redis.Redis, store: str, job: Job, batches: list[int]) -> None:
    for b in batches:
        push(client, store, b, synthetic.make_result(job, b, synthetic.model_info()).to_bytes(), 64, 10)


def _tokens(out: Path) -> dict[int, int]:
    return {b: m.token or 0 for b, m in scan_manifests(store_path(out))[0].items()}


def test_second_writer_exits_2_naming_the_holder(tmp_path: Path, broker: PrivateRedis) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    job, store = _job(out)
    client = redis.Redis.from_url(broker.url)
    first = writer(out, broker.url, logs, "first", env=ENV)
    try:
        _wait(lambda: "lease token 1" in first.text(), 60, first.text)
        second = run_cli("writer", "--output-dir", str(out), "--broker", broker.url, env=ENV, timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        holder = f"has a writer: host {socket.gethostname()}, pid {first.pid}, token 1, since 20"
        assert holder in second.stderr, second.stderr
        _send(client, store, job, [0, 1])  # the first writer goes on, undisturbed
        _wait(lambda: manifest_ids(store_path(out)) == {0, 1}, 60, first.text)
        assert first.proc.poll() is None
        shown = _status(out, broker.url)
        assert {k: shown["writer"][k] for k in ("host", "pid", "token")} == {
            "host": socket.gethostname(),
            "pid": first.pid,
            "token": 1,
        }
        assert 0 < shown["writer"]["lease_left_s"] <= float(TTL)
    finally:
        first.stop()
    assert _tokens(out) == {0: 1, 1: 1}
    assert _status(out, broker.url)["writer"] is None  # a writer that stops gives its lease back
    text = run_cli("status", "--output-dir", str(out), "--broker", broker.url, timeout=60).stdout
    assert "writer: none holds the store's writer lease" in text


def _status(out: Path, url: str) -> dict:
    done = run_cli("status", "--output-dir", str(out), "--broker", url, "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_killed_writer_is_taken_over_and_tokens_grow_across_a_wiped_redis(tmp_path: Path, broker: PrivateRedis) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    job, store = _job(out)
    client = redis.Redis.from_url(broker.url)
    slow = {**ENV, "COMIX_WRITER_LEASE_TTL_S": "20"}  # longer than a writer takes to start
    first = writer(out, broker.url, logs, "first", env=slow)
    _send(client, store, job, [0, 1])
    _wait(lambda: manifest_ids(store_path(out)) == {0, 1}, 60, first.text)
    # The restarted writer is started before the kill, on a symlink to an empty folder, where it
    # waits for a job: how long it takes to start does not decide whether the lease is still there,
    # and the first writer's folder stays as it is until it dies.
    view, empty = tmp_path / "view", tmp_path / "empty"
    empty.mkdir()
    view.symlink_to(empty)
    restarted = writer(view, broker.url, logs, "restarted", env=slow)
    try:
        _wait(lambda: "waiting for a job" in restarted.text(), 120, restarted.text)
        first.kill()  # SIGKILL: its lease, renewed until now, stays in Redis until it expires
        assert client.exists(WRITER_LEASE.format(store=store))
        (tmp_path / "view.new").symlink_to(out)
        os.replace(tmp_path / "view.new", view)  # at once, the restarted writer's folder is the store's
        _wait(lambda: "lease token 2" in restarted.text(), 60, restarted.text)
        text = restarted.text()
        assert f"is held by host {socket.gethostname()}, pid {first.pid}, token 1, since " in text
        assert "which this writer cannot prove dead (the output folder is not locked): waiting up to " in text
        waited = float(text.split("waiting up to ")[1].split(" s")[0])
        assert 0 <= waited <= 20
        _send(client, store, job, [2])
        _wait(lambda: 2 in manifest_ids(store_path(out)), 60, restarted.text)
        client.flushall()  # Redis loses everything, the lease and its counter with it
        _wait(lambda: "was gone (Redis wiped, or expired): token 3 now" in restarted.text(), 60, restarted.text)
        _send(client, store, job, [3])
        _wait(lambda: 3 in manifest_ids(store_path(out)), 60, restarted.text)
    finally:
        restarted.stop()
    client.flushall()
    again = writer(out, broker.url, logs, "again", env=ENV)  # a wiped Redis: the token comes from the folder
    try:
        _wait(lambda: "lease token 4" in again.text(), 60, again.text)
        _send(client, store, job, [4, 5])
        _wait(lambda: len(manifest_ids(store_path(out))) == 6, 60, again.text)
    finally:
        again.stop()
    assert _tokens(out) == {0: 1, 1: 1, 2: 2, 3: 3, 4: 4, 5: 4}
    record = read_record(out)
    assert record is not None and record.token == 4 and record.accepted == [(0, 3)]


def test_a_writer_killed_and_started_again_at_once_takes_over_from_its_zombie(
    tmp_path: Path, broker: PrivateRedis
) -> None:
    """kill -9, and a new writer started at once while the dead one is a zombie (its parent, this
    test, has not reaped it): the pid table still shows it, its writer lease is still in Redis (a
    TTL of a minute), but the output folder's flock it held is free, so the new writer takes the
    store over at once with a new token and commits. A supervisor that restarts at once
    (`restart: unless-stopped`, systemd's `Restart=`) never loops on exit status 2."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    job, store = _job(out)
    client = redis.Redis.from_url(broker.url)
    env = {"COMIX_WRITER_LEASE_TTL_S": "60", "COMIX_WRITER_LINGER_S": "0"}  # the flock on, as deployed
    first = writer(out, broker.url, logs, "first", env=env)
    procs = [first]
    try:
        _send(client, store, job, [0])
        _wait(lambda: manifest_ids(store_path(out)) == {0}, 60, first.text)
        os.kill(first.pid, signal.SIGKILL)  # not reaped: no wait() or poll() until the end
        _wait(lambda: process_state(first.pid) == "Z", 60, "the killed writer is no zombie")
        held = client.get(WRITER_LEASE.format(store=store))
        assert held is not None and WriterLeaseHolder.parse(held).pid == first.pid
        restarted = writer(out, broker.url, logs, "restarted", env=env)
        procs.append(restarted)
        _send(client, store, job, [1])
        _wait(lambda: manifest_ids(store_path(out)) == {0, 1}, 60, restarted.text)
        assert process_state(first.pid) == "Z"  # still unreaped when the new writer committed
        assert restarted.proc.poll() is None
    finally:
        for p in procs:  # the zombie is reaped here, at last
            p.stop()
    text = restarted.text()
    taken = f"taken over at once from host {socket.gethostname()}, pid {first.pid}, token 1, since "
    assert taken in text and "without waiting for it to expire" in text, text
    assert "waiting up to" not in text and "has a writer" not in text
    assert _tokens(out) == {0: 1, 1: 2}
    record = read_record(out)
    assert record is not None and record.token == 2 and record.pid == restarted.pid


def test_a_writer_lease_of_another_host_is_waited_for_until_it_expires(tmp_path: Path, broker: PrivateRedis) -> None:
    """A lease left by a writer of another host (here written by the test, as a writer there that
    died leaves it): nothing on this host proves that writer dead, so the new writer says whose
    lease it waits for and how long, waits for it to expire, and takes the store with a new token."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    job, store = _job(out)
    client = redis.Redis.from_url(broker.url)
    gone = WriterLeaseHolder(token=1, host="elsewhere.example", pid=4242, since=utc_now())
    client.set(WRITER_LEASE.format(store=store), msgspec.json.encode(gone), px=3000)
    client.set(WRITER_TOKEN.format(store=store), 1)
    w = writer(out, broker.url, logs, "w", env={"COMIX_WRITER_LINGER_S": "0"})
    try:
        _wait(lambda: "lease token 2" in w.text(), 60, w.text)
        _send(client, store, job, [0])
        _wait(lambda: manifest_ids(store_path(out)) == {0}, 60, w.text)
    finally:
        w.stop()
    text = w.text()
    assert f"is held by {gone}, which this writer cannot prove dead (it runs on another host): waiting up to " in text
    waited = float(text.split("waiting up to ")[1].split(" s")[0])
    assert 0 < waited <= 3
    assert "taken over at once" not in text
    assert _tokens(out) == {0: 2}


def test_a_writer_that_lost_its_lease_writes_nothing_more(tmp_path: Path, broker: PrivateRedis) -> None:
    """The first writer stalls (SIGSTOP) past its lease; a second one takes the store; the first,
    woken, finds its token superseded and exits 2 without writing another manifest."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    job, store = _job(out)
    client = redis.Redis.from_url(broker.url)
    key = WRITER_LEASE.format(store=store)
    first = writer(out, broker.url, logs, "first", env=ENV)
    second = None
    try:
        _send(client, store, job, [0])
        _wait(lambda: manifest_ids(store_path(out)) == {0}, 60, first.text)
        os.killpg(first.pid, signal.SIGSTOP)
        _wait(lambda: not client.exists(key), 60, "the stalled writer's lease did not expire")
        second = writer(out, broker.url, logs, "second", env=ENV)
        _wait(lambda: "lease token 2" in second.text(), 60, second.text)
        _send(client, store, job, [1, 2])
        os.killpg(first.pid, signal.SIGCONT)
        assert first.proc.wait(60) == 2
        _wait(lambda: manifest_ids(store_path(out)) == {0, 1, 2}, 60, second.text)
        assert second.proc.poll() is None
    finally:
        first.stop()
        if second is not None:
            second.stop()
    text = first.text()
    assert f"passed to another writer (host {socket.gethostname()}, pid {second.pid}, token 2, since" in text
    assert "writes nothing more" in text
    assert _tokens(out) == {0: 1, 1: 2, 2: 2}


def test_recovery_sets_aside_what_a_lower_token_wrote_after_the_takeover(tmp_path: Path, broker: PrivateRedis) -> None:
    """A writer that lost its lease between its check and its write can still land a manifest (a
    filesystem checks no token). The next holder's recovery treats it as never committed."""
    job, store = _job(tmp_path)
    client = redis.Redis.from_url(broker.url)
    model = synthetic.model_info()
    results = {b: synthetic.make_result(job, b, model) for b in range(4)}
    with WriterLease(client, store, tmp_path) as lease, StoreWriter(tmp_path, fsync=False, fence=lease) as w:
        w.commit([results[0], results[1]])
    with WriterLease(client, store, tmp_path) as lease, StoreWriter(tmp_path, fsync=False, fence=lease) as w:
        assert lease.token == 2 and w.committed_rows == 16
        w.commit([results[2]])
        # what the writer of token 1 wrote once it had lost the lease: rows, then a manifest
        group = StoreArrays(store_path(tmp_path), mode="r+")
        group["page_embeddings"][24:32] = results[3].arrays["page_embeddings"]
        group["status"][24:32] = results[3].arrays["status"]
        taken, _ = read_manifest(manifest_file(store_path(tmp_path), 2), 2)
        assert taken is not None
        zombie = msgspec.structs.replace(
            taken, batch_id=3, start_idx=24, end_idx=31, page_ids=results[3].page_ids, token=1
        )
        write_manifest(store_path(tmp_path), zombie, fsync=False)
    with WriterLease(client, store, tmp_path) as lease, StoreWriter(tmp_path, fsync=False, fence=lease) as w:
        assert lease.token == 3
        assert w.committed_rows == 24 and not w.is_committed(3) and w.owed() == {job.job_id: [3, 4, 5]}
    path = store_path(tmp_path)
    fenced = manifest_file(path, 3)
    assert fenced.with_name(fenced.name + ".fenced").exists() and not fenced.exists()
    assert not StoreArrays(path)["page_embeddings"][24:32].any()
    assert _tokens(tmp_path) == {0: 1, 1: 1, 2: 2}


def test_lease_ttl_is_checked_at_start(tmp_path: Path) -> None:
    done = run_cli("writer", "--output-dir", str(tmp_path), env={"COMIX_WRITER_LEASE_TTL_S": "0.2"}, timeout=60)
    assert done.returncode == 2
    assert "COMIX_WRITER_LEASE_TTL_S='0.2' must be at least 1" in done.stderr


def test_results_left_by_an_earlier_writer_are_read_again(tmp_path: Path, broker: PrivateRedis) -> None:
    """The consumer's name carries the token: what a writer of a lower token read without
    acknowledging is taken over by the next one, and committed."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    job, store = _job(out)
    client = redis.Redis.from_url(broker.url)
    key = results_key(store)
    client.xgroup_create(key, "writer", id="0", mkstream=True)
    _send(client, store, job, [0, 1])
    assert len(read_new(client, "writer", "writer-t7", key)) == 2  # read, then it died
    w = writer(out, broker.url, logs, "w", env=ENV)
    try:
        _wait(lambda: manifest_ids(store_path(out)) == {0, 1}, 60, w.text)
        _wait(lambda: client.xlen(key) == 0, 60, w.text)
    finally:
        w.stop()
    assert "took over 2 results that earlier writers left unacknowledged" in w.text()
    assert "writer-t1" in w.text()
