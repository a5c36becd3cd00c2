"""The package installs one import name, `comix_embed`: a user's own `common/` or `writer.py` cannot shadow it.

`run` starts a private Redis, workers and the writer as child processes; they must import our
modules even when the user starts `run` from a folder whose `common/`, `writer.py`, `producer.py`,
`consumers.py` or even `comix_embed/` would be found first on a `python -m` path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from comix_embed.common.store.reading import open_committed
from comix_embed.common.store.schema import store_path
from tests.tree import ROLE_FOLDERS

# The generic names the package once installed, and our own name: a child started with a plain
# `python -m` (current folder first on sys.path) would import the user's `comix_embed/` instead.
SHADOWS = ("common/__init__.py", "writer.py", "producer.py", "consumers.py", "comix_embed/__init__.py")


def _shadowing_folder(root: Path) -> Path:
    """A user's project folder whose generic module names each raise on import."""
    for name in SHADOWS:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"raise ImportError('the user module {name} was imported instead of comix_embed')\n")
    return root


def test_run_from_a_folder_with_generic_module_names_imports_only_its_own(
    tiny_checkpoint: Path, corpus: Path, tmp_path: Path
) -> None:
    user = _shadowing_folder(tmp_path / "user_project")
    # The trap is live: code that put the current folder on sys.path would import the user's module.
    trap = subprocess.run([sys.executable, "-c", "import common"], cwd=user, capture_output=True, text=True, timeout=60)
    assert trap.returncode != 0 and "the user module common/__init__.py was imported" in trap.stderr

    out = tmp_path / "out"
    command = Path(sys.executable).with_name("comix-embed")  # the console script users call
    proc = subprocess.run(
        [
            str(command),
            "run",
            "--checkpoint",
            str(tiny_checkpoint),
            "--list",
            str(corpus / "list.txt"),
            "--dataspec-root",
            str(corpus),
            "--image-root",
            str(corpus / "images"),
            "--output-dir",
            str(out),
            "--batch-size",
            "8",
        ],
        cwd=user,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "was imported instead of comix_embed" not in proc.stdout + proc.stderr
    listed = [ln for ln in (corpus / "list.txt").read_text().splitlines() if ln.strip()]
    assert open_committed(store_path(out)).attrs["committed_rows"] == len(listed)


def test_generic_names_are_not_importable_from_a_neutral_folder(tmp_path: Path) -> None:
    for name in ROLE_FOLDERS:
        proc = subprocess.run(
            [sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode != 0, f"`import {name}` succeeded from a neutral folder"
        assert f"No module named '{name}'" in proc.stderr
    ours = subprocess.run(
        [sys.executable, "-c", "import comix_embed.common.store"], cwd=tmp_path, capture_output=True, text=True
    )
    assert ours.returncode == 0, ours.stderr
