"""The synthetic corpus: deterministic bytes, files that match the DataSpec format, and the CLI."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from comix_embed.common.child import cli_argv
from comix_embed.common.config import MAX_PANELS, TEXT_KEYS
from comix_embed.common.errors import UsageError
from comix_embed.tools.sample import command, text
from comix_embed.tools.sample.corpus import SampleSummary, make_sample, page_jobs, plan_books
from comix_embed.tools.sample.layout import DENSE_AT
from comix_embed.tools.sample.page import CONTAINER, make_page, relative_parts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> SampleSummary:
    return make_sample(tmp_path_factory.mktemp("corpus"), 60, seed=0)


def list_lines(out: Path) -> list[str]:
    return (out / "list.txt").read_text(encoding="utf-8").splitlines()


def load_spec(out: Path, line: str) -> dict:
    return json.loads((out / line.replace("\\", "/")).read_text(encoding="utf-8"))


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_line_has_a_dataspec_and_a_jpeg_of_comic_size(corpus: SampleSummary) -> None:
    lines = list_lines(corpus.out)
    assert len(lines) == 60 == corpus.pages
    assert len(set(lines)) == 60
    for line in lines:
        assert line.startswith(("dataspecs/", "dataspecs\\"))
        spec = load_spec(corpus.out, line)
        assert set(spec) == {"page_image_path", "panels"}
        assert "\\" not in spec["page_image_path"]
        with Image.open(corpus.image_root / spec["page_image_path"]) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert not img.info.get("progressive")
            width, height = img.size
        assert 1650 <= width <= 1988 and 2500 <= height <= 3056
        for panel in spec["panels"]:
            x, y, w, h = panel["panel_coords"]
            assert all(isinstance(v, int) for v in (x, y, w, h))
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= width and y + h <= height
            assert set(panel["text"]) == set(TEXT_KEYS)
            for texts in panel["text"].values():
                assert isinstance(texts, list) and all(isinstance(t, str) and t for t in texts)


def test_panels_are_in_reading_order(corpus: SampleSummary) -> None:
    for line in list_lines(corpus.out):
        boxes = [p["panel_coords"] for p in load_spec(corpus.out, line)["panels"]]
        assert boxes == sorted(boxes, key=lambda b: (b[1], b[0]))


def test_layouts_cover_empty_pages_and_the_panel_cap(corpus: SampleSummary) -> None:
    specs = [load_spec(corpus.out, line) for line in list_lines(corpus.out)]
    counts = [len(s["panels"]) for s in specs]
    assert counts[0] == 0  # a book opens with its cover
    assert counts[DENSE_AT] > MAX_PANELS
    assert corpus.zero_panel_pages == counts.count(0) >= 1
    assert corpus.over_cap_pages == sum(c > MAX_PANELS for c in counts) >= 1
    assert corpus.panels == sum(counts)
    assert max(counts) <= 14
    panels = [p for s in specs for p in s["panels"]]
    assert any(not any(p["text"].values()) for p in panels)  # some silent panels
    assert any(p["text"]["narration"] for p in panels) and any(p["text"]["sfx"] for p in panels)
    assert any("\\" in line for line in list_lines(corpus.out))  # some Windows-style lines


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = make_sample(tmp_path / "a", 20, seed=3)  # > 16 pages: drawn by a process pool
    second = make_sample(tmp_path / "b", 20, seed=3)
    files = all_files(first.out)
    assert files == all_files(second.out)
    assert len(files) == 41  # list + 20 DataSpecs + 20 JPEGs

    other = make_sample(tmp_path / "c", 20, seed=4)
    assert other.list_path.read_bytes() != first.list_path.read_bytes()
    first_line, other_line = list_lines(first.out)[1], list_lines(other.out)[1]
    assert load_spec(first.out, first_line) != load_spec(other.out, other_line)


def test_a_page_does_not_depend_on_the_process_that_drew_it(tmp_path: Path) -> None:
    pooled = make_sample(tmp_path / "pool", 20, seed=5)
    books = plan_books(20, 5)
    job = page_jobs(tmp_path / "alone", books, 5, False)[17]
    for kind in ("images", "dataspecs"):
        (tmp_path / "alone" / kind / job.book / CONTAINER).mkdir(parents=True)
    result = make_page(job)
    assert result.line == list_lines(pooled.out)[17]
    for kind, suffix in (("images", ".jpg"), ("dataspecs", ".json")):
        rel = Path(kind, *relative_parts(job, suffix))
        assert (tmp_path / "alone" / rel).read_bytes() == (pooled.out / rel).read_bytes()


def test_windows_paths_are_absolute_and_the_path_map_is_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--pages", "3", "--windows-paths"])
    assert command.run(args) == 0
    out = capsys.readouterr().out
    path_map = f'--path-map "E:\\CalibreComics_extracted={tmp_path.resolve() / "images"}"'
    assert path_map in out
    for line in list_lines(tmp_path):
        image = load_spec(tmp_path, line)["page_image_path"]
        assert image.startswith("E:\\CalibreComics_extracted\\") and "/" not in image
        relative = image.removeprefix("E:\\CalibreComics_extracted\\").replace("\\", "/")
        assert (tmp_path / "images" / relative).is_file()


def test_cli_writes_a_corpus_and_says_how_to_use_it(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run(
        cli_argv("sample", "--out", str(out), "--pages", "5"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 5 pages" in proc.stdout
    assert str(out / "list.txt") in proc.stdout
    assert "comix-embed run --list" in proc.stdout and "--image-root" in proc.stdout
    assert len((out / "list.txt").read_text(encoding="utf-8").splitlines()) == 5


def test_zero_pages_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        make_sample(tmp_path, 0)


def test_corpus_sentences_are_deterministic_varied_ascii() -> None:
    sentences = text.corpus_sentences(2000, seed=1)
    assert sentences == text.corpus_sentences(2000, seed=1)
    assert sentences != text.corpus_sentences(2000, seed=2)
    assert len(sentences) == 2000 and len(set(sentences)) > 500
    assert all(s and s.isascii() for s in sentences)
    assert any(s.isupper() for s in sentences) and any(s.endswith(".") and not s.isupper() for s in sentences)
