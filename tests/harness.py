"""Real processes for the pipeline tests: workers and writers over a private Redis, and waits on what they do."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from comix_embed.common.child import cli_argv
from comix_embed.common.environment import TEST_SWITCHES
from comix_embed.common.store.reading import open_committed, read_attrs
from comix_embed.common.store.schema import store_path


def with_switches(switches: dict[str, str], env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` plus COMIX_TEST_* `switches`, and the variable without which a process refuses them."""
    return {**(env or {}), **switches, TEST_SWITCHES: "1"}


class Proc:
    """A `comix-embed` child process in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = log_dir / f"{name}.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cli_argv(*argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        """Pids of this process's direct children (a Celery worker's pool process)."""
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill_pool(self) -> None:
        """SIGKILL the worker's pool process (the one running a task); the worker itself lives on."""
        for pid in self.children():
            os.kill(pid, signal.SIGKILL)

    def stop_file(self, stage: str) -> Path:
        """Where this worker's process writes its pid when it stops at `stage` (see `worker`)."""
        return self.log.with_name(f"{self.name}.{stage}.pid")

    def disarm(self, stage: str, timeout: float = 300) -> None:
        """No process of this worker stops at `stage` any more: its file is taken first, or the
        process that took it (stopped, or about to stop) is let go on."""
        try:
            os.close(os.open(self.stop_file(stage), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            os.kill(stopped_at(self.stop_file(stage), timeout), signal.SIGCONT)

    def kill_pool_mid_batch(self, broker: str, timeout: float = 300, again: bool = False):
        """Kill this worker's pool process stopped at the start of a batch (it holds the batch's
        batch lease), and return that batch lease's info; with `again`, the next batch taken stops
        there too. The worker must have been started with stop_at=("batch", ...)."""
        import redis

        from comix_embed.common.broker.batch_lease import batch_leases

        pid = stopped_at(self.stop_file("batch"), timeout)
        lease = next(info for info in batch_leases(redis.Redis.from_url(broker)) if info.pid == pid)
        if again:
            self.stop_file("batch").unlink()
        os.kill(pid, signal.SIGKILL)
        return lease

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def worker(
    checkpoint: Path,
    broker: str,
    log_dir: Path,
    name: str,
    env: dict[str, str] | None = None,
    extra: tuple = (),
    stop_at: tuple[str, ...] = (),
) -> Proc:
    """A worker process; `stop_at` names the stages where it stops itself, once each, to be killed
    there (common/failpoint.py; `Proc.stop_file` gives where it writes its pid)."""
    if stop_at:
        stops = ",".join(f"{stage}:{log_dir / f'{name}.{stage}.pid'}" for stage in stop_at)
        env = with_switches({"COMIX_TEST_STOP_AT": stops}, env)
    return Proc(
        name,
        [
            *("worker", *extra),
            "--checkpoint",
            str(checkpoint),
            "--device",
            "cpu",
            "--broker",
            broker,
            "--torch-threads",
            "1",
            "--decode-threads",
            "1",
            "--name",
            f"{name}@%h",
        ],
        log_dir,
        env,
    )


def writer(
    out: Path, broker: str, log_dir: Path, name: str = "writer", *extra: str, env: dict[str, str] | None = None
) -> Proc:
    return Proc(name, ["writer", "--output-dir", str(out), "--broker", broker, *extra], log_dir, env)


def slow_writer(out: Path, broker: str, log_dir: Path, name: str) -> Proc:
    """A writer that commits one batch at a time, without waiting to group them: kills land mid-job."""
    env = {"COMIX_WRITER_LINGER_S": "0", "COMIX_WRITER_GAP_LINGER_S": "0"}
    return writer(out, broker, log_dir, name, "--read", "1", env=env)


def wait_committed(out: Path, rows: int, timeout: float, procs: Sequence[Proc] = ()) -> None:
    """Until `committed_rows` reaches `rows`; fails early (with logs) if a process died."""
    deadline = time.monotonic() + timeout
    path = store_path(out)
    while time.monotonic() < deadline:
        if path.exists() and read_attrs(path).get("committed_rows", 0) >= rows:
            return
        for p in procs:
            if p.proc.poll() not in (None,):
                raise AssertionError(f"{p.log.name} exited {p.proc.returncode}:\n{p.text()[-3000:]}")
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.log.name}\n{p.text()[-2000:]}" for p in procs)
    raise AssertionError(f"committed_rows did not reach {rows} in {timeout} s\n{logs}")


def wait_results(broker: str, out: Path, count: int, timeout: float) -> None:
    """Until at least `count` batch results wait for the writer in Redis."""
    import redis

    from comix_embed.common.broker.results_stream import results_key
    from tests.typed import broker_store

    client = redis.Redis.from_url(broker)
    key = results_key(broker_store(out))
    deadline = time.monotonic() + timeout
    while client.xlen(key) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} results waiting after {timeout} s")
        time.sleep(0.05)


def wait_manifests(out: Path, count: int, timeout: float) -> int:
    """Until at least `count` batches have a manifest (polled every 5 ms); returns how many."""
    from comix_embed.common.store.manifests import manifest_ids

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = len(manifest_ids(store_path(out)))
        if found >= count:
            return found
        time.sleep(0.005)
    raise AssertionError(f"fewer than {count} manifests after {timeout} s")


def job_queue(out: Path) -> str:
    """The queue of the output folder's first job: its model's."""
    from comix_embed.common.model.identity import queue_name
    from comix_embed.common.store.jobs import first_job

    job = first_job(out)
    assert job is not None and job.model is not None
    return queue_name(job.model)


def wait_batch_lease(broker: str, timeout: float, holder: str = "", batch: int | None = None):
    """Until a worker process holds a batch (of `holder`, of `batch`); returns its batch lease's info."""
    import redis

    from comix_embed.common.broker.batch_lease import batch_leases

    client = redis.Redis.from_url(broker)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for lease in batch_leases(client):
            if lease.holder.startswith(holder) and (batch is None or lease.batch == batch):
                return lease
        time.sleep(0.005)
    raise AssertionError(f"no batch lease of {holder or 'any worker'} (batch {batch}) within {timeout} s")


def stopped_at(path: Path, timeout: float) -> int:
    """The pid a worker process wrote to `path` at a fault point, once it has stopped there."""
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text() and is_stopped(int(path.read_text()))):
        assert time.monotonic() < deadline, f"no worker process stopped at {path.name} within {timeout} s"
        time.sleep(0.01)
    return int(path.read_text())


def process_state(pid: int) -> str | None:
    """Process `pid`'s state letter in /proc/PID/stat (R, S, T stopped, Z zombie...), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]  # the name may hold spaces
    except (FileNotFoundError, IndexError):
        return None


def is_stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (SIGSTOP)."""
    return process_state(pid) == "T"


def store_arrays(out: Path) -> dict[str, np.ndarray]:
    """Every variable of the committed store as numpy arrays, for array-by-array comparison."""
    ds = open_committed(store_path(out))
    return {str(name): np.asarray(ds[name].values) for name in list(ds.data_vars) + list(ds.coords)}


def assert_same_store(a: Path, b: Path) -> None:
    """The same pages in the same rows; computed numbers within 1e-5 (another process, another
    delivery may change the last bits), everything copied exactly."""
    left, right = store_arrays(a), store_arrays(b)
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].shape == right[name].shape, name
        if left[name].dtype.kind == "f":
            np.testing.assert_allclose(left[name], right[name], rtol=0, atol=1e-5, err_msg=name)
        else:
            assert left[name].tolist() == right[name].tolist(), name
