"""List files as users have them: Windows-made, with missing and repeated lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.listfile import Duplicate, ListEntry, read_list


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}", encoding="utf-8")
    return path


@pytest.fixture
def spec_root(tmp_path: Path) -> Path:
    """A DataSpec root with three pages in a calibre-like tree."""
    root = tmp_path / "specs"
    touch(root / "perfect_match_training/calibre_dataspec_final/Judge Dredd Oz - Unknown/JPG4CBZ/0123.json")
    touch(root / "perfect_match_training/calibre_dataspec_final/comic2/page_001.json")
    touch(root / "other/caf\u00e9.json")
    return root


def test_crlf_bom_windows_separators_missing_and_duplicate(tmp_path: Path, spec_root: Path) -> None:
    lines = [
        "perfect_match_training\\calibre_dataspec_final\\Judge Dredd Oz - Unknown\\JPG4CBZ\\0123.json",
        "",
        "# a comment",
        "perfect_match_training/calibre_dataspec_final/comic2/page_001.json",
        "   ",
        "perfect_match_training\\gone\\0001.json",
        "./perfect_match_training/calibre_dataspec_final/comic2/page_001.json",
        '"other\\caf\u00e9.json"',
    ]
    list_path = tmp_path / "list.txt"
    list_path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")

    report = read_list(list_path, dataspec_root=spec_root)

    book = "perfect_match_training/calibre_dataspec_final/Judge Dredd Oz - Unknown/JPG4CBZ/0123.json"
    comic2 = "perfect_match_training/calibre_dataspec_final/comic2/page_001.json"
    gone = spec_root / "perfect_match_training/gone/0001.json"
    assert report.entries == [
        ListEntry(1, lines[0], spec_root / book, book),
        ListEntry(4, lines[3], spec_root / comic2, comic2),
        ListEntry(
            6, lines[5], gone, "perfect_match_training/gone/0001.json", f"DataSpec not found: {gone} (list line 6)"
        ),
        ListEntry(8, lines[7], spec_root / "other/caf\u00e9.json", "other/caf\u00e9.json"),
    ]
    assert report.duplicates == [Duplicate(7, 4, lines[6])]
    assert report.skipped == 4  # two blank lines, one comment, the empty last line
    assert report.missing == 1
    assert report.problems() == [
        f"DataSpec not found: {gone} (list line 6)",
        f"Duplicate DataSpec at list line 7 (same as line 4): {lines[6]}",
    ]
    assert report.summary() == (
        f"4 pages from {list_path}: 1 DataSpec(s) not found, 1 duplicate line(s) dropped, "
        "4 blank/comment line(s) skipped"
    )


def test_relative_lines_without_root_try_cwd_then_list_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lists = tmp_path / "lists"
    touch(lists / "near/a.json")
    work = tmp_path / "work"
    touch(work / "here/b.json")
    touch(lists / "here/b.json")  # the current directory wins over the list's
    list_path = lists / "l.txt"
    list_path.write_text("near/a.json\nhere\\b.json\nnowhere/c.json\n", encoding="utf-8")
    monkeypatch.chdir(work)

    report = read_list(list_path)

    assert [(e.path, e.page_id, e.error) for e in report.entries] == [
        (lists / "near/a.json", "near/a.json", ""),
        (work / "here/b.json", "here/b.json", ""),
        (work / "nowhere/c.json", "nowhere/c.json", f"DataSpec not found: {work / 'nowhere/c.json'} (list line 3)"),
    ]


def test_drive_letter_lines_through_path_maps(tmp_path: Path, spec_root: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    touch(elsewhere / "Another Book/0007.json")
    list_path = tmp_path / "list.txt"
    list_path.write_text(
        "E:\\comics\\dataspecs\\perfect_match_training\\calibre_dataspec_final\\comic2\\page_001.json\n"
        "e:/COMICS/Dataspecs/other/caf\u00e9.json\n"  # case-insensitive on the Windows part
        "E:\\comics\\extra\\Another Book\\0007.json\n"  # longer prefix wins, outside the root
        "F:\\unmapped\\x.json\n"
        f"{spec_root.as_posix()}/perfect_match_training/calibre_dataspec_final/comic2/page_001.json\n",
        encoding="utf-8",
    )
    maps = [
        ("E:\\comics", str(tmp_path / "wrong")),
        ("E:\\comics\\dataspecs", str(spec_root)),
        ("E:\\comics\\extra", str(elsewhere)),
    ]

    report = read_list(list_path, dataspec_root=spec_root, path_maps=maps)

    comic2 = "perfect_match_training/calibre_dataspec_final/comic2/page_001.json"
    assert [(e.line_no, e.path, e.page_id, e.error) for e in report.entries] == [
        (1, spec_root / comic2, comic2, ""),
        (2, spec_root / "other/caf\u00e9.json", "other/caf\u00e9.json", ""),
        (3, elsewhere / "Another Book/0007.json", "E:/comics/extra/Another Book/0007.json", ""),
        (
            4,
            None,
            "F:/unmapped/x.json",
            "DataSpec not found: F:\\unmapped\\x.json (list line 4; no --path-map matches this Windows path)",
        ),
    ]
    # the POSIX absolute line names the same file as line 1
    assert report.duplicates == [Duplicate(5, 1, f"{spec_root.as_posix()}/{comic2}")]


def test_cp1252_list(tmp_path: Path, spec_root: Path) -> None:
    list_path = tmp_path / "list.txt"
    list_path.write_bytes("other\\caf\u00e9.json\r\nother\\\u2019quoted\u2019.json\r\n".encode("cp1252"))
    report = read_list(list_path, dataspec_root=spec_root)
    assert [e.page_id for e in report.entries] == ["other/caf\u00e9.json", "other/\u2019quoted\u2019.json"]
    assert [bool(e.error) for e in report.entries] == [False, True]


def test_empty_and_missing_lists(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\xef\xbb\xbf\r\n  \r\n# only a comment\r\n")
    with pytest.raises(UsageError) as exc:
        read_list(empty)
    assert str(exc.value) == f"No pages to process: {empty} has no DataSpec lines"

    with pytest.raises(UsageError) as exc:
        read_list(tmp_path / "nope.txt")
    assert str(exc.value) == f"List file not found: {tmp_path / 'nope.txt'}"

    with pytest.raises(UsageError) as exc:
        read_list(empty, dataspec_root=tmp_path / "no-root")
    assert str(exc.value) == f"DataSpec root not found: {tmp_path / 'no-root'}"


def test_hundred_thousand_lines(tmp_path: Path, spec_root: Path) -> None:
    """A list at the users' scale reads whole, in order (its speed is a benchmark's business, not a test's)."""
    list_path = tmp_path / "big.txt"
    lines = [f"book{i // 100}\\{i % 100:04d}.json" for i in range(100_000)]
    list_path.write_text("\r\n".join(lines), encoding="utf-8")
    report = read_list(list_path, dataspec_root=spec_root)
    assert len(report.entries) == 100_000 and report.missing == 100_000
    assert report.entries[-1].page_id == "book999/0099.json"
