"""Inputs on S3-compatible object storage and HTTP(S), against real servers on 127.0.0.1.

The S3 API is moto in server mode, in its own process (tests/object_store.py); a fault proxy in
front of it injects 503 SlowDown, dropped connections and 403s with bounded counts. No client is
mocked: the code under test speaks HTTP to these servers as it would to AWS, MinIO or a web server.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from comix_embed.common.errors import EXIT_PAGES_FAILED, EXIT_USAGE, UsageError
from comix_embed.common.inputs.dataspec import read_dataspec
from comix_embed.common.inputs.listfile import read_list
from comix_embed.common.inputs.locations import parse_url
from comix_embed.common.inputs.pages import PageTask
from comix_embed.common.inputs.paths import ImageResolver, PathRefused, parse_path_map
from comix_embed.common.model.checkpoint import load_model
from comix_embed.common.model.embed import Embedder, EmbedSettings
from comix_embed.common.model.tokenizer import load_tokenizer
from comix_embed.common.store.reading import open_committed
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_FULL_PAGE, store_path
from comix_embed.tools.dataspec_builder import command as dataspec_command
from comix_embed.tools.sample.corpus import make_sample
from comix_embed.tools.sample.page import WINDOWS_ROOT
from comix_embed.tools.serve import command as serve_command
from comix_embed.tools.serve.app import create_app
from tests.cli import run_cli
from tests.harness import Proc, stopped_at, with_switches
from tests.object_store import Faults, S3Server, fault_proxy, http_server, s3_server
from tests.test_dataspec_builder import inputs, run_tool  # noqa: F401 - `inputs` is a fixture
from tests.test_serve import serve_args

BUCKET = "comics"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


def _job(ckpt: Path, out: Path, *source: str) -> list[str]:
    return ["run", "--checkpoint", str(ckpt), "--output-dir", str(out), "--batch-size", "4", "--workers", "2", *source]


def _stopped_or_exited(run: Proc, stop: Path) -> int:
    """The pid of the worker process stopped at `stop`; fails at once, with the log, if `run` ends first."""
    while run.proc.poll() is None:
        try:
            return stopped_at(stop, timeout=1)
        except AssertionError:
            continue
    raise AssertionError(f"run ended ({run.proc.returncode}) before a worker stopped:\n{run.log.read_text()}")


def _no_secret_in_redis(url: str, secret: str) -> None:
    client: Any = redis.Redis.from_url(url)  # bytes in, bytes out
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        values: list[bytes] = [key]
        if kind == "string":
            values.append(client.get(key) or b"")
        elif kind == "list":
            values += client.lrange(key, 0, -1)
        elif kind == "hash":
            values += [k + v for k, v in client.hgetall(key).items()]
        elif kind == "set":
            values += list(client.smembers(key))
        elif kind == "zset":
            values += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values += [k + v for _, fields in client.xrange(key) for k, v in fields.items()]
        assert not any(secret.encode() in v for v in values), f"the secret key is in Redis key {key!r}"


def _every_argv() -> list[str]:
    """The command line of every process on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return found


def test_run_with_everything_on_s3_through_throttling_equals_local_and_shows_no_secret(
    s3: S3Server, tiny_checkpoint: Path, broker, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    make_sample(corpus, pages=12, seed=3, windows_paths=True)  # DataSpecs name E:\CalibreComics_extracted\...
    local = run_cli(
        *_job(tiny_checkpoint, tmp_path / "local", "--list", str(corpus / "list.txt")),
        *("--dataspec-root", str(corpus), "--image-root", str(corpus / "images")),
        *("--path-map", f"{WINDOWS_ROOT}={corpus / 'images'}"),
    )
    assert local.returncode == 0, local.stdout + local.stderr

    s3.upload_tree(corpus / "dataspecs", BUCKET, "corpus/dataspecs/")
    s3.client().put_object(Bucket=BUCKET, Key="corpus/list.txt", Body=(corpus / "list.txt").read_bytes())
    s3.upload_tree(corpus / "images", BUCKET, "extracted/")
    faults = Faults(slow_down=4, drop=2, match=f"/{BUCKET}/extracted/")
    stop = tmp_path / "stopped.pid"
    with fault_proxy(s3.endpoint, faults) as proxy:
        env = with_switches(
            {"COMIX_TEST_STOP_AT": f"batch:{stop}"}, {**s3.env(proxy), "COMIX_REMOTE_BACKOFF_S": "0.01"}
        )
        argv = _job(tiny_checkpoint, tmp_path / "remote", "--list", f"s3://{BUCKET}/corpus/list.txt")
        argv += ["--image-root", f"s3://{BUCKET}/extracted/", "--broker", broker.url]
        argv += ["--path-map", f"{WINDOWS_ROOT}=s3://{BUCKET}/extracted/"]
        run = Proc("run", argv, tmp_path / "logs", env)
        pid = _stopped_or_exited(run, stop)  # a worker holds its first batch: every child is up
        try:
            argvs = _every_argv()
            assert not [a for a in argvs if s3.secret_key in a], "the secret key is on a command line"
            assert any(f"s3://{BUCKET}/extracted/" in a for a in argvs)  # the children were looked at
        finally:
            os.kill(pid, signal.SIGCONT)
        assert run.proc.wait(timeout=600) == 0, run.log.read_text()
    assert faults.injected == {"slow_down": 4, "drop": 2}  # each retried: no page failed

    a, b = open_committed(store_path(tmp_path / "local")), open_committed(store_path(tmp_path / "remote"))
    assert a.page_id.values.tolist() == b.page_id.values.tolist()
    assert (b["status"].values != STATUS_FAILED).all(), b["error"].values
    np.testing.assert_allclose(a.page_embeddings.values, b.page_embeddings.values, atol=1e-5)
    np.testing.assert_allclose(a.panel_embeddings.values, b.panel_embeddings.values, atol=1e-5, equal_nan=True)

    whole = int(np.flatnonzero(b["status"].values == STATUS_FULL_PAGE)[0])  # embedded as an image query is
    query = run_cli(
        *("query", "--zarr", str(tmp_path / "remote"), "--checkpoint", str(tiny_checkpoint), "--json"),
        *("--image", f"s3://{BUCKET}/extracted/{b.image_path.values[whole]}"),
        env=s3.env(),
    )
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout)["results"][0]["page_id"] == b.page_id.values[whole]

    files = [p for p in (tmp_path / "remote").rglob("*") if p.is_file()] + [run.log]
    assert files and not [p for p in files if s3.secret_key.encode() in p.read_bytes()]
    _no_secret_in_redis(broker.url, s3.secret_key)


def _jpeg(size: tuple[int, int] = (900, 1400)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 180, 40)).save(out, format="JPEG")
    return out.getvalue()


def test_bad_remote_inputs_fail_alone_naming_the_url_and_cause_beside_local_pages(
    s3: S3Server, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    make_sample(corpus, pages=5, seed=4)  # local DataSpecs, images relative to the first (local) root
    client = s3.client()
    put = lambda key, body: client.put_object(Bucket=BUCKET, Key=key, Body=body)  # noqa: E731
    images, specs = f"s3://{BUCKET}/mixed/images/", f"s3://{BUCKET}/mixed/specs/"
    big = io.BytesIO()
    Image.new("L", (8200, 8000)).save(big, format="PNG")  # 65.6 MP: over the 64 MP limit
    good = _jpeg()
    objects = {
        "mixed/images/ok/1.jpg": good,
        "mixed/images/ok/2.jpg": good,
        "mixed/images/denied/3.jpg": good,
        "mixed/images/text.jpg": b"this is not an image",
        "mixed/images/truncated.jpg": good[:700],
        "mixed/images/huge.png": big.getvalue(),
    }
    for key, body in objects.items():
        put(key, body)
    panel = {"panel_coords": [10, 10, 300, 300], "text": {"dialogue": ["HEY"]}}
    pages = {
        "ok1": "ok/1.jpg",
        "missing": "nowhere/0.jpg",
        "denied": "denied/3.jpg",
        "text": "text.jpg",
        "truncated": "truncated.jpg",
        "huge": "huge.png",
        "ok2": "ok/2.jpg",
    }
    for name, image in pages.items():
        put(f"mixed/specs/{name}.json", json.dumps({"page_image_path": images + image, "panels": [panel]}))
    put("mixed/specs/broken.json", b'{"page_image_path": "x.jpg", "panels": [')
    local_lines = (corpus / "list.txt").read_text().splitlines()
    remote_lines = [f"{specs}{name}.json" for name in ("ok1", "missing", "denied", "text")]
    remote_lines += [f"{specs}broken.json", f"{specs}gone.json"]
    remote_lines += [f"{specs}{name}.json" for name in ("truncated", "huge", "ok2")]
    listing = tmp_path / "mixed.txt"
    listing.write_text("\n".join(local_lines[:2] + remote_lines + local_lines[2:]) + "\n")

    with fault_proxy(s3.endpoint, Faults(deny=f"/{BUCKET}/mixed/images/denied/")) as proxy:
        proc = run_cli(
            *_job(tiny_checkpoint, tmp_path / "out", "--list", str(listing), "--dataspec-root", str(corpus)),
            *("--image-root", str(corpus / "images"), "--image-root", images),
            env=s3.env(proxy),
        )
    assert proc.returncode == EXIT_PAGES_FAILED, proc.stdout + proc.stderr
    ds = open_committed(store_path(tmp_path / "out"))
    errors = dict(zip(ds.page_id.values.tolist(), ds["error"].values.tolist()))
    status = dict(zip(ds.page_id.values.tolist(), ds["status"].values.tolist()))
    expected = {
        "missing": f"image not found: {images}nowhere/0.jpg (no such object (404 NoSuchKey))",
        "denied": f"cannot read image {images}denied/3.jpg: access denied (403 AccessDenied)",
        "text": f"not a readable image (unknown or corrupt format): {'text.jpg'}",
        "broken": f"DataSpec {specs}broken.json: invalid JSON at line 1",
        "gone": f"DataSpec {specs}gone.json: cannot read: no such object (404 NoSuchKey)",
        "truncated": "cannot decode image truncated.jpg",
        "huge": "image refused as a decompression bomb: huge.png is 8200x8000",
    }
    for name, reason in expected.items():
        page = f"{specs}{name}.json"
        assert status[page] == STATUS_FAILED and errors[page].startswith(reason), (name, errors[page])
    ok = [p for p in ds.page_id.values.tolist() if not any(p == f"{specs}{n}.json" for n in expected)]
    assert len(ok) == 5 + 2 and all(status[p] != STATUS_FAILED for p in ok), errors
    roots = dict(zip(ds.page_id.values.tolist(), ds["image_root"].values.tolist()))
    assert roots[f"{specs}ok1.json"] == 1 and roots[local_lines[0].replace("\\", "/")] == 0


def test_a_worker_with_wrong_remote_settings_fails_at_start_naming_the_root(
    s3: S3Server, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    def worker(root: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        env = {**env, "COMIX_REMOTE_BACKOFF_S": "0.01"}  # an unreachable endpoint is tried again a few times
        return run_cli("worker", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--image-root", root, env=env)

    closed = _closed_port()
    no_credentials = {k: v for k, v in s3.env().items() if not k.startswith("AWS_ACCESS") and "SECRET" not in k}
    with s3_server(auth=True) as strict:
        cases = {
            "no such bucket": ("s3://nobucket/pages/", s3.env()),
            "credentials refused (403 InvalidAccessKeyId)": (f"s3://{BUCKET}/pages/", strict.env()),
            f"endpoint http://127.0.0.1:{closed} unreachable": (
                f"s3://{BUCKET}/pages/",
                s3.env(f"http://127.0.0.1:{closed}"),
            ),
            "no credentials": (f"s3://{BUCKET}/pages/", no_credentials),
            "server unreachable": (f"http://127.0.0.1:{closed}/pages/", {}),
        }
        for reason, (root, env) in cases.items():
            proc = worker(root, env)
            assert proc.returncode == EXIT_USAGE, (reason, proc.stdout, proc.stderr)
            assert f"error: --image-root {root}: {reason}" in proc.stderr, (reason, proc.stderr)
            assert s3.secret_key not in proc.stderr + proc.stdout

    missing = run_cli(
        *_job(tiny_checkpoint, tmp_path / "out", "--list", f"s3://{BUCKET}/lists/none.txt"),
        *("--image-root", f"s3://{BUCKET}/pages/"),
        env=s3.env(),
    )
    assert missing.returncode == EXIT_USAGE
    assert f"error: List file not found: s3://{BUCKET}/lists/none.txt (no such object (404 NoSuchKey))" in (
        missing.stderr
    )


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: nothing listens there


def test_http_image_root_follows_redirects_inside_it_and_refuses_one_out(
    tiny_checkpoint: Path, corpus: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "images").symlink_to(corpus / "images")
    (site / "outside").symlink_to(corpus / "images")
    spec = read_dataspec(next(p for p in sorted((corpus / "dataspecs").rglob("*.json")) if read_dataspec(p).panels))
    model, tokenizer = load_model(tiny_checkpoint), load_tokenizer(None, tiny_checkpoint)

    def embed(resolver: ImageResolver, images: list[str]) -> tuple[np.ndarray, list[str]]:
        embedder = Embedder(model, tokenizer, resolver, settings=EmbedSettings(decode_threads=2))
        try:
            tasks = [PageTask(row=i, page_id=str(i), image=image, spec=spec) for i, image in enumerate(images)]
            arrays, _ = embedder.embed(tasks)
        finally:
            embedder.close()
        return arrays["page_embeddings"], list(arrays["error"])

    with http_server(site) as url:
        root = f"{url}/images/"
        resolver = ImageResolver([root])
        assert resolver.locate(f"{root}{spec.image}") == (0, spec.image)
        with pytest.raises(PathRefused, match="outside every image root"):
            resolver.locate(f"{url}/outside/{spec.image}")
        remote, errors = embed(resolver, [spec.image, f"moved/{spec.image}", f"away/{spec.image}"])
    local, _ = embed(ImageResolver([corpus / "images"]), [spec.image])
    assert errors[:2] == ["", ""]
    assert errors[2] == (
        f"cannot read image {root}away/{spec.image.replace(' ', '%20')}: redirected to "
        f"{url}/outside/{spec.image.replace(' ', '%20')}, outside the image root {root}: refused"
    )
    np.testing.assert_allclose(remote[:2], np.repeat(local, 2, axis=0), atol=1e-6)


def test_remote_roots_confine_keys_lexically_at_the_producer_and_again_at_the_worker() -> None:
    assert parse_url("s3://b/pages/a/../x.jpg").key == "pages/x.jpg"
    for bad, why in (
        ("s3://b/../x.jpg", "climbs above"),
        ("s3://b/p/%2e%2e/x.jpg", "%2e%2e"),
        ("https://user:hunter2@host/p/", "credentials do not go in a URL"),
        ("https://host/p/x.jpg?X-Amz-Signature=abc", "query"),
    ):
        with pytest.raises(UsageError, match=why) as refused:
            parse_url(bad)
        assert "hunter2" not in str(refused.value)
    prefix, target = parse_path_map(r"E:\CalibreComics_extracted=s3://b/extracted")
    resolver = ImageResolver(["/data/local", "s3://b/extracted/", "https://Host:443/pages/"], [(prefix, target)])
    assert resolver.texts() == ["/data/local", "s3://b/extracted/", "https://host/pages/"]
    assert resolver.locate(r"E:\CalibreComics_extracted\Book\0001.jpg") == (1, "Book/0001.jpg")
    assert resolver.locate("s3://b/extracted/Book/0002.jpg") == (1, "Book/0002.jpg")
    assert resolver.locate("https://HOST/pages/a%20b/1.jpg") == (2, "a b/1.jpg")
    for outside in (
        "s3://other/extracted/x.jpg",
        "s3://b/extracted/../secret/x.jpg",
        "s3://b/extractedX/x.jpg",
        "https://evil/pages/x.jpg",
        "http://host/pages/x.jpg",
        "https://host/pages/%2e%2e/admin",
    ):
        with pytest.raises(PathRefused):
            resolver.locate(outside)
    remote_first = ImageResolver(["s3://b/extracted/"])
    for rel in ("../x.jpg", "a/%2e%2e/%2e%2e/x.jpg", "a/..%2f..%2fx.jpg"):
        with pytest.raises(PathRefused, match="escapes"):
            remote_first.locate(rel)
        with pytest.raises(PathRefused, match="escapes"):
            remote_first.location(0, rel)  # a crafted task, checked again where the worker reads
    assert str(remote_first.location(0, "Book/1.jpg")) == "s3://b/extracted/Book/1.jpg"


def test_a_list_on_s3_resolves_its_lines_against_its_prefix_or_the_dataspec_root(s3: S3Server, monkeypatch) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    client = s3.client()
    spec = json.dumps({"page_image_path": "x.jpg", "panels": []})
    for key in ("lists/specs/a.json", "roots/b.json"):
        client.put_object(Bucket=BUCKET, Key=key, Body=spec)
    lines = ["specs/a.json", f"s3://{BUCKET}/roots/b.json", "specs/../../escape.json", "specs/a.json"]
    client.put_object(Bucket=BUCKET, Key="lists/l.txt", Body="\n".join(lines).encode())
    listed = read_list(f"s3://{BUCKET}/lists/l.txt")
    assert [str(e.path) for e in listed.entries[:2]] == [
        f"s3://{BUCKET}/lists/specs/a.json",
        f"s3://{BUCKET}/roots/b.json",
    ]
    assert [e.page_id for e in listed.entries[:2]] == ["specs/a.json", f"s3://{BUCKET}/roots/b.json"]
    assert "climbs out of" in listed.entries[2].error and len(listed.duplicates) == 1
    rooted = read_list(f"s3://{BUCKET}/lists/l.txt", dataspec_root=f"s3://{BUCKET}/roots/")
    assert [e.page_id for e in rooted.entries[:2]] == ["specs/a.json", "b.json"]
    assert str(rooted.entries[0].path) == f"s3://{BUCKET}/roots/specs/a.json"


def test_serve_shows_pages_whose_images_lie_on_s3(
    s3: S3Server, pipeline_store: Path, pipeline_corpus: Path, tiny_checkpoint: Path, monkeypatch
) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    s3.upload_tree(pipeline_corpus / "images", BUCKET, "served/")
    args = serve_args(
        *("--zarr", str(pipeline_store), "--checkpoint", str(tiny_checkpoint), "--image-root", f"s3://{BUCKET}/served/")
    )
    client = create_app(serve_command.build_state(args)).test_client()
    ds = open_committed(store_path(pipeline_store))
    row = int(np.flatnonzero(ds["status"].values != STATUS_FAILED)[0])
    thumb = client.get(f"/thumb/{pipeline_store.name}/{row}?size=128")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.data)).size[1] == 128
    rel = str(ds.image_path.values[row])
    original = client.get(f"/images/{rel}")
    assert original.status_code == 200 and original.data == (pipeline_corpus / "images" / rel).read_bytes()
    assert client.get("/images/nowhere/0.jpg").status_code == 404


def test_dataspec_reads_its_inputs_from_s3_as_from_disk(
    s3: S3Server, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch
) -> None:
    mapping: Path = request.getfixturevalue("inputs")  # test_dataspec_builder's seven pages
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    run_tool(mapping, tmp_path / "local")
    s3.upload_tree(mapping.parent, BUCKET, "builder/")
    parser = argparse.ArgumentParser()
    dataspec_command.add_arguments(parser)
    remote = tmp_path / "remote"
    dataspec_command.run(
        parser.parse_args(
            ["--coco", f"s3://{BUCKET}/builder/coco.json", "--mapping", f"s3://{BUCKET}/builder/mapping.csv"]
            + ["--out", str(remote)]
        )
    )
    local_files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.json"))
    remote_files = sorted(p.relative_to(remote) for p in remote.rglob("*.json"))
    assert local_files == remote_files and len(local_files) > 1
    for rel in local_files:
        if rel.name != "report.json":
            assert (remote / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes()
    report = json.loads((remote / "report.json").read_text())
    assert report["mapping"] == f"s3://{BUCKET}/builder/mapping.csv"
    assert any(
        d["reason"] == "vlm_unreadable" and f"s3://{BUCKET}/builder/vlm/005.json" in d["detail"]
        for d in report["dropped_pages"]
    )
