"""Containers for the deployment test: local base images, podman's settings here, and one compose project.

No container registry is reachable from these machines, so the images compose.yaml would pull
(`pytorch/pytorch`, `redis`) are replaced, through its `BASE_IMAGE` and `REDIS_IMAGE` variables, by
one base image built here: a Debian root file system made by `debootstrap` from the Debian mirror,
with Python, pip, Redis and the CPU build of torch, imported into podman. It is built once per
machine and recipe (the tag carries the recipe's hash) and kept in podman's image store; the
project's image is built from it by compose with the project's own Dockerfile (podman caches its
layers).

podman's own defaults do not run here as they are: its default `nofile` and `nproc` limits are
above what this sandbox may set, so the project's podman settings (a `containers.conf` given
through CONTAINERS_CONF, nothing changed on the machine) lower them and name runc as the runtime.
The Debian packages' podman-compose (1.0) reads every `${VAR:?}` of the file, profiles not started
included, so the remote profile's IMAGE_ROOT gets a placeholder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "comix-embed-tests"
TOOLS = ("podman", "podman-compose", "debootstrap")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-pip", "redis-server", "redis-tools", "ca-certificates")
TORCH = "torch==2.13.0"  # the CPU build this machine's pip finds (PIP_FIND_LINKS), as .ci/run installs
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=8192:8192"]
[engine]
runtime = "runc"
"""
PROJECT_PREFIX = "comixtest"


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def podman_env() -> dict[str, str]:
    """The environment podman and podman-compose run in: this project's containers.conf."""
    conf = CACHE / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(*argv: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *argv], capture_output=True, text=True, env=podman_env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def base_image() -> str:
    """The local base image's name, built first if this machine does not hold it yet."""
    recipe = json.dumps([SUITE, MIRROR, PACKAGES, TORCH, CONTAINERS_CONF]).encode()
    name = f"localhost/comix-test-base:{SUITE}-{hashlib.sha256(recipe).hexdigest()[:12]}"
    if podman("image", "exists", name, check=False).returncode != 0:
        _build_base(name)
    return name


def _build_base(name: str) -> None:
    """debootstrap a Debian root file system, add torch, import it into podman (a few minutes)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), MIRROR])
        # this machine's certificate authorities: its HTTPS to the package index goes through them
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
        shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
        wheels = os.environ.get("PIP_FIND_LINKS", "")
        links: list[str] = []
        if wheels and Path(wheels).is_dir():
            (rootfs / "opt/wheels").mkdir(parents=True)
            _run(["mount", "--bind", wheels, str(rootfs / "opt/wheels")])
            links = ["--find-links", "/opt/wheels"]
        try:
            pip = ["python3", "-m", "pip", "install", "-q", "--no-cache-dir", "--break-system-packages"]
            _run(["chroot", str(rootfs), *pip, *links, TORCH])
        finally:
            if links:
                _run(["umount", str(rootfs / "opt/wheels")])
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        changes = ["--change", "ENV PIP_BREAK_SYSTEM_PACKAGES=1", "--change", 'CMD ["/bin/bash"]']
        imported = subprocess.run(
            ["podman", "import", *changes, "-", name], stdin=tar.stdout, capture_output=True, env=podman_env()
        )
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        assert imported.returncode == 0, imported.stderr.decode()


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (
        f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick), for a published port of the project."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ComposeProject:
    """One compose project of the project's own compose.yaml, under a name of its own."""

    def __init__(self, name: str, environment: dict[str, str]) -> None:
        assert name.startswith(PROJECT_PREFIX)
        self.name = name
        self.env = {**podman_env(), "IMAGE_ROOT": "s3://not-used/", **environment}

    def compose(self, *argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["podman-compose", "-f", str(ROOT / "compose.yaml"), "-p", self.name, *argv],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=timeout,
        )

    def logs(self, service: str) -> str:
        """Every container of `service`'s log, one after the other."""
        out = []
        for container in self.containers(service):
            proc = podman("logs", container, check=False)
            out.append(f"--- {container}\n{proc.stdout}{proc.stderr}")
        return "\n".join(out)

    def containers(self, service: str | None = None) -> list[str]:
        return containers_of(self.name, service)

    def down(self) -> None:
        """Everything the project started: containers, volumes, network; also after a failed run."""
        self.compose("down", "-v", "-t", "30", timeout=300)
        remove_project(self.name)
        podman("image", "prune", "-f", check=False)  # the image each build replaced


def containers_of(project: str, service: str | None = None) -> list[str]:
    listed = podman("ps", "-a", "--format", "json", check=False)
    found = []
    for c in json.loads(listed.stdout or "[]"):
        labels = c.get("Labels") or {}
        if labels.get("io.podman.compose.project") == project and service in (
            None,
            labels.get("com.docker.compose.service"),
        ):
            found.append(c["Names"][0])
    return found


def remove_project(project: str) -> None:
    """Remove a project's containers, volumes and network, whatever state a run left them in."""
    for container in containers_of(project):
        podman("rm", "-f", "-t", "5", container, check=False)
    volumes = podman("volume", "ls", "--format", "{{.Name}}", check=False).stdout.split()
    for volume in volumes:
        if volume.startswith(f"{project}_"):
            podman("volume", "rm", "-f", volume, check=False)
    podman("network", "rm", "-f", f"{project}_default", check=False)


def leftover_projects() -> set[str]:
    """Projects of earlier test runs that died before cleaning up (their containers or networks)."""
    listed = podman("ps", "-a", "--format", "json", check=False)
    names = {(c.get("Labels") or {}).get("io.podman.compose.project", "") for c in json.loads(listed.stdout or "[]")}
    networks = podman("network", "ls", "--format", "{{.Name}}", check=False).stdout.split()
    names |= {n.removesuffix("_default") for n in networks}
    return {n for n in names if n.startswith(PROJECT_PREFIX)}
