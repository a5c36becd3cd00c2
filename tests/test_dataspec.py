"""DataSpec reading: every real-world form (docs/inputs.md, "DataSpec files"), on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comix_embed.common.inputs.dataspec import DataSpecError, load_dataspec, read_dataspec
from comix_embed.common.inputs.pages import PageSpec, PanelSpec

EMPTY: dict[str, list[str]] = {"dialogue": [], "narration": [], "sfx": []}


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_minimal_form(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "0123.json",
        {
            "page_image_path": "E:\\CalibreComics_extracted\\Judge Dredd Oz - Unknown\\JPG4CBZ\\0123.jpg",
            "page_id": "ignored",
            "panels": [
                {
                    "panel_coords": [50, 92, 322, 318],
                    "text": {"dialogue": ["NO ACTION."], "narration": ["A robot."], "sfx": []},
                },
                {
                    "panel_coords": [385.7, 92, 493, 318],
                    "text": {"dialogue": ["  GO...  "], "narration": [], "sfx": []},
                },
            ],
        },
    )
    spec = read_dataspec(path)
    assert spec == PageSpec(
        image="E:\\CalibreComics_extracted\\Judge Dredd Oz - Unknown\\JPG4CBZ\\0123.jpg",
        panels=[
            PanelSpec(box=[50, 92, 322, 318], text={"dialogue": ["NO ACTION."], "narration": ["A robot."], "sfx": []}),
            PanelSpec(box=[385, 92, 493, 318], text={"dialogue": ["GO..."], "narration": [], "sfx": []}),
        ],
    )


def test_list_at_top_level_and_image_path_key(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "p.json",
        [
            {"image_path": "book/p1.jpg", "panels": [{"panel_coords": [1, 2, 3, 4]}]},
            {"image_path": "book/p2.jpg", "panels": []},
        ],
    )
    assert read_dataspec(path) == PageSpec(image="book/p1.jpg", panels=[PanelSpec(box=[1, 2, 3, 4])])


@pytest.mark.parametrize("key", ["image", "IMAGE_PATH"])
def test_other_image_keys(tmp_path: Path, key: str) -> None:
    path = write_json(tmp_path / "p.json", {key: " a/b.png ", "panels": []})
    assert read_dataspec(path).image == "a/b.png"


def test_cp1252_text(tmp_path: Path) -> None:
    page = (
        '{"page_image_path": "caf\u00e9/1.jpg", "panels": [{"panel_coords": [0, 0, 10, 10], '
        '"text": {"dialogue": ["\u201cCaf\u00e9?\u201d she said \u2014 twice."]}}]}'
    )
    path = tmp_path / "p.json"
    path.write_bytes(page.encode("cp1252"))
    spec = read_dataspec(path)
    assert spec.image == "caf\u00e9/1.jpg"
    assert spec.panels[0].text["dialogue"] == ["\u201cCaf\u00e9?\u201d she said \u2014 twice."]


def test_utf8_bom_and_latin1(tmp_path: Path) -> None:
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + '{"image": "\u00e9t\u00e9.jpg"}'.encode("utf-8"))
    assert read_dataspec(bom) == PageSpec(image="\u00e9t\u00e9.jpg")
    # 0x81 is undefined in cp1252, so only latin-1 reads this file
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"image": "x\x81\xe9.jpg"}')
    assert read_dataspec(latin).image == "x\x81\u00e9.jpg"


def test_alternative_panel_keys_and_bbox_forms(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "p.json",
        {
            "page_image_path": "p.jpg",
            "panels": [],  # empty: the next key with panels is used
            "VLM_panels": [
                {"bbox": [0.1, 0.2, 0.5, 0.25]},  # fractions
                {"bbox": [10.9, 20, 300, 400]},  # COCO xywh pixels, never read as xyxy
                {"polygon": [[10, 20], [110, 25], [105, 220], [12, 200]]},
                {"segmentation": [[5, 6, 50, 6, 50, 60, 5, 60]]},  # COCO polygon list
                {"polygon": [0.1, 0.1, 0.9, 0.1, 0.9, 0.5]},  # flat, fractions
                {"box": [1, 2, 30, 40]},
            ],
            "detections": [{"panel_coords": [9, 9, 9, 9]}],
        },
    )
    spec = read_dataspec(path)
    assert [(p.box, p.fraction) for p in spec.panels] == [
        ([0.1, 0.2, 0.5, 0.25], True),
        ([10, 20, 300, 400], False),
        ([10, 20, 100, 200], False),
        ([5, 6, 45, 54], False),
        ([0.1, 0.1, pytest.approx(0.8), 0.4], True),
        ([1, 2, 30, 40], False),
    ]


@pytest.mark.parametrize(
    "key",
    [
        "vlm_panels",
        "panels_vlm",
        "panel_detections",
        "rcnn_panels",
        "panel_boxes",
        "panel_list",
        "detections",
        "boxes",
        "segments",
        "annotations",
    ],
)
def test_each_panel_list_key(tmp_path: Path, key: str) -> None:
    path = write_json(tmp_path / "p.json", {"image": "p.jpg", key: [{"panel_coords": [1, 2, 3, 4]}]})
    assert read_dataspec(path).panels == [PanelSpec(box=[1, 2, 3, 4])]


def test_first_box_key_decides_and_panels_without_box_are_dropped(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "p.json",
        {
            "image": "p.jpg",
            "panels": [
                {"panel_coords": [1, 2, 3, 4], "bbox": [0.1, 0.1, 0.1, 0.1], "polygon": [0, 0, 9, 9]},
                {"text": "no box at all"},
                {"panel_coords": None, "text": "null box"},
                {"bbox": [], "segmentation": []},
                {"panel_coords": None, "bbox": [5, 6, 7, 8]},
            ],
        },
    )
    read = load_dataspec(path)
    assert [(p.box, p.source) for p in read.spec.panels] == [
        ([1, 2, 3, 4], "panels[0].panel_coords"),
        ([5, 6, 7, 8], "panels[4].bbox"),
    ]
    assert read.dropped_panels == 3


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"panel_coords": ["a", "b", "c", "d"]}, 'panel_coords is ["a", "b", "c", "d"]: expected 4 finite numbers'),
        ({"panel_coords": [1, 2, 3]}, "panel_coords is [1, 2, 3]: expected 4 finite numbers"),
        ({"bbox": [1, float("nan"), 3, 4]}, "bbox is [1, NaN, 3, 4]: expected 4 finite numbers"),
        ({"bbox": ["1", 2, 3, 4]}, 'bbox is ["1", 2, 3, 4]: expected 4 finite numbers'),
        ({"box": [1, 2, 30, True]}, "box is [1, 2, 30, true]: expected 4 finite numbers"),
        ({"panel_coords": "10,20,30,40"}, 'panel_coords is "10,20,30,40": expected 4 finite numbers'),
        ({"bbox": [1, 2, -3, 4]}, "bbox is [1, 2, -3, 4]: its box has no area"),
        ({"panel_coords": [10, 20, 30, 0]}, "panel_coords is [10, 20, 30, 0]: its box has no area"),
        ({"panel_coords": [10, 20, 0.5, 40]}, "panel_coords is [10, 20, 0.5, 40]: its box has no area"),
        ({"polygon": [[1, 2], [30, 40]]}, "polygon is [[1, 2], [30, 40]]: a polygon needs at least 3 points"),
        ({"polygon": [1, 2, 3]}, "polygon is [1, 2, 3]: expected x, y pairs of finite numbers"),
        ({"polygon": [[0, 0], [5, 0], [9, 0]]}, "its bounding box [0.0, 0.0, 9.0, 0.0] has no area"),
        ({"segmentation": {"counts": "RLE", "size": [10, 10]}}, "segmentation is {"),
        ({"panel_coords": [1, 2, 3, 4], "text": 7}, "text is 7: expected a string, a list of strings, or a dict"),
        ({"panel_coords": [1, 2, 3, 4], "text": ["a", 3]}, 'text is ["a", 3]: expected a string, a list of strings'),
        ({"panel_coords": [1, 2, 3, 4], "text": {"sfx": {"x": "BOOM"}}}, 'text.sfx is {"x": "BOOM"}: expected'),
        ({"panel_coords": [1, 2, 3, 4], "speakers": ["junk"]}, 'speakers[0] is "junk": expected an object'),
        ({"panel_coords": [1, 2, 3, 4], "speakers": [{"dialogue": 5}]}, "speakers[0].dialogue is 5: expected"),
    ],
)
def test_unreadable_panel_fails_the_page_naming_entry_field_and_value(tmp_path: Path, entry: dict, reason: str) -> None:
    good = {"panel_coords": [0, 0, 50, 50], "text": "fine"}
    path = write_json(tmp_path / "p.json", {"image": "p.jpg", "panels": [good, {"text": "no box"}, entry]})
    with pytest.raises(DataSpecError) as exc:
        load_dataspec(path)
    assert str(exc.value).startswith(f"DataSpec {path}: panels[2].")
    assert reason in str(exc.value)


def test_entry_that_is_not_an_object_fails_the_page(tmp_path: Path) -> None:
    path = write_json(tmp_path / "p.json", {"image": "p.jpg", "VLM_panels": [{"bbox": [1, 2, 3, 4]}, "oops"]})
    with pytest.raises(DataSpecError, match=r'VLM_panels\[1\] is "oops", not an object'):
        load_dataspec(path)


def test_panels_past_the_cap_are_dropped_and_counted_whatever_they_hold(tmp_path: Path) -> None:
    good = [{"panel_coords": [i, i, 10, 10], "text": f"p{i}"} for i in range(12)]
    bad = [{"panel_coords": ["a", "b", "c", "d"]}, {"polygon": [1, 2]}, "junk", {"panel_coords": [1, 1, 5, 5]}]
    path = write_json(tmp_path / "p.json", {"image": "p.jpg", "panels": [*good, {"text": "no box"}, *bad]})
    read = load_dataspec(path)
    assert len(read.spec.panels) == 13  # the 13th readable one is cut when the page is embedded
    assert read.dropped_panels == 4  # no box, then the 3 unreadable ones past the cap


def test_text_forms(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "p.json",
        {
            "image": "p.jpg",
            "panels": [
                {
                    "panel_coords": [0, 0, 1, 1],
                    "text": {
                        "dialogue": "Hi",
                        "caption": ["Meanwhile"],
                        "narration": [" Later ", None, ""],
                        "sfx": ["BOOM"],
                        "ocr": ["EXIT"],
                    },
                },
                {"panel_coords": [0, 0, 1, 1], "text": ["one", "two", None]},
                {"panel_coords": [0, 0, 1, 1], "text": " plain "},
                {"panel_coords": [0, 0, 1, 1], "text": None},
            ],
        },
    )
    assert [p.text for p in read_dataspec(path).panels] == [
        {"dialogue": ["Hi", "EXIT"], "narration": ["Meanwhile", "Later", ""], "sfx": ["BOOM"]},
        {"dialogue": ["one", "two"], "narration": [], "sfx": []},
        {"dialogue": ["plain"], "narration": [], "sfx": []},
        EMPTY,
    ]


def test_speakers(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "p.json",
        {
            "image": "p.jpg",
            "panels": [
                {
                    "panel_coords": [0, 0, 1, 1],
                    "text": {"dialogue": ["first"]},
                    "speakers": [
                        {"character": "A", "dialogue": "I think", "speech_type": "thought"},
                        {"text": "Long ago", "speech_type": "Narration"},
                        {"dialogue": "Later that day", "speech_type": "caption box"},
                        {"dialogue": "Says the narrator", "speech_type": "narrator"},
                        {"dialogue": "KRAK", "speech_type": "sound effect"},
                        {"dialogue": "BLAM", "speech_type": "SFX"},
                        {"dialogue": "Boing", "speech_type": "onomatopoeia"},
                        {"dialogue": "Whoosh", "speech_type": "effect"},
                        {"dialogue": "Hey", "speech_type": None},
                        {"speech_type": "speech"},
                    ],
                },
            ],
        },
    )
    assert read_dataspec(path).panels[0].text == {
        "dialogue": ["first", "I think", "Hey"],
        "narration": ["Long ago", "Later that day", "Says the narrator"],
        "sfx": ["KRAK", "BLAM", "Boing", "Whoosh"],
    }


def test_characters_and_faces(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "p.json",
        {
            "image": "p.jpg",
            "panels": [
                {
                    "panel_coords": [0, 0, 100, 100],
                    "characters": [{"bbox": [10, 20, 30, 40]}, {"box": [1.5, 2, 3, 4]}, {"bbox": [1, 2]}, "x"],
                },
                {"panel_coords": [0, 0, 100, 100], "characters": [], "faces": [{"bbox": [5, 5, 5, 5]}]},
                {"panel_coords": [0, 0, 100, 100], "character_coords": [[1, 2, 3, 4]]},
            ],
        },
    )
    assert [p.characters for p in read_dataspec(path).panels] == [
        [[10.0, 20.0, 30.0, 40.0], [1.5, 2.0, 3.0, 4.0]],
        [[5.0, 5.0, 5.0, 5.0]],
        [],
    ]


def test_round_trips_through_json(tmp_path: Path) -> None:
    path = write_json(tmp_path / "p.json", {"image": "p.jpg", "panels": [{"bbox": [0.1, 0.1, 0.2, 0.2]}]})
    spec = read_dataspec(path)
    assert PageSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_errors_name_the_file_and_reason(tmp_path: Path) -> None:
    no_image = write_json(tmp_path / "noimg.json", {"page_image_path": "", "panels": []})
    with pytest.raises(DataSpecError) as exc:
        read_dataspec(no_image)
    assert str(exc.value) == (
        f"DataSpec {no_image}: no image path (tried keys page_image_path, image_path, image, IMAGE_PATH)"
    )

    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "image": "a.jpg",\n  "panels": [,]\n}', encoding="utf-8")
    with pytest.raises(DataSpecError) as exc:
        read_dataspec(bad)
    assert str(exc.value) == f"DataSpec {bad}: invalid JSON at line 3 column 14: Expecting value"

    for data, reason in [
        ([], "top-level list is empty"),
        (7, "expected a JSON object (or a list of them), got int"),
        ([3], "expected a JSON object (or a list of them), got int"),
    ]:
        path = write_json(tmp_path / "odd.json", data)
        with pytest.raises(
            DataSpecError, match="^DataSpec .*odd.json: " + reason.replace("(", r"\(").replace(")", r"\)")
        ):
            read_dataspec(path)

    missing = tmp_path / "missing.json"
    with pytest.raises(DataSpecError, match=f"^DataSpec {missing}: cannot read: No such file or directory$"):
        read_dataspec(missing)
