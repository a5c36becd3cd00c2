"""Exit statuses: declared in one place (common/errors.py), returned by name, listed for users.

Every status a command can end with is a constant of common/errors.py with its meaning, which
`comix-embed --help` and the README list. The commands return those constants or raise the
exceptions that carry them; the command line turns those into the status and an `error:` line
(real processes: tests/test_run.py for 2, tests/test_full.py for 4 and 1).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
from pathlib import Path

from comix_embed.cli import COMMANDS
from comix_embed.common import errors
from comix_embed.common.child import cli_argv
from comix_embed.common.model.checkpoint import CheckpointError
from comix_embed.private_redis import free_port
from comix_embed.producer.enqueue import RedisFull
from comix_embed.writer.checks import CheckFailed
from comix_embed.writer.diskfull import DiskFull
from comix_embed.writer.lease import WriterLeaseHeld, WriterLeaseLost
from tests import synthetic
from tests.cli import run_cli
from tests.tree import ROOT, module_paths

# The modules whose functions end commands: each command's, and those `run` and `worker` hand to.
ENTRY_MODULES = [
    *(module for module, _ in COMMANDS.values()),
    "comix_embed.cli",
    "comix_embed.retry_run",
    "comix_embed.consumers.preflight",
]


def test_every_exit_constant_is_a_listed_status() -> None:
    constants = {
        name: value for name, value in vars(errors).items() if name.startswith("EXIT_") and name != "EXIT_STATUSES"
    }
    assert len(set(constants.values())) == len(constants), "two names for one status"
    assert set(constants.values()) == set(errors.EXIT_STATUSES)


def test_exceptions_carry_their_status_from_errors() -> None:
    for cls, status in [
        (errors.CommandError, errors.EXIT_FAILED),
        (CheckFailed, errors.EXIT_FAILED),
        (RedisFull, errors.EXIT_FAILED),
        (errors.UsageError, errors.EXIT_USAGE),
        (CheckpointError, errors.EXIT_USAGE),
        (WriterLeaseHeld, errors.EXIT_USAGE),
        (WriterLeaseLost, errors.EXIT_USAGE),
        (DiskFull, errors.EXIT_DISK_FULL),
    ]:
        assert issubclass(cls, errors.CommandError) and cls.status == status, cls


def _exit_assignments(source: str) -> list[str]:
    """Names EXIT_* bound in `source` (assignments, also unpacking)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                found += [n.id for n in ast.walk(target) if isinstance(n, ast.Name) and n.id.startswith("EXIT_")]
    return found


def _literal_statuses(source: str) -> list[str]:
    """`return <int>` (or `a if c else <int>`) in functions that end commands: `run`, `main`, and
    any function that returns an EXIT_* constant somewhere."""
    found = []
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, ast.FunctionDef):
            continue
        returns = [n for n in ast.walk(func) if isinstance(n, ast.Return) and n.value is not None]
        by_name = any(
            isinstance(n, ast.Name) and n.id.startswith("EXIT_")
            for r in returns
            if r.value is not None
            for n in ast.walk(r.value)
        )
        if func.name not in ("run", "main") and not by_name:
            continue
        for r in returns:
            values = [r.value.body, r.value.orelse] if isinstance(r.value, ast.IfExp) else [r.value]
            if any(isinstance(v, ast.Constant) and type(v.value) is int for v in values):
                found.append(f"{func.name} line {r.lineno}")
    return found


def test_the_checks_see_what_they_look_for() -> None:
    source = (
        "EXIT_OK, EXIT_MINE = 0, 5\n"
        "def run(args):\n    return 3\n"
        "def _loop(x):\n    if x:\n        return EXIT_OK\n    return 1 if x else EXIT_OK\n"
        "def count(x):\n    return 0\n"
    )
    assert _exit_assignments(source) == ["EXIT_OK", "EXIT_MINE"]
    assert _literal_statuses(source) == ["run line 3", "_loop line 7"]


def test_no_module_but_errors_declares_an_exit_status() -> None:
    declared = {path: _exit_assignments((ROOT / path).read_text(encoding="utf-8")) for path in module_paths()}
    assert {p: names for p, names in declared.items() if names and p != "common/errors.py"} == {}


def test_commands_return_statuses_by_name() -> None:
    literal = {}
    for module in ENTRY_MODULES:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, module
        found = _literal_statuses(Path(spec.origin).read_text(encoding="utf-8"))
        if found:
            literal[module] = found
    assert literal == {}, "return the constants of common/errors.py"


def test_help_and_readme_list_every_status() -> None:
    shown = subprocess.run(cli_argv("--help"), capture_output=True, text=True, check=True).stdout
    listed = shown.split("exit status:", 1)[1]
    assert [int(s) for s in re.findall(r"^\s+(\d+)  ", listed, re.MULTILINE)] == list(errors.EXIT_STATUSES)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [int(s) for s in re.findall(r"^- `(\d+)` ", readme, re.MULTILINE)] == list(errors.EXIT_STATUSES)


def test_an_unreachable_broker_is_an_error_message_not_a_traceback(tmp_path: Path) -> None:
    """A writer started on a store with a job, its broker down past COMIX_BROKER_WAIT_S: exit 1, one
    line naming the broker (its password masked), and no traceback."""
    out = tmp_path / "out"
    synthetic.plan(out, synthetic.make_pages(8), 8)
    broker = f"redis://:secret@127.0.0.1:{free_port()}/0"  # nothing listens there
    done = run_cli(
        "writer", "--output-dir", str(out), "--broker", broker, timeout=120, env={"COMIX_BROKER_WAIT_S": "1"}
    )
    assert done.returncode == errors.EXIT_FAILED, done.stderr
    assert f"error: cannot reach the broker at redis://:***@127.0.0.1:{broker.rsplit(':', 1)[1]}" in done.stderr
    assert "Traceback" not in done.stderr and "secret" not in done.stderr
