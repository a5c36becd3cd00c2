"""Bad panel entries fail their page, with the reason, through the real pipeline (`comix-embed run`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from comix_embed.common.store.schema import STATUS_FAILED, STATUS_FULL_PAGE, STATUS_OK
from comix_embed.tools.sample.corpus import make_sample
from tests.cli import run_args, run_cli
from tests.harness import store_arrays

GOOD = {"panel_coords": [10, 10, 300, 300], "text": {"dialogue": ["HEY"], "narration": [], "sfx": []}}
# page file name -> (its panel list, what its error must say)
BAD_PAGES = {
    "text_coords": ([GOOD, {"panel_coords": ["a", "b", "c", "d"]}], 'panels[1].panel_coords is ["a", "b", "c", "d"]'),
    "three_numbers": ([{"panel_coords": [1, 2, 3]}], "panels[0].panel_coords is [1, 2, 3]: expected 4 finite numbers"),
    "nan": ([GOOD, {"bbox": [5, float("nan"), 40, 40]}], "panels[1].bbox is [5, NaN, 40, 40]"),
    "zero_size": (
        [{"panel_coords": [10, 10, 0, 50]}],
        "panels[0].panel_coords is [10, 10, 0, 50]: its box has no area",
    ),
    "two_points": ([GOOD, {"polygon": [[0, 0], [90, 90]]}], "panels[1].polygon is [[0, 0], [90, 90]]: a polygon needs"),
    "outside": (
        [GOOD, {"panel_coords": [90000, 10, 300, 300]}],
        "panels[1].panel_coords: box [90000, 10, 300, 300] (x, y, w, h in pixels) lies entirely outside the",
    ),
    "bad_text": ([{**GOOD, "text": {"dialogue": [1, 2]}}], "panels[0].text.dialogue is [1, 2]: expected"),
}


def add_bad_panel_pages(corpus_dir: Path) -> dict[str, str]:
    """Append DataSpecs with unreadable panels (and one that is fine) to the corpus's list.

    Returns page id -> what its error must contain; the fine page (13 panels, the 13th
    unreadable, so dropped) is mapped to "".
    """
    specs = corpus_dir / "dataspecs" / "Bad Panels - Unknown"
    specs.mkdir(parents=True)
    image = next(corpus_dir.glob("images/*/JPG4CBZ/0002.jpg")).relative_to(corpus_dir / "images").as_posix()
    pages = dict(BAD_PAGES)
    past_cap = [{"panel_coords": [10 + 20 * i, 10, 100, 100]} for i in range(12)] + [{"polygon": [1, 2]}]
    pages["past_cap"] = (past_cap, "")
    expected = {}
    with open(corpus_dir / "list.txt", "a", encoding="utf-8") as fh:
        for name, (panels, reason) in pages.items():
            # NaN is written as the JSON token NaN, as Python's json (and the users' tools) write it
            (specs / f"{name}.json").write_text(json.dumps({"page_image_path": image, "panels": panels}))
            fh.write(f"dataspecs/Bad Panels - Unknown/{name}.json\n")
            expected[f"dataspecs/Bad Panels - Unknown/{name}.json"] = reason
    return expected


@pytest.fixture(scope="module")
def bad_panel_run(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> tuple[Path, dict[str, str]]:
    corpus = tmp_path_factory.mktemp("bad_panel_corpus")
    make_sample(corpus, pages=5, seed=7)
    expected = add_bad_panel_pages(corpus)
    out = tmp_path_factory.mktemp("bad_panel_out")
    proc = run_cli(*run_args(tiny_checkpoint, corpus, out, workers=1))
    assert proc.returncode == 3, proc.stdout + proc.stderr  # done, some pages failed
    return out, expected


def test_each_bad_panel_fails_its_page_with_the_reason(bad_panel_run: tuple[Path, dict[str, str]]) -> None:
    out, expected = bad_panel_run
    arrays = store_arrays(out)
    rows = {pid: i for i, pid in enumerate(arrays["page_id"].tolist())}
    for page_id, reason in expected.items():
        row = rows[page_id]
        error = str(arrays["error"][row])
        if reason:
            assert arrays["status"][row] == STATUS_FAILED, (page_id, error)
            assert reason in error, (page_id, error)
            assert page_id.split("/")[-1] in error or "outside" in reason  # DataSpec errors name the file
            assert not np.any(arrays["page_embeddings"][row]), page_id  # failed rows hold zeros
        else:
            assert arrays["status"][row] == STATUS_OK and error == "", (page_id, error)
            assert int(arrays["panel_mask"][row].sum()) == 12


def test_every_other_page_is_committed_as_usual(bad_panel_run: tuple[Path, dict[str, str]]) -> None:
    out, expected = bad_panel_run
    arrays = store_arrays(out)
    others = [i for i, pid in enumerate(arrays["page_id"].tolist()) if pid not in expected]
    assert len(others) == 5
    for row in others:
        assert arrays["status"][row] in (STATUS_OK, STATUS_FULL_PAGE) and arrays["error"][row] == ""
        assert np.linalg.norm(arrays["page_embeddings"][row]) > 1e-6
    failed = int((arrays["status"] == STATUS_FAILED).sum())
    assert failed == len(BAD_PAGES)
