"""`comix-embed snapshot`: consistent, incremental, atomic copies of a growing store, on disk and on S3.

The stores grow through the real writer (`StoreWriter`) with synthetic results, large enough to
span several shards, so that an incremental snapshot has something to leave out. S3 is moto in
server mode (tests/object_store.py). A snapshot is checked the way a user would: `diagnose`
passes on it, and its rows equal the live store's first N rows.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from comix_embed.common.inputs.locations import parse_url
from comix_embed.common.store.reading import open_committed, resolve_store
from comix_embed.common.store.schema import store_path
from comix_embed.tools.snapshot.command import take_snapshot
from comix_embed.tools.snapshot.destination import Destination, LocalDestination, S3Destination
from comix_embed.writer.commit import StoreWriter
from tests import synthetic
from tests.cli import run_cli
from tests.harness import with_switches
from tests.object_store import S3Server, s3_server

MODEL = synthetic.model_info(d=64)  # embeddings outweigh the audit log, as at d = 384
BUCKET = "backups"


def _grow(out: Path, rows: int, name: str, incremental: bool, seed: int) -> None:
    """A job of `rows` synthetic pages, committed whole by the real writer."""
    job, _ = synthetic.plan(out, synthetic.make_pages(rows, prefix=name, seed=seed), 256, incremental, name + ".txt")
    with StoreWriter(out, fsync=False) as writer:
        writer.commit([synthetic.make_result(job, b, MODEL, seed=seed) for b, _, _ in job.batches()])


def _same_rows(snapshot: Path, live: Path) -> int:
    """The snapshot's committed rows equal the live store's first N rows, array by array; N."""
    a, b = open_committed(resolve_store(snapshot)), open_committed(store_path(live))
    n = int(a.attrs["committed_rows"])
    assert a.sizes["page_id"] == n and int(a.attrs["registered_rows"]) == n
    for name in [*a.data_vars, *a.coords]:
        if "page_id" not in a[name].dims:
            continue
        left, right = a[name].values, b[name].values[:n]
        if left.dtype.kind == "f":
            np.testing.assert_array_equal(left, right, err_msg=name)
        else:
            assert (left == right).all(), name
    assert (a.page_id.values == b.page_id.values[:n]).all()
    return n


def _diagnose(path: Path) -> None:
    proc = run_cli("diagnose", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


def _download(server: S3Server, prefix: str, into: Path) -> Path:
    """Every object below `prefix` of the bucket, as files below `into` (a reader's copy)."""
    client = server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            path = into / obj["Key"][len(prefix) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())
    return into


@pytest.mark.parametrize("where", ["local", "s3"])
def test_incremental_snapshot_sends_a_fraction_and_equals_the_live_store(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = tmp_path / "live"
    _grow(live, 8192, "first", incremental=False, seed=1)  # eight shards of 1,024 rows
    dest: Destination
    if where == "s3":
        server: S3Server = request.getfixturevalue("s3")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        dest = S3Destination(parse_url(f"s3://{BUCKET}/{tmp_path.name}/"))
    else:
        dest = LocalDestination(tmp_path / "backup")

    def readable() -> Path:
        if where == "local":
            return tmp_path / "backup"
        copy = tmp_path / f"read{random.randrange(10**9)}"
        return _download(server, f"{tmp_path.name}/", copy)

    first, sent1 = take_snapshot(live, dest)
    assert first.committed_rows == 8192 and sent1.files_reused == 0
    assert _same_rows(readable(), live) == 8192
    _grow(live, 820, "second", incremental=True, seed=2)  # 10 % more pages
    second, sent2 = take_snapshot(live, dest, verify=True)
    assert second.committed_rows == 9012 and second.id != first.id
    assert sent2.bytes_sent < sent1.bytes_sent / 5, (sent1, sent2)
    copy = readable()
    assert _same_rows(copy, live) == 9012
    _diagnose(copy)
    pointer = json.loads((copy / "latest.json").read_text())
    assert pointer["snapshot"] == second.id and (copy / "snapshots" / first.id / "snapshot.json").is_file()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_snapshot_taken_while_the_writer_commits_is_the_prefix_it_saw(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = tmp_path / "live"
    _grow(live, 4096, "first", incremental=False, seed=1)
    job, _ = synthetic.plan(live, synthetic.make_pages(4096, prefix="second", seed=3), 128, True, "second.txt")
    results = [synthetic.make_result(job, b, MODEL, seed=3) for b, _, _ in job.batches()]
    server: S3Server | None = request.getfixturevalue("s3") if where == "s3" else None
    if server is not None:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)

    def destination(k: int) -> Destination:
        if server is None:
            return LocalDestination(tmp_path / f"backup{k}")
        return S3Destination(parse_url(f"s3://{BUCKET}/{tmp_path.name}/{k}/"))

    def readable(k: int) -> Path:
        if server is None:
            return tmp_path / f"backup{k}"
        return _download(server, f"{tmp_path.name}/{k}/", tmp_path / f"read{k}")

    with StoreWriter(live, fsync=False) as writer:
        writer.commit([results[1], results[2]])  # past a gap: manifests, rows not in the prefix
        done = threading.Event()

        def commit_the_rest() -> None:
            for result in [results[0], *results[3:]]:
                writer.commit([result])
            done.set()

        thread = threading.Thread(target=commit_the_rest)
        thread.start()
        taken: list[int] = []
        while not done.is_set() or not taken:
            contents, _ = take_snapshot(live, destination(len(taken)))  # while the writer commits
            taken.append(contents.committed_rows)
        thread.join()
    assert taken[0] >= 4096
    for k, n in enumerate(taken):
        assert _same_rows(readable(k), live) == n
    _diagnose(readable(0))


def test_a_killed_snapshot_leaves_the_previous_one_readable_and_the_next_run_completes(
    tmp_path: Path, s3: S3Server
) -> None:
    live = tmp_path / "live"
    _grow(live, 2048, "first", incremental=False, seed=1)
    dest = f"s3://{BUCKET}/killed/"
    argv = ("snapshot", "--zarr", str(live), "--to", dest, "--no-progress")
    assert run_cli(*argv, env=s3.env()).returncode == 0
    _grow(live, 1024, "second", incremental=True, seed=2)
    files = 0
    rng = random.Random(7)
    for attempt in range(10):
        kill_after = rng.randint(1, 60)
        proc = run_cli(*argv, env=with_switches({"COMIX_TEST_SNAPSHOT_KILL_AFTER": str(kill_after)}, s3.env()))
        assert proc.returncode == -9, (attempt, proc.stdout, proc.stderr)  # killed where the switch says
        copy = _download(s3, "killed/", tmp_path / f"after{attempt}")
        assert _same_rows(copy, live) == 2048  # the previous snapshot, whole
        files = max(files, len(list((copy / "snapshots").iterdir())))
    assert files >= 2  # a killed run did leave its unfinished folder beside the complete one
    assert run_cli(*argv, env=s3.env()).returncode == 0
    copy = _download(s3, "killed/", tmp_path / "completed")
    assert _same_rows(copy, live) == 3072
    _diagnose(copy)
    assert len(list((copy / "snapshots").iterdir())) == 2  # the unfinished ones removed


def test_keep_and_verify(tmp_path: Path) -> None:
    live = tmp_path / "live"
    _grow(live, 512, "first", incremental=False, seed=1)
    for _ in range(3):
        proc = run_cli("snapshot", "--zarr", str(live), "--to", str(tmp_path / "b"), "--keep", "2", "--verify")
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "b" / "snapshots").iterdir()) == ["000002", "000003"]
    assert "removed snapshot 000001 (--keep 2)" in proc.stdout  # by the third run
    assert _same_rows(tmp_path / "b" / "snapshots" / "000002", live) == 512  # each readable by its own path


def test_read_commands_and_xarray_open_a_snapshot_on_s3(
    s3: S3Server, pipeline_store: Path, pipeline_corpus: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    import subprocess
    import urllib.request

    import obstore.store
    import xarray as xr
    import zarr.storage

    from comix_embed.common.child import cli_argv

    env = {**s3.env(), "COMIX_SNAPSHOT_CACHE": str(tmp_path / "cache")}
    dest = f"s3://{BUCKET}/shared/"
    made = run_cli("snapshot", "--zarr", str(pipeline_store), "--to", dest, "--no-progress", env=env)
    assert made.returncode == 0, made.stderr
    live = open_committed(store_path(pipeline_store))
    page = str(live.page_id.values[int(np.flatnonzero(live["status"].values == 1)[0])])

    query = run_cli("query", "--zarr", dest, "--like", page, "--json", env=env)
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout)["results"][0]["page_id"] == page
    assert run_cli("diagnose", dest, env=env).returncode == 0
    assert run_cli("summaries", "--zarr", dest, "--max-pages", "2", env=env).returncode == 0
    indexed = run_cli("index", "--zarr", dest, "--no-progress", env=env)  # built beside the mirror
    assert indexed.returncode == 0 and "index generation 1:" in indexed.stdout, indexed.stdout + indexed.stderr
    again = run_cli("query", "--zarr", dest, "--like", page, "--json", env=env)
    assert json.loads(again.stdout)["index_generation"] == 1

    argv = cli_argv("serve", "--zarr", dest, "--checkpoint", str(tiny_checkpoint), "--port", "0")
    argv += ["--image-root", str(pipeline_corpus / "images")]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    ) as serve:
        try:
            assert serve.stdout is not None and serve.stderr is not None
            line = serve.stdout.readline()  # printed once it listens
            assert line.startswith("serving 1 store(s) on http://"), line + (
                serve.stderr.read() if serve.poll() is not None else ""
            )
            url = line.split(" on ", 1)[1].split(",")[0].strip()
            with urllib.request.urlopen(f"{url}api/stores") as answer:
                name = json.loads(answer.read())["stores"][0]["name"]
            with urllib.request.urlopen(f"{url}api/page/{name}/0") as answer:
                assert json.loads(answer.read())["page_id"] == str(live.page_id.values[0])
        finally:
            serve.terminate()

    pointer = json.loads(s3.client().get_object(Bucket=BUCKET, Key="shared/latest.json")["Body"].read())
    store = obstore.store.S3Store(
        BUCKET,
        prefix=f"shared/{pointer['path']}combined_embeddings.zarr",
        endpoint=s3.endpoint,
        access_key_id=s3.access_key,
        secret_access_key=s3.secret_key,
        region="us-east-1",
        client_options={"allow_http": True},
    )
    ds = xr.open_zarr(zarr.storage.ObjectStore(store, read_only=True), consolidated=False)
    assert ds.sizes["page_id"] == live.sizes["page_id"] == ds.attrs["committed_rows"]
    np.testing.assert_array_equal(ds.page_embeddings.values, live.page_embeddings.values)
