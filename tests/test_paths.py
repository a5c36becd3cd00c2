"""Image confinement, path maps and page metadata."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.paths import ImageResolver, PathRefused, page_metadata, parse_path_map


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"img")
    return path


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    comics = tmp_path / "comics"
    extra = tmp_path / "extra"
    touch(comics / "Judge Dredd Oz - Unknown/JPG4CBZ/0123.jpg")
    touch(comics / "book/p1.png")
    touch(extra / "Another Book/0007.jpg")
    touch(tmp_path / "secret/passwd")
    (comics / "book/escape.png").symlink_to(tmp_path / "secret/passwd")
    (comics / "book/inside.png").symlink_to(comics / "book/p1.png")
    return comics, extra


def test_parse_path_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_path_map("E:\\CalibreComics_extracted=/data/comics") == ("E:\\CalibreComics_extracted", "/data/comics")
    assert parse_path_map(" /mnt/e = /data/a=b ") == ("/mnt/e", "/data/a=b")
    monkeypatch.chdir(tmp_path)
    assert parse_path_map("\\\\nas\\share=local") == ("\\\\nas\\share", str(tmp_path / "local"))
    for bad in ["E:\\x", "=/data", "E:\\x=", "relative\\x=/data"]:
        with pytest.raises(UsageError, match="^Bad --path-map"):
            parse_path_map(bad)


def test_a_batch_with_refused_and_accepted_paths(roots: tuple[Path, Path]) -> None:
    comics, extra = roots
    resolver = ImageResolver(
        [comics, extra],
        [
            parse_path_map(f"E:\\CalibreComics_extracted={comics}"),
            parse_path_map(f"E:\\CalibreComics_extracted\\more={extra}"),
        ],
    )
    batch = [
        "E:\\CalibreComics_extracted\\Judge Dredd Oz - Unknown\\JPG4CBZ\\0123.jpg",
        "e:/calibrecomics_EXTRACTED/book/p1.png",
        "E:\\CalibreComics_extracted\\more\\Another Book\\0007.jpg",
        "../../etc/passwd",
        "book\\..\\..\\secret\\passwd",
        "book/escape.png",
        "book\\inside.png",
        "D:\\other\\y.jpg",
        "/etc/passwd",
        "E:\\CalibreComics_extracted\\..\\Windows\\system.ini",
        f"{comics}/book/./p1.png",
    ]
    located: list[object] = []
    for image in batch:
        try:
            located.append(resolver.locate(image))
        except PathRefused as exc:
            located.append(str(exc))

    assert located == [
        (0, "Judge Dredd Oz - Unknown/JPG4CBZ/0123.jpg"),
        (0, "book/p1.png"),
        (1, "Another Book/0007.jpg"),  # the longer prefix wins
        "image path escapes the image root: ../../etc/passwd",
        "image path escapes the image root: book\\..\\..\\secret\\passwd",
        (0, "book/escape.png"),  # lexically fine; the worker's check catches the link
        (0, "book/inside.png"),
        "image path D:\\other\\y.jpg is outside every image root (add --path-map D:\\other=/local/dir)",
        f"image path /etc/passwd is outside every image root ({comics.as_posix()}, {extra.as_posix()})",
        "image path E:\\CalibreComics_extracted\\..\\Windows\\system.ini (mapped to "
        f"{comics.parent.as_posix()}/Windows/system.ini) is outside every image root "
        f"({comics.as_posix()}, {extra.as_posix()})",
        (0, "book/p1.png"),
    ]

    opened: list[object] = []
    for index, rel in [item for item in located if isinstance(item, tuple)]:
        try:
            opened.append(resolver.open_path(index, rel))
        except PathRefused as exc:
            opened.append(str(exc))
    real_comics = Path(os.path.realpath(comics))
    assert opened == [
        real_comics / "Judge Dredd Oz - Unknown/JPG4CBZ/0123.jpg",
        real_comics / "book/p1.png",
        Path(os.path.realpath(extra)) / "Another Book/0007.jpg",
        "image path book/escape.png resolves outside the image root via a symbolic link: "
        f"{os.path.realpath(comics.parent / 'secret/passwd')}",
        real_comics / "book/p1.png",  # a link that stays inside is fine
        real_comics / "book/p1.png",
    ]


def test_locate_names_the_dataspec(roots: tuple[Path, Path]) -> None:
    resolver = ImageResolver([roots[0]])
    with pytest.raises(PathRefused) as exc:
        resolver.locate("../x.jpg", Path("specs/p.json"))
    assert str(exc.value) == "image path escapes the image root: ../x.jpg (DataSpec specs/p.json)"
    for empty in ["", "  ", "book/..", f"{roots[0]}/book/.."]:
        with pytest.raises(PathRefused, match="^image path (is empty|names no file)"):
            resolver.locate(empty)


def test_open_path_rechecks_what_a_task_says(roots: tuple[Path, Path]) -> None:
    comics, _ = roots
    resolver = ImageResolver([comics])
    for rel in ["../secret/passwd", "/etc/passwd", "C:/x.jpg", ""]:
        with pytest.raises(PathRefused) as exc:
            resolver.open_path(0, rel)
        assert str(exc.value) == f"image path escapes the image root: {rel}"
    with pytest.raises(PathRefused) as exc:
        resolver.open_path(2, "book/p1.png")
    assert str(exc.value) == "image path book/p1.png names image root #2, but this machine has 1 image root(s)"
    with pytest.raises(FileNotFoundError) as missing:
        resolver.open_path(0, "book/missing.png")
    assert str(missing.value) == f"image not found: {comics / 'book/missing.png'}"


def test_symlinked_root_is_followed(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    link = tmp_path / "link-to-comics"
    link.symlink_to(roots[0])
    resolver = ImageResolver([link])
    assert (
        resolver.open_path(*resolver.locate(f"{link}/book/p1.png")) == Path(os.path.realpath(roots[0])) / "book/p1.png"
    )


def test_no_roots_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="No image root"):
        ImageResolver([])


@pytest.mark.parametrize(
    "page_id, expected",
    [
        (
            "perfect_match_training/calibre_dataspec_final/Judge Dredd Oz - Unknown/JPG4CBZ/0123.json",
            ("perfect_match_training", "Judge Dredd Oz", "unknown", "unknown", "0123"),
        ),
        (
            "perfect_match_training/calibre_dataspec_final/comic2/page_001.json",
            ("perfect_match_training", "comic2", "unknown", "unknown", "001"),
        ),
        ("amazon/Saga v02 (2013) 012/working_files/p05.json", ("amazon", "Saga (2013)", "v02", "012", "05")),
        (
            "calibre/Hellboy Vol. 3 - Mike Mignola/images/page12.json",
            ("calibre", "Hellboy - Mike Mignola", "v3", "unknown", "12"),
        ),
        ("calibre/Preacher (1995-2000) #14/0001.json", ("calibre", "Preacher", "1995-2000", "14", "0001")),
        ("humble/Transmetropolitan 1997 Issue 7/x.json", ("humble", "Transmetropolitan", "1997", "7", "unknown")),
        ("Book/0001.json", ("unknown", "Book", "unknown", "unknown", "0001")),
        ("dataspecs/Book/JPG4CBZ/0001.json", ("unknown", "Book", "unknown", "unknown", "0001")),
        ("dataspecs/calibre/Book/JPG4CBZ/0001.json", ("calibre", "Book", "unknown", "unknown", "0001")),
        ("E:/comics/Book/0001.json", ("comics", "Book", "unknown", "unknown", "0001")),
        ("0001.json", ("unknown", "unknown", "unknown", "unknown", "0001")),
        ("JPG4CBZ/images/0001.json", ("unknown", "unknown", "unknown", "unknown", "0001")),
        ("", ("unknown", "unknown", "unknown", "unknown", "unknown")),
        ("a//b\\\\v1/", ("a", "b", "unknown", "unknown", "1")),
    ],
)
def test_page_metadata(page_id: str, expected: tuple[str, ...]) -> None:
    meta = page_metadata(page_id)
    assert tuple(meta[k] for k in ("source", "series", "volume", "issue", "page_num")) == expected
