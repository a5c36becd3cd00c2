"""Faults at the edges end well, with a real Redis, real worker processes and a real store.

A job is bound to its model, nothing loops, nothing stalls, no healthy page is recorded as failed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import redis

from comix_embed.common.broker import deliveries, keys
from comix_embed.common.broker.batch_lease import batch_leases
from comix_embed.common.broker.results_stream import push, results_key
from comix_embed.common.child import cli_argv
from comix_embed.common.messages import RESULT_FORMAT
from comix_embed.common.model.tokenizer import load_tokenizer, tokenizer_dir_beside
from comix_embed.common.store.audit_log import AuditRecord
from comix_embed.common.store.jobs import first_job, load_jobs
from comix_embed.common.store.manifests import manifest_ids
from comix_embed.common.store.reading import read_attrs, read_committed_rows
from comix_embed.common.store.schema import store_path
from comix_embed.consumers.settings import ready_key
from comix_embed.private_redis import PrivateRedis
from comix_embed.tools.init_checkpoint import init_checkpoint
from comix_embed.tools.sample.corpus import make_sample
from comix_embed.writer.growth import write_attrs
from tests import synthetic
from tests.cli import enqueue_args, run_args, run_cli
from tests.corpora import PIPELINE_PAGES
from tests.harness import (
    assert_same_store,
    job_queue,
    process_state,
    store_arrays,
    wait_batch_lease,
    wait_committed,
    worker,
    writer,
)
from tests.typed import broker_store, entries, read_new

ROWS = PIPELINE_PAGES + 3  # the pipeline corpus: 21 pages in 6 batches of 4


def _status(out: Path, broker: str) -> tuple[dict, str]:
    as_json = run_cli("status", "--output-dir", str(out), "--broker", broker, "--json")
    as_text = run_cli("status", "--output-dir", str(out), "--broker", broker)
    assert as_json.returncode == 0 and as_text.returncode == 0, as_json.stderr + as_text.stderr
    return json.loads(as_json.stdout), as_text.stdout


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


def _ready(client: redis.Redis, name: str) -> bool:
    return bool(client.keys(ready_key(f"{name}@*")))


# --- a job is bound to one model ---


def test_a_worker_with_another_model_never_receives_the_jobs_batches(
    job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    stale_ckpt = tmp_path / "stale.pt"
    init_checkpoint(stale_ckpt, size="tiny", seed=7)
    client = redis.Redis.from_url(broker.url)
    stale = worker(stale_ckpt, broker.url, logs, "stale")
    wr = writer(out, broker.url, logs)
    procs = [stale, wr]
    try:
        _wait(lambda: _ready(client, "stale"), 120, stale.text())  # the stale worker answers first
        done = run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "model: checkpoint sha256" in done.stdout
        right = worker(tiny_checkpoint, broker.url, logs, "right")
        procs.append(right)
        wait_committed(out, ROWS, 180, procs)
        state, text = _status(out, broker.url)
    finally:
        for p in procs:
            p.stop()
    job = first_job(out)
    assert job is not None and job.model is not None
    attrs = read_attrs(store_path(out))
    assert attrs["checkpoint_sha256"] == job.model.checkpoint_sha256 != ""
    assert attrs["tokenizer"] == job.model.tokenizer == load_tokenizer(None, tiny_checkpoint).identity
    assert f"Task {keys.EMBED_BATCH_TASK}[" not in stale.text()  # never received one
    queue = job_queue(out)
    assert f"queue {queue}" in right.text() and f"queue {queue}" not in stale.text()
    for log_text in (right.text(), stale.text()):  # each worker names both identities
        assert "checkpoint sha256" in log_text and "tokenizer content-sha256:" in log_text
    assert state["models"]["job_000001"].startswith(f"checkpoint sha256 {job.model.checkpoint_sha256[:16]}")
    assert f"job_000001 model: checkpoint sha256 {job.model.checkpoint_sha256[:16]}, tokenizer" in text


def test_the_same_tokenizer_in_two_folders_is_one_model(
    job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    first, second = tmp_path / "machine-a" / "tok", tmp_path / "machine-b" / "roberta"
    shutil.copytree(tokenizer_dir_beside(tiny_checkpoint), first)
    load_tokenizer(first).tokenizer.save_pretrained(str(second))  # saved again, elsewhere
    assert load_tokenizer(first).identity == load_tokenizer(second).identity
    procs = [
        worker(tiny_checkpoint, broker.url, logs, "w0", extra=("--tokenizer", str(first))),
        worker(tiny_checkpoint, broker.url, logs, "w1", extra=("--tokenizer", str(second))),
        writer(out, broker.url, logs),
    ]
    try:
        argv = enqueue_args(tiny_checkpoint, job_corpus, out, broker.url, "--tokenizer", str(second))
        assert run_cli(*argv).returncode == 0
        wait_committed(out, ROWS, 180, procs)  # whichever worker embeds which batch
    finally:
        for p in procs:
            p.stop()
    queue = job_queue(out)
    assert all(f"queue {queue}" in p.text() for p in procs[:2])
    client = redis.Redis.from_url(broker.url)
    assert client.xlen(keys.REFUSED.format(store=broker_store(out))) == 0  # nothing set aside


def test_a_store_written_before_keeps_working_and_records_its_tokenizer_by_content(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    make_sample(corpus, pages=8, seed=4)
    lines = (corpus / "list.txt").read_text().splitlines()
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("\n".join(lines[:4]) + "\n")
    second.write_text("\n".join(lines[4:]) + "\n")

    def run(listfile: Path, *extra: str):
        return run_cli(*run_args(tiny_checkpoint, corpus, out, *extra, listfile=listfile, workers=1))

    made = run(first)
    assert made.returncode == 0, made.stdout + made.stderr
    # make it a store from before: the old tokenizer form, a job file of format 1 with no payloads
    old_form = load_tokenizer(None, tiny_checkpoint).legacy_identity  # `<folder> sha256:<16 hex>`
    assert old_form.startswith("tiny.tokenizer sha256:")
    path = store_path(out)
    write_attrs(path, {"tokenizer": old_form})
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"].pop("tokenizer_legacy", None)
    (path / "zarr.json").write_text(json.dumps(meta))
    job_file = out / "jobs" / "job_000001.json"
    old_job = json.loads(job_file.read_text())
    for key in ("model", "format"):
        old_job.pop(key)
    job_file.write_text(json.dumps(old_job))
    for kept in (out / "jobs").glob("job_000001.tasks.*"):
        kept.unlink()

    appended = run(second, "--incremental")
    assert appended.returncode == 0, appended.stdout + appended.stderr
    attrs = read_attrs(path)
    assert attrs["tokenizer"] == load_tokenizer(None, tiny_checkpoint).identity  # migrated
    assert attrs["tokenizer_legacy"] == old_form
    assert attrs["committed_rows"] == 8

    other = tmp_path / "other" / "tiny.pt"  # another model is still refused by the migrated store
    init_checkpoint(other, size="tiny", seed=3)
    third = tmp_path / "third.txt"
    third.write_text(lines[0].replace("0001", "0009") + "\n")
    mixed = run_cli(*enqueue_args(other, corpus, out, "redis://127.0.0.1:1/0", "--incremental", listfile=third))
    assert mixed.returncode == 2 and "one model per store" in mixed.stderr


# --- nothing loops: refused results ---


def test_a_batch_refused_max_attempts_times_stops_run_with_the_reason(
    job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    client = redis.Redis.from_url(broker.url)
    assert run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url)).returncode == 0
    store, queue = broker_store(out), job_queue(out)
    assert deliveries.queued(client, queue) == 6
    job = load_jobs(out)[0]
    other = synthetic.model_info(d=32, checkpoint=synthetic.CHECKPOINT_B)
    wr = writer(out, broker.url, logs)
    try:  # a worker of another model answers for batch 5 (a stray client, a stale host)
        for n in range(1, 4):
            push(client, store, 5, synthetic.make_result(job, 5, other).to_bytes(), bound=16, timeout=10)
            _wait(lambda n=n: client.hget(keys.REFUSALS.format(store=store), 5) == str(n).encode(), 60, wr.text())
    finally:
        wr.stop()
    assert deliveries.queued(client, queue) == 6 + 2  # sent again after each refusal but the last
    state, text = _status(out, broker.url)
    assert state["refused_results"] == 3 and set(state["refused_out"]) == {"5"}
    assert synthetic.CHECKPOINT_B in state["refused_out"]["5"]
    assert "refused 3 times: batch 5: the job job_000001 was made with checkpoint" in text

    started = time.monotonic()
    ran = run_cli(*run_args(tiny_checkpoint, job_corpus, out, "--broker", broker.url, workers=1), timeout=600)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "the results of batch 5 were refused 3 times" in ran.stderr and synthetic.CHECKPOINT_B in ran.stderr
    assert time.monotonic() - started < 600  # it stopped; it did not spin


# --- a batch that can never be embedded does not block the store ---


def test_a_batch_lost_max_attempts_times_is_committed_as_failed_rows(
    clean_store: Path, job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    env = {"COMIX_MAX_ATTEMPTS": "2"}  # a setting: two lost deliveries give a batch up
    client = redis.Redis.from_url(broker.url)
    w = worker(tiny_checkpoint, broker.url, logs, "victim", env, stop_at=("batch",))
    wr = writer(out, broker.url, logs, env=env)
    try:
        assert run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url)).returncode == 0
        store = broker_store(out)
        lost_key = keys.LOST.format(store=store)
        given_up: list[int] = []
        for _ in range(12):  # kill whatever the worker holds until a batch has been lost twice
            with_lost = sum(int(v) for v in client.hvals(lost_key))
            w.kill_pool_mid_batch(broker.url, again=True)  # stopped at its batch's start; the next stops too
            _wait(lambda before=with_lost: sum(int(v) for v in client.hvals(lost_key)) > before, 60, w.text())
            given_up = [int(b) for b, n in client.hgetall(lost_key).items() if int(n) >= 2]
            if given_up:
                break
        w.disarm("batch")  # the rest of the job runs through
        assert len(given_up) == 1
        wait_committed(out, ROWS, 180, [w, wr])
    finally:
        w.stop()
        wr.stop()
    batch = given_up[0]
    stored, clean = store_arrays(out), store_arrays(clean_store)
    rows = list(range(4 * batch, min(4 * batch + 4, ROWS)))
    assert stored["status"][rows].tolist() == [2] * len(rows)
    for row in rows:  # each with its reason
        assert "lost 2 times" in stored["error"][row] or "worker process died" in stored["error"][row]
        assert not stored["page_embeddings"][row].any()
    others = [i for i in range(ROWS) if i not in rows]
    for name in ("page_embeddings", "panel_embeddings"):
        np.testing.assert_allclose(stored[name][others], clean[name][others], rtol=0, atol=1e-5, err_msg=name)
    assert stored["status"][others].tolist() == clean["status"][others].tolist()
    assert read_committed_rows(store_path(out)) == ROWS


# --- the crash guard counts crashes, not deliveries ---


def test_given_back_resent_and_shut_down_batches_never_fail_a_healthy_page(
    clean_store: Path, job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    # one result fits in the stream and no writer runs: w1 waits about a second for room and gives
    # its batch back, again and again; w0 waits for room as long as its time limit allows
    full = {"COMIX_MAX_PENDING_RESULTS": "1"}
    w0 = worker(tiny_checkpoint, broker.url, logs, "w0", full)
    w1 = worker(tiny_checkpoint, broker.url, logs, "w1", {**full, "COMIX_TASK_TIME_LIMIT": "70"})
    client = redis.Redis.from_url(broker.url)
    try:
        assert run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url)).returncode == 0
        _wait(lambda: "given back" in w1.text(), 180, "no batch was given back")
        resent = run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url, "--resend"))
        assert resent.returncode == 0 and "6 sent now" in resent.stdout, resent.stdout  # two deliveries of each
        key = results_key(broker_store(out))
        _wait(lambda: client.xlen(key) >= 1, 120, "the results stream never filled")
        # from now on no delivery can hand its result over: a batch w0 holds, it holds until told
        wait_batch_lease(broker.url, 120, holder="w0@")
        os.kill(w0.pid, signal.SIGQUIT)  # a cold shutdown, as `run` stops its workers: it gives its batch back
        w0.proc.wait(60)
        wr = writer(out, broker.url, logs)
        wait_committed(out, ROWS, 240, [w1, wr])
    finally:
        for p in (w0, w1):
            p.stop()
        if "wr" in locals():
            wr.stop()
    assert "given back on shutdown" in w0.text()
    store = broker_store(out)
    assert client.hlen(keys.CRASHED.format(store=store)) == 0
    assert client.hlen(keys.LOST.format(store=store)) == 0
    assert "one by one" not in w0.text() + w1.text()  # no delivery was taken for a crash
    assert_same_store(out, clean_store)  # only the 3 broken pages failed, as in a clean run


# --- the readable prefix keeps moving ---


def test_after_a_kill_the_readable_prefix_keeps_moving(
    tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    """The killed batch is sent again ahead of new batches, so few batches commit past its hole.

    Until the kill one worker runs, so no batch can finish past the one it is killed on; a second
    worker starts once the batch is sent again. The writer commits each result as soon as it reads
    it (both lingers 0): holding results, as it does by default, would hide the order in which the
    batches were taken. So the count below is how many batches were finished while the killed one
    was missing: with it sent again ahead of new batches, at most one fetched before it was sent
    and the few the other worker finishes while it is embedded again, page by page; sent to the
    back of the queue, nearly the whole job. After each commit the writer's log says how many
    batches are committed out of order: the test reads every commit's line, so it sees every state
    a reader could see, and none in the middle of a commit.
    """
    corpus, out, logs = tmp_path / "corpus", tmp_path / "out", tmp_path / "logs"
    pages, size = 192, 8  # batches of 8 pages, as users run them
    batches = pages // size
    make_sample(corpus, pages=pages, seed=21)
    first = worker(tiny_checkpoint, broker.url, logs, "w0", stop_at=("batch",))
    client = redis.Redis.from_url(broker.url)
    _wait(lambda: _ready(client, "w0"), 180, "worker not ready")
    wr = writer(out, broker.url, logs, env={"COMIX_WRITER_LINGER_S": "0", "COMIX_WRITER_GAP_LINGER_S": "0"})
    procs = [first, wr]
    try:
        argv = cli_argv(*enqueue_args(tiny_checkpoint, corpus, out, broker.url, batch_size=size))
        enqueue = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        victim = first.kill_pool_mid_batch(broker.url)  # early in the job: the first batch w0 takes
        _wait(lambda: f"batch {victim.batch} lost" in first.text(), 120, "the killed batch was not sent again")
        procs.append(worker(tiny_checkpoint, broker.url, logs, "w1"))
        assert enqueue.wait(120) == 0, enqueue.stdout.read() if enqueue.stdout else ""
        wait_committed(out, pages, 600, [wr])
    finally:
        for p in procs:
            p.stop()
    commits = re.findall(
        r"committed_rows=(\d+)(?:; (\d+) batches committed out of order, waiting for batch (\d+))?", wr.text()
    )
    assert commits and int(commits[-1][0]) == pages, wr.text()
    worst = max(int(past or 0) for _, past, _ in commits)
    assert worst <= batches // 4, f"{worst} of {batches} batches were committed past the prefix:\n{wr.text()}"
    assert (store_arrays(out)["status"] == 2).sum() == 0  # the killed batch was embedded, not failed


# --- a dead worker host does not stall the job ---


def test_a_worker_killed_whole_holding_a_batch_is_replaced_within_a_minute(
    clean_store: Path, job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    env = {"COMIX_LEASE_TTL_S": "6"}  # a setting; the visibility timeout stays at its 1800 s
    client = redis.Redis.from_url(broker.url)
    assert run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url)).returncode == 0
    doomed = worker(tiny_checkpoint, broker.url, logs, "doomed", env)  # after enqueue: no batch done meanwhile
    try:
        held = wait_batch_lease(broker.url, 300, holder="doomed")
        os.kill(doomed.pid, signal.SIGKILL)  # the main process, as when a host loses power
        doomed.proc.wait()
        _wait(lambda: not _alive(held.pid), 30, "the pool process outlived its worker")
        _wait(lambda: all(info.expires < time.time() for info in batch_leases(client)), 60, "batch lease kept")
        state, text = _status(out, broker.url)
        gone = state["holders_gone"]
        assert [g["batch"] for g in gone] == [held.batch] and gone[0]["holder"].startswith("doomed@")
        assert f"holder gone: batch {held.batch} was held by doomed@" in text
        started = time.monotonic()
        rescuer = worker(tiny_checkpoint, broker.url, logs, "rescuer", env)
        wr = writer(out, broker.url, logs, env=env)
        wait_committed(out, ROWS, 5 * 60, [rescuer, wr])  # 5x a minute
        assert time.monotonic() - started < 5 * 60
    finally:
        doomed.stop()
        if "rescuer" in locals():
            rescuer.stop()
        if "wr" in locals():
            wr.stop()
    assert f"batch {held.batch} lost (batch lease expired: its holder doomed@" in wr.text()
    assert client.hlen("unacked") >= 1  # the first delivery still waits for its visibility timeout
    assert_same_store(out, clean_store)
    rows = [AuditRecord.decode(line).row for line in (out / "audit.jsonl").read_text().splitlines()]
    assert sorted(rows) == list(range(ROWS)), "a page was committed twice or never"


def _alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z")


# --- malformed results never stop the writer ---


def test_malformed_results_are_set_aside_and_the_writer_goes_on(tmp_path: Path, broker: PrivateRedis) -> None:
    import msgspec

    out, logs = tmp_path / "out", tmp_path / "logs"
    job, _ = synthetic.plan(out, synthetic.make_pages(32), 8)
    store, client = broker_store(out), redis.Redis.from_url(broker.url)
    key = results_key(store)
    good = {b: synthetic.make_result(job, b, synthetic.model_info()) for b in range(4)}
    old_format = msgspec.msgpack.decode(good[1].to_bytes())
    del old_format["model"]  # a field missing (an old worker, a stray client)
    newer = msgspec.msgpack.decode(good[2].to_bytes())
    newer["v"] = RESULT_FORMAT + 1
    client.xgroup_create(key, "writer", id="0", mkstream=True)
    client.xadd(key, {"batch": 0, "data": good[0].to_bytes()})
    client.xadd(key, {"batch": 9})  # no data
    client.xadd(key, {"batch": "nine", "data": b"x"})
    client.xadd(key, {"batch": 1, "data": msgspec.msgpack.encode(old_format)})
    client.xadd(key, {"batch": 2, "data": msgspec.msgpack.encode(newer)})
    client.xadd(key, {"batch": 3, "data": b"\xc1 not msgpack"})
    # a writer read them all and died before acknowledging: they are its pending entries now
    assert len(read_new(client, "writer", "writer-1", key)) == 6
    for b in (1, 2, 3):
        client.xadd(key, {"batch": b, "data": good[b].to_bytes()})
    refused = keys.REFUSED.format(store=store)
    client.set(refused, "not a stream")  # every Redis error in the loop is retried, not fatal
    wr = writer(out, broker.url, logs)
    try:
        _wait(lambda: "broker error (ResponseError" in wr.text(), 60, wr.text())
        client.delete(refused)
        _wait(lambda: manifest_ids(store_path(out)) == {0, 1, 2, 3}, 60, wr.text())
        _wait(lambda: client.xlen(key) == 0, 60, wr.text())
        state, text = _status(out, broker.url)
        assert wr.proc.poll() is None
    finally:
        wr.stop()
    assert state["refused_results"] == 5  # each moved aside once, not over and over
    reasons = [e["reason"] for e in state["refused_latest"]]
    assert any("has no field 'data'" in r for r in reasons)
    assert any("'nine'" in r and "is not a number" in r for r in reasons)
    assert any("batch result: Object missing required field `model`" in r for r in reasons)
    assert any(f"result format {RESULT_FORMAT + 1} is newer than this writer reads" in r for r in reasons)
    assert any(r.startswith("batch result:") and "MessagePack" in r for r in reasons)
    assert "results set aside: 5" in text
    kept = {f[b"reason"].decode(): f for _, f in entries(client, refused)}  # moved aside with their data
    garbage = next(f for r, f in kept.items() if "MessagePack" in r)
    assert garbage[b"data"] == b"\xc1 not msgpack" and garbage[b"data_bytes"] == b"13"
    assert read_committed_rows(store_path(out)) == 32


# --- resume covers every unfinished job ---


def test_run_resumes_every_unfinished_job_of_the_store(tiny_checkpoint: Path, tmp_path: Path) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    make_sample(corpus, pages=12, seed=6)
    lines = (corpus / "list.txt").read_text().splitlines()
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("\n".join(lines[:8]) + "\n")
    second.write_text("\n".join(lines[8:]) + "\n")
    with PrivateRedis() as lost:  # the first job is enqueued, then its broker goes with its batches
        sent = run_cli(*enqueue_args(tiny_checkpoint, corpus, out, lost.url, batch_size=8, listfile=first))
        assert sent.returncode == 0, sent.stderr
    ran = run_cli(*run_args(tiny_checkpoint, corpus, out, "--incremental", listfile=second, batch_size=8, workers=1))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "job_000001 (unfinished): 1 of 1 batches owed" in ran.stdout
    assert read_committed_rows(store_path(out)) == 12 == sum(j.page_count for j in load_jobs(out))
    again = run_cli(*run_args(tiny_checkpoint, corpus, out, "--incremental", listfile=second, batch_size=8))
    assert again.returncode == 0 and "already committed" in again.stdout


def test_enqueue_without_a_model_for_a_new_store_says_what_to_pass(job_corpus: Path, tmp_path: Path) -> None:
    argv = enqueue_args(Path("x"), job_corpus, tmp_path / "out", "redis://127.0.0.1:1/0")
    argv = [a for a in argv if a not in ("--checkpoint", "x")]
    proc = subprocess.run(cli_argv(*argv), capture_output=True, text=True)
    assert proc.returncode == 2 and "pass --checkpoint" in proc.stderr
