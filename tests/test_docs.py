"""Citations of the project's documents name real files and headings, and none names a file outside the repository.

The code, the README and ARCHITECTURE.md cite the contract as `docs/store.md` (the whole document)
or `docs/store.md, "The commit protocol"` (one section, by its exact heading); the documents in
`docs/` cite their own sections as `see "Title"`. A heading renamed or a document moved without
its citations fails here. The project's documents are its contract, so nothing may send a reader
to notes that live outside the repository (the first contract's spec folder, the research notes,
the design note, anything in a shared folder beside the checkout): a clone would not have them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from tests.tree import ROOT, module_paths

# `docs/<name>.md`, optionally followed by `, "Title"`; a title may wrap onto the next line of a
# docstring or a comment
CITATION = re.compile(r'(?<![\w/.-])docs/([\w-]+\.md)(?:,\s*(?:#\s*)?"([^"]+)")?')
# `see "Title"` or `see "Title", "Other title"` inside a document of docs/
SEE = re.compile(r'\bsee\s+("[^"]+"(?:(?:,|\s+and)\s+"[^"]+")*)')
QUOTED = re.compile(r'"([^"]+)"')
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
# a file outside the repository: a document of the first contract's spec folder or of the
# research notes, the design note, anything in the shared folder beside the checkout
OUTSIDE = re.compile(r"(?:^|[^/\w])(?:spec|research)/[\w-]+\.md|(?:^|[^\w-])design\.md\b|\.\./shared/")


def documents() -> list[Path]:
    """The project's own documents: README.md, ARCHITECTURE.md, docs/*.md, benchmarks/RESULTS.md."""
    named = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "benchmarks" / "RESULTS.md"]
    return named + sorted((ROOT / "docs").glob("*.md"))


def python_files() -> list[Path]:
    return [ROOT / p for p in module_paths()]


def one_line(text: str) -> str:
    """A quoted title as it reads: a line break (and a comment's `#`) inside it is one space."""
    return re.sub(r"\s*\n\s*(?:#\s*)?", " ", text).strip()


def headings(path: Path) -> set[str]:
    """Every heading of a Markdown file, fenced code blocks left out (a `# comment` there is none)."""
    found, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            found.add(m.group(1))
    return found


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def broken_citations(files: Iterable[Path], docs_dir: Path) -> list[str]:
    """`file:line: why` for every `docs/<name>.md` that names no file of `docs_dir`, every
    `docs/<name>.md, "Title"` whose title is no heading of it, and, in a document of `docs_dir`,
    every `see "Title"` that is no heading of that document."""
    known: dict[str, set[str]] = {}

    def titles(name: str) -> set[str] | None:
        """The headings of docs/<name>, None when there is no such document."""
        path = docs_dir / name
        if not path.is_file():
            return None
        if name not in known:
            known[name] = headings(path)
        return known[name]

    problems = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        for m in CITATION.finditer(text):
            name, title = m.group(1), m.group(2)
            where = f"{path}:{line_of(text, m.start())}"
            found = titles(name)
            if found is None:
                problems.append(f"{where}: docs/{name} does not exist")
            elif title is not None and one_line(title) not in found:
                problems.append(f'{where}: docs/{name} has no heading "{one_line(title)}"')
        if path.parent == docs_dir and path.suffix == ".md":
            own = headings(path)
            for m in SEE.finditer(text):
                for title in (one_line(t) for t in QUOTED.findall(m.group(1))):
                    if title not in own:
                        problems.append(f'{path}:{line_of(text, m.start())}: no heading "{title}" in {path.name}')
    return problems


def outside_citations(files: Iterable[Path]) -> list[str]:
    """`file:line: text` of every citation of a file outside the repository."""
    found = []
    for path in files:
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if OUTSIDE.search(line):
                found.append(f"{shown}:{n}: {line.strip()}")
    return found


def test_the_contract_documents_exist_with_their_sections() -> None:
    for name in ("store.md", "inputs.md", "model.md"):
        assert len(headings(ROOT / "docs" / name)) >= 5, name
    assert "The commit protocol" in headings(ROOT / "docs" / "store.md")


def test_every_docs_citation_names_a_real_document_and_heading() -> None:
    files = python_files() + documents()
    cited = sum(len(CITATION.findall(p.read_text(encoding="utf-8"))) for p in files)
    assert cited >= 30  # the code cites the contract throughout: a pattern that finds nothing is broken
    assert broken_citations(files, ROOT / "docs") == []


def test_a_wrong_document_or_heading_is_caught(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    name, gone = "guide", "gone"  # the citations below are built, so that this file itself cites nothing wrong
    (docs / f"{name}.md").write_text(
        '# Guide\n\n## Real section\n\nAs said (see "Real section", "Missing section").\n\n'
        "```text\n## not a heading: inside a fence\n```\n",
        encoding="utf-8",
    )
    source = tmp_path / "module.py"
    source.write_text(
        f'"""Cites docs/{name}.md, "Real section", docs/{name}.md, and docs/{name}.md, "Real\n'
        f'section" wrapped; docs/{name}.md, "Wrong section"; docs/{gone}.md;\n'
        f'docs/{name}.md, "not a heading: inside a fence"."""\n'
        f'# docs/{name}.md, "Real\n# section" in a comment, wrapped\n',
        encoding="utf-8",
    )
    problems = broken_citations([source, docs / f"{name}.md"], docs)
    assert problems == [
        f'{source}:2: docs/{name}.md has no heading "Wrong section"',
        f"{source}:2: docs/{gone}.md does not exist",
        f'{source}:3: docs/{name}.md has no heading "not a heading: inside a fence"',
        f'{docs / name}.md:5: no heading "Missing section" in {name}.md',
    ]


def test_nothing_cites_a_file_outside_the_repository() -> None:
    files = [p for p in python_files() + documents() if p.name != "ARCHITECTURE.md"]
    assert outside_citations(files) == []


def test_architecture_cites_nothing_outside_the_repository() -> None:
    assert outside_citations([ROOT / "ARCHITECTURE.md"]) == []


def test_the_outside_pattern_catches_what_it_must(tmp_path: Path) -> None:
    folder = "spec"  # built, so that this file itself cites nothing outside
    path = tmp_path / "x.py"
    lines = [
        f"# as {folder}/store.md says",
        "# see research/" + "comic-analysis.md §1.2",
        "# the desi" + "gn.md note",
        "# ../" + "shared/spec/dataspec.md",
        "# docs/store.md, our own",  # not outside
        "# tools/spec/x.md and a_spec/y.md are paths of ours",  # not outside either
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert [line.split(":", 2)[1] for line in outside_citations([path])] == ["1", "2", "3", "4"]
