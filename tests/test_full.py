"""A full disk during a commit, and a Redis out of memory: nothing is lost.

The disk is a small tmpfs mounted for the test (the tests run as root); Redis is a private
server whose `maxmemory` the test lowers and raises (`noeviction`: it refuses writes when full).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from comix_embed.common.broker.results_stream import push, results_key
from comix_embed.common.errors import EXIT_DISK_FULL, EXIT_FAILED
from comix_embed.common.store.manifests import manifest_dir, manifest_ids
from comix_embed.common.store.reading import read_committed_rows
from comix_embed.common.store.schema import store_path
from comix_embed.private_redis import PrivateRedis
from tests.cli import enqueue_args, run_cli
from tests.corpora import PIPELINE_PAGES
from tests.harness import assert_same_store, store_arrays, wait_committed, wait_results, worker, writer
from tests.typed import entries

FIRST = 12  # pages of the first job (3 batches of 4); the rest of the list is the second job


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs of its own: filling it fills nothing else."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(disk: Path, leave: int) -> Path:
    """Fill the filesystem, then give back `leave` bytes: room for small files, not for a commit."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))  # unbuffered: a short write fills the last pages
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.truncate(filler, filler.stat().st_size - leave)
    return filler


def _split_list(corpus: Path, into: Path) -> tuple[Path, Path]:
    lines = (corpus / "list.txt").read_text().splitlines(keepends=True)
    into.mkdir()
    first, second = into / "first.txt", into / "second.txt"
    first.write_text("".join(lines[:FIRST]))
    second.write_text("".join(lines[FIRST:]))
    return first, second


def _enqueue(corpus: Path, out: Path, url: str, checkpoint: Path, listed: Path, *extra: str):
    return run_cli(*enqueue_args(checkpoint, corpus, out, url, *extra, listfile=listed))


def test_a_full_disk_stops_the_writer_and_a_restart_resumes(
    small_disk: Path, clean_store: Path, job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis
) -> None:
    out, logs = small_disk / "out", tmp_path / "logs"
    first, second = _split_list(job_corpus, tmp_path / "lists")
    total = PIPELINE_PAGES + 3
    wk = worker(tiny_checkpoint, broker.url, logs, "w0")
    wr = writer(out, broker.url, logs, "writer")
    try:
        done = _enqueue(job_corpus, out, broker.url, tiny_checkpoint, first)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_committed(out, FIRST, 180, [wk, wr])
        wr.stop()
        before = store_arrays(out)
        done = _enqueue(job_corpus, out, broker.url, tiny_checkpoint, second, "--incremental")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_results(broker.url, out, 3, 180)  # the second job's batches wait for the writer
        filler = _fill(small_disk, leave=16 * 1024)
        full = writer(out, broker.url, logs, "full")
        assert full.proc.wait(120) == EXIT_DISK_FULL, full.text()  # DiskFull, mapped by the command line
        text = full.text()
        assert "\nerror: disk full (No space left on device) while committing batches 3, 4, 5: " in text
        assert f"{small_disk}" in text.split("while committing")[1]
        assert "needs about " in text and "MiB free" in text
        assert "start the writer again, it resumes where it stopped" in text
        # no manifest of the second job, no torn one, committed rows untouched
        assert manifest_ids(store_path(out)) == {0, 1, 2}
        for path in manifest_dir(store_path(out)).glob("batch_*.json"):
            json.loads(path.read_text())
        assert read_committed_rows(store_path(out)) == FIRST
        for line in (out / "audit.jsonl").read_text().splitlines():
            json.loads(line)
        now = store_arrays(out)
        for name, values in before.items():
            assert values.tolist() == now[name].tolist(), name
        filler.unlink()  # space is freed: the writer started again resumes
        again = writer(out, broker.url, logs, "again")
        wait_committed(out, total, 180, [wk, again])
        again.stop()
    finally:
        wk.stop()
        wr.stop()
    _same_as_one_job(out, clean_store)
    assert len((out / "audit.jsonl").read_text().splitlines()) == total


def _same_as_one_job(out: Path, clean: Path) -> None:
    """The store of the two halves of the list equals the one of the whole list: numbers within
    1e-5, everything else exactly, but a failed page's reason names its line in its own list (and a missing DataSpec where
    each list resolved it)."""
    left, right = store_arrays(out), store_arrays(clean)
    assert left.keys() == right.keys()
    for name in left:
        if left[name].dtype.kind == "f":
            np.testing.assert_allclose(left[name], right[name], rtol=0, atol=1e-5, err_msg=name)
        elif name == "error":

            def lines(a):
                return [re.sub(r"list line \d+|/\S*/(?=dataspecs/)", "", str(e)) for e in a]

            assert lines(left[name]) == lines(right[name])
            assert sum(bool(e) for e in left[name]) == 3
        else:
            assert left[name].tolist() == right[name].tolist(), name


def test_a_redis_out_of_memory_stops_enqueue_with_the_limit_and_loses_nothing(
    job_corpus: Path, tiny_checkpoint: Path, tmp_path: Path, clean_store: Path, broker: PrivateRedis
) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    client = redis.Redis.from_url(broker.url)
    client.config_set("maxmemory", 1)  # below what an empty Redis uses: every write is refused
    refused = run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url))
    assert refused.returncode == EXIT_FAILED, refused.stdout + refused.stderr  # RedisFull
    assert "error: Redis refuses writes: it is out of memory (maxmemory 1 bytes, used " in refused.stderr
    assert "policy noeviction" in refused.stderr and "CONFIG SET maxmemory" in refused.stderr
    assert "sent 0 of 6 batches" in refused.stderr
    client.config_set("maxmemory", 0)
    wk = worker(tiny_checkpoint, broker.url, logs, "w0")
    wr = writer(out, broker.url, logs, "writer")
    try:
        done = run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, broker.url))
        assert done.returncode == 0, done.stdout + done.stderr
        wait_committed(out, PIPELINE_PAGES + 3, 180, [wk, wr])
    finally:
        wk.stop()
        wr.stop()
    assert_same_store(out, clean_store)


def test_a_result_waits_while_redis_is_out_of_memory(broker: PrivateRedis, caplog: pytest.LogCaptureFixture) -> None:
    """A worker's result refused by a full Redis is held, with the reason logged, and handed over
    once Redis takes writes again (here: maxmemory raised with CONFIG SET)."""
    client = redis.Redis.from_url(broker.url)
    client.config_set("maxmemory", 1)
    raised = threading.Event()

    def raise_limit_once_refused() -> None:
        while "Redis refuses writes" not in caplog.text:
            threading.Event().wait(0.02)
        client.config_set("maxmemory", 0)
        raised.set()

    helper = threading.Thread(target=raise_limit_once_refused, daemon=True)
    with caplog.at_level(logging.WARNING):
        helper.start()
        entry = push(client, "store0", 7, b"result", bound=4, timeout=120)
    helper.join(60)
    assert raised.is_set() and entry
    assert "batch 7 waits: Redis refuses writes: it is out of memory (maxmemory 1 bytes" in caplog.text
    assert client.xlen(results_key("store0")) == 1
    assert np.array_equal(
        np.frombuffer(entries(client, results_key("store0"))[0][1][b"data"], np.uint8),
        np.frombuffer(b"result", np.uint8),
    )
