"""Page inputs against hand-computed values (docs/model.md, "Turning a page into inputs")."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from comix_embed.common.inputs.pages import PageSpec, PanelSpec
from comix_embed.common.model.preprocess import (
    PanelOutsideImage,
    composition_features,
    crop_box,
    join_text,
    prepare_page,
    text_to_json,
)


def test_composition_features_without_characters() -> None:
    # the first panel of the example in docs/inputs.md, "DataSpec files": 322 x 318 on a 924 x 1280 page
    feats = composition_features([50, 92, 322, 318], 924, 1280, [])
    assert feats.dtype == np.float32
    expected = [(322 + 1e-6) / (318 + 1e-6), 322 * 318 / (924 * 1280 + 1e-6), 0, 0, 0, 0.5, 0.5]
    np.testing.assert_allclose(feats, expected, rtol=1e-6)
    assert feats[1] == pytest.approx(0.0865767, abs=1e-7)


def test_composition_features_with_characters() -> None:
    # panel 100x200 at (10, 20); characters (cx, cy, cw, ch) = (10, 20, 50, 100) and (60, 120, 20, 40)
    feats = composition_features([10, 20, 100, 200], 1000, 2000, [[10, 20, 50, 100], [60, 120, 20, 40]])
    shots = [50 * 100 / 20000, 20 * 40 / 20000]
    cx = [(10 + 25 - 10) / 100, (60 + 10 - 10) / 100]
    cy = [(20 + 50 - 20) / 200, (120 + 20 - 20) / 200]
    expected = [0.5, 20000 / 2_000_000, 2.0, float(np.mean(shots)), max(shots), float(np.mean(cx)), float(np.mean(cy))]
    np.testing.assert_allclose(feats, expected, rtol=1e-5)


def test_text_joining_order_and_empties() -> None:
    text = {"sfx": ["BOOM"], "dialogue": ["  Hi there ", ""], "narration": ["Later...", "   "]}
    assert join_text(text) == "Hi there | Later... | BOOM"
    assert join_text({"dialogue": [], "narration": [], "sfx": []}) == ""
    assert text_to_json(text) == '{"dialogue": ["  Hi there ", ""], "narration": ["Later...", "   "], "sfx": ["BOOM"]}'


@pytest.mark.parametrize(
    "box, expected",
    [
        ([10, 20, 30, 40], (10, 20, 40, 60)),  # inside
        ([-5, -7, 30, 40], (0, 0, 30, 40)),  # negative origin clamped; w/h not shifted
        ([90, 190, 50, 50], (90, 190, 100, 200)),  # clipped at the right and bottom edges
        ([150, 250, 10, 10], (99, 199, 100, 200)),  # origin beyond the page: one pixel at the edge
        ([10.9, 20.9, 0, -3], (10, 20, 11, 21)),  # int() truncation, w/h at least 1
    ],
)
def test_crop_clamping(box: list[float], expected: tuple[int, int, int, int]) -> None:
    assert crop_box(box, 100, 200) == expected


def _jpeg(width: int, height: int, orientation: int | None = None) -> bytes:
    img = Image.new("RGB", (width, height), (200, 30, 30))
    img.paste((10, 200, 10), (0, 0, width // 2, height // 2))
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_crop_is_resized_without_normalisation() -> None:
    spec = PageSpec(image="p.jpg", panels=[PanelSpec(box=[0, 0, 50, 40]), PanelSpec(box=[50, 40, 50, 40])])
    page = prepare_page(spec, _jpeg(100, 80), "p.jpg")
    assert page.crops.shape == (2, 224, 224, 3) and page.crops.dtype == np.uint8
    # top-left quadrant is green, bottom-right red: the crops keep the raw colours (no mean/std)
    assert page.crops[0, 112, 112, 1] > 180 and page.crops[1, 112, 112, 0] > 180
    np.testing.assert_allclose(page.coords, [[0, 0, 50, 40], [50, 40, 50, 40]])


def test_exif_rotation_swaps_width_and_height() -> None:
    spec = PageSpec(image="p.jpg", panels=[])
    page = prepare_page(spec, _jpeg(100, 80, orientation=6), "p.jpg")
    assert page.size == (80, 100)
    np.testing.assert_allclose(page.coords, [[0, 0, 80, 100]])


def test_fraction_boxes_become_pixels() -> None:
    spec = PageSpec(image="p.jpg", panels=[PanelSpec(box=[0.5, 0.25, 0.5, 0.5], fraction=True)])
    page = prepare_page(spec, _jpeg(100, 80), "p.jpg")
    np.testing.assert_allclose(page.coords, [[50, 20, 50, 40]])
    np.testing.assert_allclose(page.comp[0, :2], [50 / 40, 2000 / 8000], rtol=1e-5)


@pytest.mark.parametrize(
    ("panel", "shown"),
    [
        (
            PanelSpec(box=[100, 10, 20, 20], source="panels[1].panel_coords"),
            "panels[1].panel_coords: box [100, 10, 20, 20] (x, y, w, h in pixels)",
        ),
        (
            PanelSpec(box=[-30, 10, 30, 20], source="panels[1].bbox"),
            "panels[1].bbox: box [-30, 10, 30, 20] (x, y, w, h in pixels)",
        ),
        (
            PanelSpec(box=[10, 80, 20, 5], source="panels[1].polygon"),
            "panels[1].polygon: box [10, 80, 20, 5] (x, y, w, h in pixels)",
        ),
        (
            PanelSpec(box=[1.05, 0.1, 0.05, 0.2], fraction=True, source="panels[1].bbox"),
            "panels[1].bbox: box [1.05, 0.1, 0.05, 0.2] (x, y, w, h in fractions of the page)",
        ),
    ],
)
def test_box_entirely_outside_the_image_fails_the_page(panel: PanelSpec, shown: str) -> None:
    spec = PageSpec(image="p.jpg", panels=[PanelSpec(box=[0, 0, 50, 40]), panel])
    with pytest.raises(PanelOutsideImage) as exc:
        prepare_page(spec, _jpeg(100, 80), "book/p.jpg")
    assert str(exc.value) == f"{shown} lies entirely outside the 100x80 image book/p.jpg"


def test_box_partly_outside_is_clipped_and_kept() -> None:
    spec = PageSpec(
        image="p.jpg", panels=[PanelSpec(box=[90, -10, 40, 30]), PanelSpec(box=[0.9, 0.9, 0.5, 0.5], fraction=True)]
    )
    page = prepare_page(spec, _jpeg(100, 80), "p.jpg")
    np.testing.assert_allclose(page.coords, [[90, -10, 40, 30], [90, 72, 50, 40]])  # as given; the crops are clipped
    assert page.crops.shape == (2, 224, 224, 3)


def test_outside_is_judged_on_the_upright_image() -> None:
    """EXIF orientation 6: the 100x80 file is an 80x100 page, so y = 85 is inside, x = 85 is not."""
    inside = PageSpec(image="p.jpg", panels=[PanelSpec(box=[0, 85, 10, 10])])
    assert prepare_page(inside, _jpeg(100, 80, orientation=6), "p.jpg").size == (80, 100)
    outside = PageSpec(image="p.jpg", panels=[PanelSpec(box=[85, 0, 10, 10])])
    with pytest.raises(PanelOutsideImage, match="80x100 image"):
        prepare_page(outside, _jpeg(100, 80, orientation=6), "p.jpg")


def test_panels_past_the_cap_are_not_checked() -> None:
    panels = [PanelSpec(box=[i, i, 20, 20]) for i in range(12)] + [PanelSpec(box=[500, 500, 10, 10])]
    page = prepare_page(PageSpec(image="p.jpg", panels=panels), _jpeg(100, 80), "p.jpg")
    assert page.crops.shape[0] == 12 and page.dropped_panels == 1
