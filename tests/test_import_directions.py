"""The imports between the package's folders run one way, as ARCHITECTURE.md draws them.

Read from the source with `ast` (every import, also those inside functions), so that an arrow
the wrong way fails here rather than in a review: `common/` is what the roles share and imports
no role and no tool; the tools and the producer read the store without the writer's code; the
workers depend on neither the writer nor the producer; nothing installed imports the test
fixtures or the benchmarks.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.tree import NOT_INSTALLED, PACKAGE, ROLE_FOLDERS, ROOT, folder_modules, installed_name

# Who may not import whom, by top-level folder (`comix_embed` is the root package's own modules:
# the command line, `run`, `demo`). Every role folder linked in comix_embed/ must have its rules.
FORBIDDEN = {
    "common": {"producer", "consumers", "writer", "tools", PACKAGE, *NOT_INSTALLED},
    "tools": {"writer", *NOT_INSTALLED},
    "producer": {"writer", *NOT_INSTALLED},
    "consumers": {"writer", "producer", *NOT_INSTALLED},
    "writer": set(NOT_INSTALLED),
    PACKAGE: set(NOT_INSTALLED),
}


def _folder_of(module: str) -> str | None:
    """The folder an absolute module name lives in (`comix_embed...`, tests, benchmarks), or None for other packages."""
    parts = module.split(".")
    if parts[0] in NOT_INSTALLED:
        return parts[0]
    if parts[0] != PACKAGE:
        return None
    if len(parts) > 1 and parts[1] in ROLE_FOLDERS:
        return parts[1]
    return PACKAGE  # comix_embed, comix_embed.cli, comix_embed.run, ...


def _imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


def _package_of(path: Path) -> str:
    """The installed package name of the folder holding a source file (tools/serve -> comix_embed.tools.serve)."""
    return installed_name(path) if path.name == "__init__.py" else installed_name(path).rpartition(".")[0]


def test_every_folder_has_modules_and_rules() -> None:
    assert set(FORBIDDEN) == {*ROLE_FOLDERS, PACKAGE}, "a folder linked in comix_embed/ without import rules"
    for folder in FORBIDDEN:
        assert folder_modules(folder), f"no module found under {folder}/"


def test_imports_run_one_way() -> None:
    wrong: list[str] = []
    for folder, forbidden in FORBIDDEN.items():
        for path in folder_modules(folder):
            for line, module in _imported_modules(path, _package_of(path)):
                target = _folder_of(module)
                if target in forbidden:
                    wrong.append(
                        f"{path.relative_to(ROOT)}:{line} imports {module} ({folder}/ must not import {target}/)"
                    )
    assert not wrong, "imports the wrong way:\n" + "\n".join(wrong)


def test_the_check_sees_wrong_arrows(tmp_path: Path) -> None:
    """The parser finds absolute, relative and function-local imports (else the check above could not fail)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import comix_embed.writer.commit\n"
        "from ..writer import audit\n"
        "def later():\n"
        "    from comix_embed.run import main\n"
        "from tests.synthetic import make\n"
    )
    found = [_folder_of(m) for _, m in sorted(_imported_modules(probe, "comix_embed.common"))]
    assert found == ["writer", "writer", PACKAGE, "tests"]
