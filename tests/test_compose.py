"""The compose deployment for real: the project's compose.yaml and Dockerfile brought up with podman.

Redis, the writer, Flower and two workers come up from the project's own files (the base images
built here, tests/containers.py says why); a job is enqueued with `compose run --rm producer
enqueue`; every page is committed, once; Flower's API, behind its basic auth, lists both workers
and the job's tasks; `compose stop` ends every process of ours within the grace period, without a
SIGKILL; then `down` removes everything, as a failed run's clean-up does. Without
podman, podman-compose and debootstrap (Debian's packages, which .ci/run installs) it skips and
says why.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from comix_embed.common.store.reading import open_committed, read_committed_rows
from comix_embed.common.store.schema import STATUS_FAILED, store_path
from tests.containers import (
    ROOT,
    ComposeProject,
    base_image,
    free_port,
    leftover_projects,
    missing_tools,
    podman,
    remove_project,
)

pytestmark = pytest.mark.skipif(
    bool(missing_tools()),
    reason=f"{', '.join(missing_tools())} missing: install Debian's podman, podman-compose, runc and debootstrap "
    "(as .ci/run does) to run the deployment test",
)

FLOWER = ("admin", "flower-test-password")
# Safety nets only: each wait ends as soon as its signal comes.
START_S = 600  # two workers loading torch and the model on a loaded 2-core machine
JOB_S = 600


def wait_for(condition: Callable[[], bool], timeout: float, what: str, context: Callable[[], str]) -> None:
    """Poll `condition` (a real signal: an API answer, the store's committed rows) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s:\n{context()}")
        time.sleep(1)


def flower(port: int, path: str, auth: tuple[str, str] | None = FLOWER) -> tuple[int, object]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
        return 0, None


@pytest.fixture
def deployment(tmp_path: Path, tiny_checkpoint: Path, corpus: Path) -> Iterator[tuple[ComposeProject, Path, int]]:
    """A compose project over copies of the test checkpoint and corpus; removed whatever happens."""
    for stale in leftover_projects():
        remove_project(stale)
    models, data, out = tmp_path / "models", tmp_path / "corpus", tmp_path / "out"
    models.mkdir()
    shutil.copy(tiny_checkpoint, models / tiny_checkpoint.name)
    tokenizer = tiny_checkpoint.with_suffix(".tokenizer")
    shutil.copytree(tokenizer, models / tokenizer.name)
    shutil.copytree(corpus, data)
    out.mkdir()
    out.chmod(0o777)  # the containers run as uid 10001
    for folder in (tmp_path, models, data):
        folder.chmod(0o755)
    flower_port = free_port()
    base = base_image()
    project = ComposeProject(
        f"comixtest{os.getpid()}",
        {
            "BASE_IMAGE": base,
            "REDIS_IMAGE": base,
            "APP_IMAGE": "localhost/comix-embed:test",  # rebuilt by each run, its layers cached
            "REDIS_PASSWORD": "redis-test-password",
            "FLOWER_USER": FLOWER[0],
            "FLOWER_PASSWORD": FLOWER[1],
            "MODELS_DIR": str(models),
            "CHECKPOINT": tiny_checkpoint.name,
            "IMAGES_DIR": str(data / "images"),
            "DATASPECS_DIR": str(data),
            "OUTPUT_DIR": str(out),
            "REDIS_PORT": str(free_port()),  # 6379 is this machine's own Redis
            "FLOWER_PORT": str(flower_port),
            "WORKERS": "2",
        },
    )
    try:
        yield project, out, flower_port
    finally:
        project.down()
        remove_project(project.name)
        assert project.containers() == []


def test_the_deployment_commits_a_job_and_flower_shows_it(deployment: tuple[ComposeProject, Path, int]) -> None:
    project, out, port = deployment
    built = project.compose("build", "writer", timeout=1800)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    up = project.compose("up", "-d", "redis", "writer", "flower", "worker")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert len(project.containers("worker")) == 2

    def workers() -> list[str]:
        status, answer = flower(port, "/api/workers?refresh=1")
        return sorted(answer) if status == 200 and isinstance(answer, dict) else []

    wait_for(lambda: len(workers()) == 2, START_S, "two workers in Flower", lambda: project.logs("worker"))
    assert flower(port, "/api/workers", auth=None)[0] == 401
    assert flower(port, "/api/workers", auth=(FLOWER[0], "wrong"))[0] == 401

    enqueue = project.compose(
        *("run", "--rm", "producer", "enqueue", "--checkpoint", "/models/" + project.env["CHECKPOINT"]),
        *("--list", "/data/dataspecs/list.txt", "--dataspec-root", "/data/dataspecs"),
        *("--image-root", "/data/images", "--output-dir", "/data/out", "--batch-size", "4"),
    )
    assert enqueue.returncode == 0, enqueue.stdout[-3000:] + enqueue.stderr[-3000:]
    assert "job_000001: 24 pages in rows 0-23, 6 batches of 4" in enqueue.stdout

    store = store_path(out)
    wait_for(
        lambda: store.exists() and read_committed_rows(store) == 24,
        JOB_S,
        "every page committed",
        lambda: project.logs("writer") + project.logs("worker"),
    )
    ds = open_committed(store)
    listed = [line for line in (out.parent / "corpus/list.txt").read_text().splitlines() if line.strip()]
    assert len(set(str(p) for p in ds["page_id"].values)) == len(listed) == 24  # every page, once
    assert not (ds["status"].values == STATUS_FAILED).any()
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert sorted(a["row"] for a in audit) == list(range(24))

    status, tasks = flower(port, "/api/tasks")
    assert status == 200 and isinstance(tasks, dict)
    embed = [t for t in tasks.values() if t["name"] == "comix.embed_batch"]
    assert len(embed) == 6 and all(t["state"] == "SUCCESS" for t in embed)
    assert {t["worker"] for t in embed} <= set(workers())

    # `compose stop` within compose.yaml's grace period (Debian's podman-compose 1.0 does not read
    # stop_grace_period: it is passed as -t): every process of ours exits 0 on its own, nothing is
    # killed (137 would be SIGKILL), and the workers said their shutdown was warm
    grace = int(str(yaml.safe_load((ROOT / "compose.yaml").read_text())["x-comix"]["stop_grace_period"]).rstrip("s"))
    stop = project.compose("stop", "-t", str(grace))
    assert stop.returncode == 0, stop.stdout[-3000:] + stop.stderr[-3000:]
    codes = {c: podman("inspect", c, "--format", "{{.State.ExitCode}}").stdout.strip() for c in project.containers()}
    assert "137" not in codes.values(), codes
    assert all(codes[c] == "0" for s in ("writer", "worker") for c in project.containers(s)), codes
    assert project.logs("worker").count("Warm shutdown") == 2, project.logs("worker")[-3000:]
