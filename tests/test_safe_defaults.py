"""Safe defaults, each tested where a user would meet it.

Checkpoints unpickled fully only when trusted, the broker password kept out of command lines and
logs, settings checked at start, test switches refused outside tests, an ETA that counts days."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import torch

from comix_embed.cli import COMMANDS
from comix_embed.common import environment
from comix_embed.common.broker.keys import EMBED_BATCH_TASK
from comix_embed.common.child import cli_argv
from comix_embed.common.config import masked_url
from comix_embed.common.environment import TEST_SWITCHES
from comix_embed.common.errors import EXIT_USAGE
from comix_embed.common.model.checkpoint import CheckpointError, load_model
from comix_embed.common.model.tokenizer import tokenizer_dir_beside
from comix_embed.consumers.settings import ready_key
from comix_embed.private_redis import PrivateRedis
from comix_embed.producer.status import duration
from comix_embed.tools.sample.corpus import make_sample
from tests.cli import run_args, run_cli
from tests.harness import with_switches


def checkpoint_needing_trust(tiny_checkpoint: Path, out: Path) -> Path:
    """The tiny checkpoint plus the training script's arguments, as training code often saves
    them: an argparse.Namespace, which the safe loader refuses."""
    data = torch.load(tiny_checkpoint, weights_only=True)
    data["args"] = argparse.Namespace(lr=1e-4, epochs=30)
    torch.save(data, out)
    return out


# --- checkpoints ---


def test_untrusted_checkpoint_is_refused_naming_file_object_and_flag(tiny_checkpoint: Path, tmp_path: Path) -> None:
    path = checkpoint_needing_trust(tiny_checkpoint, tmp_path / "trained.pth")
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    message = str(exc.value)
    assert str(path) in message and "argparse.Namespace" in message and "--trust-checkpoint" in message
    trusted = load_model(path, trust=True)
    plain = load_model(tiny_checkpoint)
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(tensor, trusted.model.state_dict()[name]), name


def test_worker_command_refuses_it_too(tiny_checkpoint: Path, tmp_path: Path) -> None:
    path = checkpoint_needing_trust(tiny_checkpoint, tmp_path / "trained.pth")
    tokenizer = tokenizer_dir_beside(tiny_checkpoint)
    proc = run_cli("worker", "--checkpoint", str(path), "--tokenizer", str(tokenizer), "--device", "cpu")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(path) in proc.stderr and "--trust-checkpoint" in proc.stderr


def test_every_command_that_takes_a_checkpoint_takes_the_trust_flag() -> None:
    with_checkpoint = []
    for name, (module_name, _) in COMMANDS.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(module_name).add_arguments(parser)
        options = {opt for action in parser._actions for opt in action.option_strings}
        if "--checkpoint" in options:
            with_checkpoint.append(name)
            assert "--trust-checkpoint" in options, name
    assert {"run", "worker", "query"} <= set(with_checkpoint)


# --- the broker's password ---


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def test_broker_password_stays_out_of_command_lines_and_logs(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A `run` against a password-protected Redis, with a checkpoint that needs --trust-checkpoint.

    The run is paused (SIGSTOP) once it has started its children and before it sends any batch,
    so they all stay alive to be looked at; then it goes on and must finish the job, which its
    workers can only do if --trust-checkpoint reached them.
    """
    password = "pw-Zq81xLr0"
    secrets = [password.encode(), quote(password, safe="").encode()]
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    make_sample(corpus, pages=4, seed=3)
    ckpt = checkpoint_needing_trust(tiny_checkpoint, tmp_path / "trained.pth")
    with PrivateRedis(password=password) as server:
        trust = ("--tokenizer", str(tokenizer_dir_beside(tiny_checkpoint)), "--trust-checkpoint")
        # --broker: the user's own command line; what it starts must not repeat it
        argv = cli_argv(*run_args(ckpt, corpus, out, *trust, "--broker", server.url, batch_size=2, workers=2))
        run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            seen = []
            assert run.stdout is not None
            for line in run.stdout:  # "N worker(s) on cpu": children started, no batch sent yet
                seen.append(line)
                if b"worker(s) on" in line:
                    os.kill(run.pid, signal.SIGSTOP)
                    break
            else:
                pytest.fail(b"".join(seen).decode())
            client = redis.Redis.from_url(server.url)
            deadline = time.monotonic() + 300
            while len(client.keys(ready_key("*"))) < 2:  # both pool processes loaded the model
                assert time.monotonic() < deadline, "workers not ready: " + str(sorted(os.listdir(out / "logs")))
                time.sleep(0.2)
            cmdlines = {pid: _read(f"/proc/{pid}/cmdline").split(b"\0") for pid in _descendants(run.pid)}
            writer = [pid for pid, argv in cmdlines.items() if b"writer" in argv]
            workers = [pid for pid, argv in cmdlines.items() if b"worker" in argv]
            assert len(writer) == 1 and len(workers) >= 4, cmdlines  # 2 workers, each with its pool process
            for pid, child_argv in cmdlines.items():
                assert not any(s in arg for arg in child_argv for s in secrets), (pid, child_argv)
            assert all(b"--trust-checkpoint" in cmdlines[pid] for pid in workers)
            environ = _read(f"/proc/{writer[0]}/environ").split(b"\0")
            assert f"COMIX_BROKER_URL={server.url}".encode() in environ  # handed over privately
        finally:
            os.kill(run.pid, signal.SIGCONT)
        rest, _ = run.communicate(timeout=300)
    output = b"".join(seen) + rest
    assert run.returncode == 0, output.decode()
    assert not any(s in output for s in secrets)
    logs = {p.name: p.read_bytes() for p in (out / "logs").glob("*.log")}
    assert {"writer.log", "worker-0.log", "worker-1.log"} <= logs.keys()
    for name, text in logs.items():
        assert not any(s in text for s in secrets), name
    assert b"redis://:**@127.0.0.1" in logs["worker-0.log"]  # Celery's banner shows the URL masked


def test_masked_url() -> None:
    assert masked_url("redis://:s3cr%40t@queue:6379/0") == "redis://:***@queue:6379/0"
    assert masked_url("redis://ops:pw@queue/1") == "redis://ops:***@queue/1"
    assert masked_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_status_names_an_unreachable_broker_without_its_password(tmp_path: Path) -> None:
    from comix_embed.common.store.jobs import JobPage
    from comix_embed.producer.jobs import plan_job

    (tmp_path / "list.txt").write_text("a.json\n")
    plan_job(
        tmp_path, tmp_path / "list.txt", [JobPage(page_id="a.json", manifest_path="a.json", panel_count=1)], 8, False
    )
    proc = run_cli("status", "--output-dir", str(tmp_path), "--broker", "redis://:hunter2@127.0.0.1:1/0")
    assert proc.returncode == 0, proc.stderr
    assert "broker: unreachable (redis://:***@127.0.0.1:1/0:" in proc.stdout and "hunter2" not in proc.stdout


# --- settings checked at start ---


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("COMIX_VISIBILITY_TIMEOUT", "-5", "COMIX_VISIBILITY_TIMEOUT='-5' must be at least 1"),
        ("COMIX_MAX_PENDING_RESULTS", "0", "COMIX_MAX_PENDING_RESULTS='0' must be at least 1"),
        ("COMIX_MAX_IMAGE_PIXELS", "0", "COMIX_MAX_IMAGE_PIXELS='0' must be at least 1"),
        ("COMIX_TASK_TIME_LIMIT", "20m", "COMIX_TASK_TIME_LIMIT='20m' is not an integer"),
        ("COMIX_WRITER_LINGER_S", "-1", "COMIX_WRITER_LINGER_S='-1' must be at least 0"),
        ("COMIX_WORKER_SHUTDOWN_S", "-1", "COMIX_WORKER_SHUTDOWN_S='-1' must be at least 0"),
        ("COMIX_WRITER_LEASE_TTL_S", "0.2", "COMIX_WRITER_LEASE_TTL_S='0.2' must be at least 1"),
        ("COMIX_MAX_ATTEMPTS", "0", "COMIX_MAX_ATTEMPTS='0' must be at least 1"),
        ("COMIX_MAX_ATTEMPTS", "three", "COMIX_MAX_ATTEMPTS='three' is not an integer"),
        ("COMIX_LEASE_TTL_S", "0", "COMIX_LEASE_TTL_S='0' must be positive"),
        ("COMIX_LEASE_TTL_S", "inf", "COMIX_LEASE_TTL_S='inf' is not a finite number"),
        ("COMIX_WRITER_SCAN_S", "-2", "COMIX_WRITER_SCAN_S='-2' must be positive"),
        (
            "COMIX_WRITER_FSYNC",
            "ture",
            "COMIX_WRITER_FSYNC='ture' is not a boolean (1, true, yes, on or 0, false, no, off)",
        ),
        (
            "COMIX_BROKER_URL",
            "amqp://u:hunter2@mq/",
            "COMIX_BROKER_URL='amqp://u:***@mq/' is not a redis://, rediss:// or sentinel:// URL",
        ),
        (
            "COMIX_TEST_STOP_AT",
            "tokenize:/tmp/x",
            "COMIX_TEST_STOP_AT='tokenize:/tmp/x' must be STAGE:PATH[,STAGE:PATH...] with STAGE one of batch, decode, encode, commit",
        ),
    ],
)
def test_each_rule_names_the_variable_and_its_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(TEST_SWITCHES, "1")
    variable = environment.DECLARED[name]
    monkeypatch.setenv(name, value)
    assert variable.problem() == problem and variable.get() == variable.default  # refused: the default
    assert problem in environment.problems()


@pytest.mark.parametrize(
    ("name", "value", "read"),
    [("COMIX_WRITER_FSYNC", "Off", False), ("COMIX_WRITER_FSYNC", "yes", True), ("COMIX_LEASE_TTL_S", "", 30.0)],
)
def test_good_values_are_read(monkeypatch: pytest.MonkeyPatch, name: str, value: str, read: object) -> None:
    monkeypatch.setenv(name, value)
    variable = environment.DECLARED[name]
    assert variable.problem() is None and variable.get() == read


def test_every_bad_setting_stops_a_command_named_at_once(tmp_path: Path) -> None:
    env = {"COMIX_MAX_ATTEMPTS": "0", "COMIX_WRITER_SCAN_S": "0", "COMIX_BROKER_URL": "http://u:hunter2@mq/"}
    proc = run_cli("status", "--output-dir", str(tmp_path), env=env)
    assert proc.returncode == EXIT_USAGE and proc.stderr.startswith("error: configuration: ")
    for name in env:
        assert environment.DECLARED[name].shown(env[name]) in proc.stderr, name
    assert "hunter2" not in proc.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"COMIX_TASK_TIME_LIMIT": "2000", "COMIX_VISIBILITY_TIMEOUT": "1800"},
            "COMIX_TASK_TIME_LIMIT (2000 s) must be below COMIX_VISIBILITY_TIMEOUT (1800 s)",
        ),
        ({"COMIX_TASK_TIME_LIMIT": "30"}, "COMIX_TASK_TIME_LIMIT must be more than 60 s"),
    ],
)
def test_settings_that_cannot_work_together_stop_a_command(tmp_path: Path, env: dict[str, str], message: str) -> None:
    proc = run_cli("status", "--output-dir", str(tmp_path), env=env)
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.startswith("error: configuration: ") and message in proc.stderr


@pytest.mark.parametrize(
    ("switch", "value"), [("COMIX_TEST_STOP_AT", "batch:/tmp/stop.pid"), ("COMIX_TEST_WRITER_FLOCK", "0")]
)
def test_a_test_switch_is_refused_unless_tests_enable_it(tmp_path: Path, switch: str, value: str) -> None:
    """Without COMIX_TEST_SWITCHES=1 a process refuses a switch, naming it; with it, the switch
    passes the check (the fault and lease tests show that it then works)."""
    refused = run_cli("status", "--output-dir", str(tmp_path), env={switch: value, TEST_SWITCHES: "0"})
    assert refused.returncode == EXIT_USAGE
    assert f"{switch} is a switch for tests only" in refused.stderr and f"{TEST_SWITCHES}=1" in refused.stderr
    accepted = run_cli("status", "--output-dir", str(tmp_path), env=with_switches({switch: value}))
    assert accepted.returncode == EXIT_USAGE and "no job in" in accepted.stderr  # past the check, to the command


def test_a_misspelt_test_switch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMIX_TEST_STOPAT", "batch:/x")
    assert (
        "COMIX_TEST_STOPAT is no test switch (those are COMIX_TEST_IMPORT_KILL_AFTER, COMIX_TEST_SNAPSHOT_KILL_AFTER, "
        "COMIX_TEST_STOP_AT, COMIX_TEST_WRITER_FLOCK)" in environment.problems()
    )


def test_the_readme_lists_every_variable_and_no_other() -> None:
    """The Configuration table of the README against the variables config.py declares."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (`COMIX_.*?) \|", section, re.MULTILINE)
    assert {name for row in rows for name in re.findall(r"`(COMIX_\w+)`", row)} == set(environment.DECLARED)


def test_good_settings_pass_the_check(tmp_path: Path) -> None:
    env = {"COMIX_TASK_TIME_LIMIT": "600", "COMIX_VISIBILITY_TIMEOUT": "900", "COMIX_WRITER_LINGER_S": "0"}
    proc = run_cli("status", "--output-dir", str(tmp_path), env=env)
    assert proc.returncode == 2 and "no job in" in proc.stderr  # got past the check to the command itself


# --- status ETA ---


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (59, "00:00:59"),
        (3600, "01:00:00"),
        (86399, "23:59:59"),
        (86400, "1d 00:00:00"),
        (3 * 86400 + 3723, "3d 01:02:03"),
    ],
)
def test_eta_counts_days(seconds: int, shown: str) -> None:
    assert duration(seconds) == shown


def test_no_process_that_loads_the_app_unpickles_broker_content() -> None:
    """Whoever can write to Redis must not run code on a worker: a pickled body is refused even
    where kombu decodes with no accept list, and JSON still decodes."""
    import pickle

    from kombu.exceptions import ContentDisallowed
    from kombu.serialization import loads

    from comix_embed.common.celery_app import app

    assert app.conf.accept_content == ["json"] and app.conf.result_accept_content == ["json"]
    with pytest.raises(ContentDisallowed):
        loads(pickle.dumps({"batch": 1}), "application/x-python-serialize", "binary")
    assert loads(b'{"batch": 1}', "application/json", "utf-8") == {"batch": 1}


class _Plant:
    """A pickle that, once unpickled, creates a file: the proof that code from Redis ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def test_a_live_worker_refuses_a_pickled_task(tiny_checkpoint: Path, tmp_path: Path, broker: PrivateRedis) -> None:
    """A pickled embed-batch task message put straight on the worker's queue is refused
    (Celery logs that it will not deserialize it); the code it carries never runs."""
    import pickle

    import kombu

    from tests.harness import worker

    marker = tmp_path / "pickle-ran"
    proc = worker(tiny_checkpoint, broker.url, tmp_path / "logs", "w")
    try:
        deadline = time.monotonic() + 300
        while "; queue " not in proc.text() or not redis.Redis.from_url(broker.url).keys(ready_key("w") + "*"):
            assert proc.proc.poll() is None and time.monotonic() < deadline, proc.text()
            time.sleep(0.05)
        queue = proc.text().split("; queue ")[1].split()[0]
        with kombu.Connection(broker.url) as conn:
            conn.Producer(serializer="json").publish(
                pickle.dumps(_Plant(marker)),
                routing_key=queue,
                content_type="application/x-python-serialize",
                content_encoding="binary",
                headers={"task": EMBED_BATCH_TASK, "id": "pickled-1", "lang": "py"},
            )
        while "Refusing to deserialize" not in proc.text():
            assert proc.proc.poll() is None and time.monotonic() < deadline, proc.text()
            time.sleep(0.05)
    finally:
        proc.stop()
    assert not marker.exists()
