"""`comix-embed dataspec`: DataSpecs from COCO panel detections and VLM text, on real files."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from pathlib import Path

import pytest

from comix_embed.common.child import cli_argv
from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.dataspec import read_dataspec
from comix_embed.common.inputs.pages import PageSpec, PanelSpec
from comix_embed.tools.dataspec_builder import command
from comix_embed.tools.dataspec_builder.mapping import derived_rel_paths

REPO = Path(__file__).resolve().parents[1]

PAGE1_TEXT: list[dict[str, list[str]]] = [
    {
        "dialogue": ["Hello.", "hmm", "Hi!"],
        "narration": ["Meanwhile...", "A street.", "Two people meet."],
        "sfx": ["BANG"],
    },
    {"dialogue": ["Look out!", "I think..."], "narration": ["Later that day"], "sfx": ["KRAK"]},
    {"dialogue": ["a", "b"], "narration": [], "sfx": []},
    {"dialogue": [], "narration": [], "sfx": []},
]
PAGE1_BOXES = [[10, 20, 380, 250], [400, 20, 300, 250], [10, 300, 690, 200], [20, 600, 1, 30]]
PAGE2_TEXT = [{"dialogue": ["one"], "narration": [], "sfx": []}, {"dialogue": ["two"], "narration": [], "sfx": []}]


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def ann(image_id: int, bbox: list[float], score: float, category: int = 1) -> dict:
    return {"image_id": image_id, "category_id": category, "bbox": bbox, "score": score}


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """Seven pages, one per outcome; returns the mapping CSV (everything sits beside it)."""
    base = tmp_path / "in"
    for name in ("a/001", "a/002", "b/004", "b/005", "b/006", "b/007"):  # b/003's image is missing
        path = base / "images" / "series" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded here")
    write_json(
        base / "coco.json",
        {
            "images": [
                {"id": i, "file_name": f"{i:03d}.png", "width": 800, "height": 1200} for i in (1, 2, 3, 4, 5, 7)
            ],
            "annotations": [
                ann(1, [400.7, 20.2, 300.9, 250.5], 0.9),  # top right
                ann(1, [10, 300, 690, 200], 0.8),  # middle row
                ann(1, [10.9, 20.2, 380, 250], 0.95),  # top left: same top as top right, so x decides
                ann(1, [5, 5, 50, 50], 0.3),  # below the score
                ann(1, [0, 0, 10, 10], 0.99, category=2),  # a character: never a panel
                ann(1, [20, 600, 0.4, 30], 0.5),  # exactly the score; width truncates to 0, written as 1
                ann(2, [0, 200, 100, 100], 0.9),
                ann(2, [0, 0, 100, 100], 0.9),
                ann(3, [0, 0, 100, 100], 0.1),
                ann(4, [0, 0, 100, 100], 0.9),
                ann(5, [0, 0, 100, 100], 0.9),
                ann(7, [0, 0, 100, 100], 0.2),
                ann(7, [0, 200, 100, 100], 0.49),
            ],
        },
    )
    write_json(
        base / "vlm" / "001.json",
        {
            "panels": [
                {
                    "panel_number": 1,
                    "text": {"dialogue": ["Hello."], "caption": "Meanwhile...", "sfx": ["BANG"], "thought": "hmm"},
                    "speakers": [{"character": "A", "dialogue": "Hi!", "speech_type": "speech"}],
                    "caption": "A street.",
                    "description": "Two people meet.",
                },
                {
                    "text": "  Look out!  ",
                    "speakers": [
                        {"text": "Later that day", "speech_type": "Narrator box"},
                        {"dialogue": "KRAK", "speech_type": "sound effect"},
                        {"dialogue": "I think...", "speech_type": "thought"},
                    ],
                },
                {"text": ["a", "", "b"]},
                {},
            ]
        },
    )
    write_json(
        base / "vlm" / "002.json", {"VLM_panels": [{"text": {"dialogue": [w]}} for w in ("one", "two", "three")]}
    )
    write_json(base / "vlm" / "003.json", {"panels": [{}]})
    (base / "vlm" / "005.json").write_text('{"panels": [', encoding="utf-8")
    write_json(base / "vlm" / "006.json", {"panels": [{}]})
    write_json(base / "vlm" / "007.json", {"panels": [{}]})
    rows = [
        ["images/series/a/001.png", "1", "vlm/001.json", "yes"],
        ["images/series/a/002.png", "2.0", "vlm/002.json", "yes"],
        ["images/series/b/003.png", "3", "vlm/003.json", "no"],
        ["images/series/b/004.png", "4", "vlm/004.json", "yes"],
        ["images/series/b/005.png", "5", "vlm/005.json", "yes"],
        ["images/series/b/006.png", "99", "vlm/006.json", "yes"],
        ["images/series/b/007.png", "7", "vlm/007.json", "yes"],
    ]
    return write_csv(base / "mapping.csv", ["image_path", "predictions_json_id", "vlm_json_path", "image_exists"], rows)


def run_tool(mapping: Path, out: Path, subset: str = "perfect", **options: object) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    argv = [
        "--coco",
        str(mapping.parent / "coco.json"),
        "--mapping",
        str(mapping),
        "--out",
        str(out),
        "--subset",
        subset,
    ]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return command.run(parser.parse_args(argv))


def reasons(report: dict) -> list[tuple[int, str]]:
    return [(d["row"], d["reason"]) for d in report["dropped_pages"]]


def test_perfect_subset(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "dataspecs"
    assert run_tool(inputs, out) == 0

    spec = read_dataspec(out / "a" / "001.json")
    assert spec == PageSpec(
        image="images/series/a/001.png",
        panels=[PanelSpec(box=[float(v) for v in box], text=text) for box, text in zip(PAGE1_BOXES, PAGE1_TEXT)],
    )
    raw = json.loads((out / "a" / "001.json").read_text(encoding="utf-8"))
    assert raw == {
        "page_image_path": "images/series/a/001.png",
        "panels": [{"panel_coords": b, "text": t} for b, t in zip(PAGE1_BOXES, PAGE1_TEXT)],
    }
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json")) == ["a/001.json", "report.json"]
    assert (tmp_path / "dataspecs_perfect_list.txt").read_text(encoding="utf-8") == "dataspecs/a/001.json\n"

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert (report["pages_in_mapping"], report["kept"], report["dropped"], report["panels_written"]) == (7, 1, 6, 4)
    assert report["dropped_by_reason"] == {
        "bad_rel_path": 0,
        "image_missing": 1,
        "no_coco_entry": 1,
        "vlm_missing": 1,
        "vlm_unreadable": 1,
        "no_panels": 1,
        "count_mismatch": 1,
        "duplicate_output": 0,
    }
    assert reasons(report) == [
        (3, "count_mismatch"),
        (4, "image_missing"),
        (5, "vlm_missing"),
        (6, "vlm_unreadable"),
        (7, "no_coco_entry"),
        (8, "no_panels"),
    ]
    details = {d["reason"]: d["detail"] for d in report["dropped_pages"]}
    base = inputs.parent
    assert details["count_mismatch"] == "2 detected panels, 3 VLM panels"
    assert details["image_missing"] == f"image not found: {base / 'images/series/b/003.png'}"
    assert details["vlm_missing"] == f"VLM JSON not found: {base / 'vlm/004.json'}"
    assert details["vlm_unreadable"] == (
        f"VLM JSON {base / 'vlm/005.json'}: invalid JSON at line 1 column 13: Expecting value"
    )
    assert details["no_coco_entry"] == "image id '99' not in the predictions"
    assert details["no_panels"] == "0 panel boxes with score >= 0.5, 1 VLM panels"
    # pages 1 (one box) and 7 (two); page 3's box is not counted: its image is missing
    assert report["boxes_below_min_score"] == 3
    assert report["kept_with_count_mismatch"] == []


def test_all_subset_writes_min_count(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "all"
    list_out = tmp_path / "lists" / "pages.txt"
    assert run_tool(inputs, out, subset="all", list_out=list_out) == 0

    assert read_dataspec(out / "a" / "002.json") == PageSpec(
        image="images/series/a/002.png",
        panels=[
            PanelSpec(box=[0.0, 0.0, 100.0, 100.0], text=PAGE2_TEXT[0]),
            PanelSpec(box=[0.0, 200.0, 100.0, 100.0], text=PAGE2_TEXT[1]),
        ],
    )
    # the list is not above the DataSpecs: absolute lines, in mapping order
    assert list_out.read_text(encoding="utf-8").splitlines() == [
        (out / "a" / "001.json").as_posix(),
        (out / "a" / "002.json").as_posix(),
    ]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert (report["kept"], report["dropped"], report["panels_written"]) == (2, 5, 6)
    assert report["dropped_by_reason"]["count_mismatch"] == 0
    assert report["kept_with_count_mismatch"] == [
        {"row": 3, "image_path": "images/series/a/002.png", "detected": 2, "vlm": 3}
    ]


def test_min_score_option(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "low"
    assert run_tool(inputs, out, min_score=0.1) == 3
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    # page 1 now has 5 boxes for 4 VLM panels; page 7 has 2 boxes for 1
    assert reasons(report)[:1] == [(2, "count_mismatch")]
    assert report["dropped_by_reason"]["count_mismatch"] == 3
    assert report["kept"] == 0


def test_bare_list_rel_paths_and_duplicates(tmp_path: Path) -> None:
    """A detectron-style list, an image_rel_path column, Windows paths, clashing outputs."""
    for name in ("p1.png", "p1.jpg"):
        (tmp_path / name).write_bytes(b"x")
    write_json(
        tmp_path / "coco.json", [ann(10, [5, 5, 20, 20], 0.7), ann(11, [0, 0, 9, 9], 0.7), ann(12, [1, 1, 2, 2], 0.9)]
    )
    write_json(tmp_path / "v.json", {"vlm_panels": [{"description": "d"}]})
    rows = [
        [r"E:\Comics\Book\p1.png", "10", "v.json", r"Book\p1.png"],  # not checkable here: written
        ["p1.png", "11", "v.json", "Book/p1.png"],  # different image, same DataSpec: dropped
        ["p1.jpg", "12", "v.json", "../p1.png"],  # would leave OUT
        ["p1.jpg", "13", "v.json", "report.png"],  # would be the report
        ["p1.jpg", "10", "v.json", "Other/p1.png"],  # the same COCO entry may serve two rows
    ]
    header = ["IMAGE_PATH", "coco_image_id", "vlm_json_path", "image_rel_path"]
    mapping = write_csv(tmp_path / "mapping.csv", header, rows)
    out = tmp_path / "ds"
    assert run_tool(mapping, out) == 0

    assert read_dataspec(out / "Book" / "p1.json") == PageSpec(
        image=r"E:\Comics\Book\p1.png",
        panels=[PanelSpec(box=[5.0, 5.0, 20.0, 20.0], text={"dialogue": [], "narration": ["d"], "sfx": []})],
    )
    assert (tmp_path / "ds_perfect_list.txt").read_text(encoding="utf-8") == "ds/Book/p1.json\nds/Other/p1.json\n"
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert reasons(report) == [(3, "duplicate_output"), (4, "bad_rel_path"), (5, "bad_rel_path")]
    assert [d["detail"] for d in report["dropped_pages"]] == [
        "Book/p1.json already written for row 2",
        "image_rel_path is empty or leaves the output folder: '../p1.png'",
        "report.json is the report's name",
    ]
    assert report["images_not_checked"] == 1


def test_rel_paths_below_common_folder() -> None:
    assert derived_rel_paths([r"E:\c\Book A\01.jpg", r"E:\c\Book B\x\02.jpg"]) == [
        "Book A/01.jpg",
        "Book B/x/02.jpg",
    ]
    assert derived_rel_paths(["/data/one.png"]) == ["one.png"]
    assert derived_rel_paths([r"E:\a\1.png", "/mnt/b/2.png"]) == ["a/1.png", "mnt/b/2.png"]


def test_unusable_inputs_are_usage_errors(inputs: Path, tmp_path: Path) -> None:
    write_csv(tmp_path / "m.csv", ["image_path", "vlm_json_path"], [["a.png", "a.json"]])
    (tmp_path / "coco.json").write_text(json.dumps({"annotations": []}), encoding="utf-8")
    with pytest.raises(UsageError, match=r"m\.csv: missing column 'coco_image_id' \(or 'predictions_json_id'\)"):
        run_tool(tmp_path / "m.csv", tmp_path / "o")
    write_csv(tmp_path / "m.csv", ["image_path", "coco_image_id", "vlm_json_path"], [])
    with pytest.raises(UsageError, match=r"m\.csv has no rows"):
        run_tool(tmp_path / "m.csv", tmp_path / "o")
    (inputs.parent / "coco.json").write_text("{}", encoding="utf-8")
    with pytest.raises(UsageError, match="expected an object with an 'annotations' list"):
        run_tool(inputs, tmp_path / "o")


def test_cli(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli_out"
    command = cli_argv(
        "dataspec", "--coco", str(inputs.parent / "coco.json"), "--mapping", str(inputs), "--out", str(out)
    )
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [
        f"7 pages in {inputs}: 1 kept (4 panels), 6 dropped [subset perfect, min score 0.5]",
        "dropped: image_missing 1, no_coco_entry 1, vlm_missing 1, vlm_unreadable 1, no_panels 1, count_mismatch 1",
        "panel boxes below min score: 3; unusable annotations: 0",
    ]
    assert f"list: {tmp_path / 'cli_out_perfect_list.txt'} (1 lines)" in lines
    assert "dropped pages (6 of 6 shown):" in lines
    assert "  row 3: count_mismatch: images/series/a/002.png: 2 detected panels, 3 VLM panels" in lines

    # nothing kept: the report still comes, the list is empty, the status is 3
    done = subprocess.run(
        command[:-2] + ["--out", str(tmp_path / "none"), "--min-score", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith(f"7 pages in {inputs}: 0 kept (0 panels), 7 dropped")
    assert (tmp_path / "none_perfect_list.txt").read_text(encoding="utf-8") == ""

    absent = command[:5] + ["--coco", str(tmp_path / "absent.json"), "--mapping", str(inputs), "--out", str(out)]
    done = subprocess.run(absent, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == f"error: Predictions file not found: {tmp_path / 'absent.json'}\n"


def test_printed_report_shows_first_20_drops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_json(tmp_path / "coco.json", {"annotations": []})
    rows = [[f"img/{i:02d}.png", str(i), "v.json"] for i in range(25)]
    mapping = write_csv(tmp_path / "mapping.csv", ["image_path", "coco_image_id", "vlm_json_path"], rows)
    assert run_tool(mapping, tmp_path / "out") == 3
    printed = capsys.readouterr().out.splitlines()
    assert "dropped pages (20 of 25 shown):" in printed
    assert printed[-1] == f"  row 21: image_missing: img/19.png: image not found: {tmp_path / 'img/19.png'}"
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert [d["row"] for d in report["dropped_pages"]] == list(range(2, 27))
