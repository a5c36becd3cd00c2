"""The repository's tree as the tests see it: the root package, the role folders it links, their modules.

`comix_embed/` holds a link to each top-level folder it installs (`comix_embed/common ->
../common`, ...): that set of links is the one list of the package's folders. The tests that walk
the tree (import directions, ARCHITECTURE.md, the Dockerfile) read it from here.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "comix_embed"
# The top-level folders installed as sub-packages of comix_embed: the links in comix_embed/.
ROLE_FOLDERS = tuple(sorted(p.name for p in (ROOT / PACKAGE).iterdir() if p.is_symlink()))
# What is never installed, so that no installed module may import it.
NOT_INSTALLED = ("tests", "benchmarks")


def folder_modules(folder: str) -> list[Path]:
    """Every module of one top-level folder; `comix_embed` is its own modules, not the links in it."""
    if folder == PACKAGE:
        return sorted((ROOT / PACKAGE).glob("*.py"))
    return sorted((ROOT / folder).rglob("*.py"))


def module_paths() -> list[str]:
    """Every Python file of the repository that is ours, relative to its root."""
    folders = (PACKAGE, *ROLE_FOLDERS, *NOT_INSTALLED)
    return sorted(str(p.relative_to(ROOT)) for folder in folders for p in folder_modules(folder))


def installed_name(path: Path) -> str:
    """The module name a source file is imported as (common/store/jobs.py -> comix_embed.common.store.jobs)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == PACKAGE else [PACKAGE, *parts])
