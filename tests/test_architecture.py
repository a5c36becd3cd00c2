"""ARCHITECTURE.md and the README match the tree: every module listed, every Python path real.

A module added, moved or removed without its line in ARCHITECTURE.md fails here, on purpose: the
document is only worth reading while it is current. The first docstring line of every module is
its one-line job (what ARCHITECTURE.md lists), so each must have one.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re

from tests.tree import NOT_INSTALLED, PACKAGE, ROLE_FOLDERS, ROOT, module_paths

FOLDERS = (PACKAGE, *ROLE_FOLDERS, *NOT_INSTALLED)


def test_architecture_lists_every_module_and_no_other() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", text, re.MULTILINE))
    modules = set(module_paths())
    assert sorted(modules - listed) == [], "modules missing from ARCHITECTURE.md"
    assert sorted(listed - modules) == [], "ARCHITECTURE.md lists modules that do not exist"


def test_every_module_opens_with_a_one_line_job() -> None:
    wrong = []
    for module in module_paths():
        doc = ast.get_docstring(ast.parse((ROOT / module).read_text(encoding="utf-8")))
        lines = (doc or "").splitlines()
        if not lines or not lines[0].endswith((".", "?")) or (len(lines) > 1 and lines[1].strip()):
            wrong.append(f"{module}: {lines[:2]}")
    assert wrong == [], "docstrings whose first line is not one whole sentence:\n" + "\n".join(wrong)


def test_python_paths_in_the_docs_exist() -> None:
    """`from comix_embed.X import Y` and `celery -A comix_embed.X` in README.md and ARCHITECTURE.md."""
    found = 0
    for doc in ("README.md", "ARCHITECTURE.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        for module, names in re.findall(r"from (comix_embed[\w.]*) import ([\w, ]+)", text):
            found += 1
            assert importlib.util.find_spec(module) is not None, f"{doc}: no module {module}"
            imported = importlib.import_module(module)
            for name in (n.strip() for n in names.split(",")):
                assert hasattr(imported, name), f"{doc}: {module}.{name}"
        for module in re.findall(r"celery -A (\S+)", text):
            found += 1
            assert module.startswith("comix_embed.") and importlib.util.find_spec(module), f"{doc}: celery -A {module}"
    assert found >= 2  # the README's reader example and its Flower command


def test_module_files_named_in_the_docs_exist() -> None:
    for doc in ("README.md", "ARCHITECTURE.md", "benchmarks/RESULTS.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        named = set(re.findall(rf"\b((?:{'|'.join(FOLDERS)})/[a-z0-9_/]+\.py)\b", text))  # upper case: a placeholder
        assert named, doc
        assert sorted(p for p in named if not (ROOT / p).is_file()) == [], f"{doc} names files that do not exist"
