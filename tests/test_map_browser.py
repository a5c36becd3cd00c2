"""The map in a real browser: Debian's Chromium, headless, driven by Playwright, as in test_serve_browser.py.

The server is the real command (`comix-embed serve`) on a copy of the pipeline store with its map
made by `comix-embed map`; the browser zooms and clicks as a person would, and every page it loads
has no script error and loads nothing from another origin. For a map of dots (more pages in view
than are drawn as thumbnails) the application serves a synthetic store of test_map.py, its pages
gathered around one point per series, through werkzeug's server in this process (the command
would want a model the synthetic store was not made by; the map needs none). Screenshots go to
$COMIX_SCREENSHOTS when set (the README's docs/serve-map*.png come from there), else to the
test's temporary folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from werkzeug.serving import make_server

from comix_embed.cli import main
from comix_embed.common.store.schema import store_path
from comix_embed.tools.map.storage import map_dir, read_arrays, read_meta
from tests.object_store import serving_in_thread
from tests.test_map import SERIES, Store, client_for
from tests.test_serve_browser import assert_png, browser, page, pytestmark, screenshot_path, serving, watch
from tests.typed import StoreArrays

__all__ = ["browser", "page", "pytestmark"]  # fixtures and the skip without Chromium, shared


@pytest.fixture(scope="module")
def mapped(pipeline_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the pipeline store (others search it unchanged), with its map beside it."""
    out = tmp_path_factory.mktemp("mapped") / "comics"
    shutil.copytree(pipeline_store, out)
    assert main(["map", "--zarr", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def server(mapped: Path, pipeline_corpus: Path, tiny_checkpoint: Path) -> Iterator[str]:
    with serving([mapped], pipeline_corpus, tiny_checkpoint) as url:
        yield url


def drawn(page) -> int:
    """How many views the map has drawn so far (map.js counts them on the SVG)."""
    return int(page.get_attribute("[data-testid=map-svg]", "data-drawn") or 0)


def view_box(page) -> list[float]:
    """x, y, width, height of the map's view, in map units."""
    return [float(v) for v in (page.get_attribute("[data-testid=map-svg]", "viewBox") or "").split()]


def after_drawing(page, before: int) -> None:
    page.wait_for_function(f"() => Number(document.querySelector('[data-testid=map-svg]').dataset.drawn) > {before}")


def test_a_filter_typed_on_the_map_greys_out_the_other_pages(server: str, page, mapped: Path) -> None:
    """The map's filter form: the page whose id holds the text typed stays as it was, every other
    one is greyed out, the form keeps the value, and a click on that page still opens it."""
    errors, foreign = watch(page, server)
    store = store_path(mapped)
    meta = read_meta(map_dir(store))
    assert meta is not None
    placed = np.flatnonzero(np.isfinite(read_arrays(map_dir(store), meta).x))
    ids = StoreArrays(store)["page_id"]
    wanted = str(ids[int(placed[0])])
    outside = sorted(int(r) for r in placed if wanted.lower() not in str(ids[int(r)]).lower())
    assert outside and len(outside) < len(placed)
    page.goto(f"{server}map/{mapped.name}")
    after_drawing(page, 0)
    page.fill("[data-testid=filter-id_contains]", wanted)
    page.click("[data-testid=map-filter-submit]")
    after_drawing(page, 0)
    assert page.input_value("[data-testid=filter-id_contains]") == wanted
    greyed = page.eval_on_selector_all("a.outside[data-testid=map-point]", "all => all.map(a => Number(a.dataset.row))")
    assert sorted(greyed) == outside
    page.locator("[data-testid=legend-outside]").wait_for()
    row = int(placed[0])
    page.click(f"[data-testid=map-point][data-row='{row}']")
    page.wait_for_url(f"{server}page/{mapped.name}/{row}")
    assert errors == [] and foreign == []


def test_the_map_zooms_and_a_click_opens_the_page(server: str, page, mapped: Path, tmp_path: Path) -> None:
    errors, foreign = watch(page, server)
    store = store_path(mapped)
    meta = read_meta(map_dir(store))
    assert meta is not None
    arrays = read_arrays(map_dir(store), meta)
    placed = np.flatnonzero(np.isfinite(arrays.x))
    name = mapped.name
    page.goto(f"{server}map/{name}")
    after_drawing(page, 0)
    points = page.locator("[data-testid=map-point]")
    # a small store: every placed page is drawn, as a thumbnail that loaded
    assert sorted(int(points.nth(i).get_attribute("data-row") or -1) for i in range(points.count())) == placed.tolist()
    assert page.get_attribute("[data-testid=map-svg]", "data-mode") == "thumbnails"
    page.wait_for_function("() => [...document.querySelectorAll('svg.map image')].every(i => i.dataset.loaded)")
    assert set(page.eval_on_selector_all("svg.map image", "all => all.map(i => i.dataset.loaded)")) == {"true"}
    assert page.locator("[data-testid=map-legend] li").count() >= 1
    shot = screenshot_path(tmp_path, "serve-map.png")
    page.screenshot(path=str(shot))
    assert_png(shot, 1280)
    # the buttons: in, then out again, to the same view
    start = view_box(page)
    before = drawn(page)
    page.click("[data-testid=zoom-in]")
    after_drawing(page, before)
    zoomed = view_box(page)
    assert zoomed[2] == pytest.approx(start[2] / 2) and zoomed[3] == pytest.approx(start[3] / 2)
    before = drawn(page)
    page.click("[data-testid=zoom-out]")
    after_drawing(page, before)
    assert view_box(page) == pytest.approx(start)
    # the wheel, twice, over a page: the map zooms in around the pointer, so that page stays under it
    row = int(points.first.get_attribute("data-row") or -1)
    target = page.locator(f"[data-testid=map-point][data-row='{row}']")
    for _ in range(2):
        spot = target.bounding_box()
        assert spot is not None
        before = drawn(page)
        page.mouse.move(spot["x"] + spot["width"] / 2, spot["y"] + spot["height"] / 2)
        page.mouse.wheel(0, -300)
        after_drawing(page, before)
    assert view_box(page)[2] < start[2] / 2
    assert 0 < points.count() <= len(placed)
    target.click()
    page.wait_for_url(f"{server}page/{name}/{row}")
    ids = StoreArrays(store)["page_id"]
    assert page.inner_text("[data-testid=page-id]") == ids[row]
    assert errors == [] and foreign == []


def test_a_drag_moves_the_map_and_opens_nothing(server: str, page, mapped: Path) -> None:
    errors, foreign = watch(page, server)
    page.goto(f"{server}map/{mapped.name}")
    after_drawing(page, 0)
    start = view_box(page)
    point = page.locator("[data-testid=map-point]").first.bounding_box()
    assert point is not None
    x, y = point["x"] + point["width"] / 2, point["y"] + point["height"] / 2
    before = drawn(page)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y + 60, steps=6)
    page.mouse.up()
    after_drawing(page, before)
    assert page.url == f"{server}map/{mapped.name}"  # the press began on a page: the drag did not open it
    moved = view_box(page)
    assert moved[0] < start[0] and moved[1] < start[1] and moved[2:] == start[2:]  # dragged right and down
    assert errors == [] and foreign == []


@pytest.fixture(scope="module")
def islands(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A synthetic store of 900 pages in 13 series, each series' vectors around a point of its own,
    mapped and served (werkzeug's threaded server, port 0); yields the URL."""
    out = tmp_path_factory.mktemp("islands")
    store = Store(out)
    store.commit(0, 900)
    group = StoreArrays(store.path, mode="r+")
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((SERIES, 16)).astype(np.float32)
    vectors = centres[np.arange(900) % SERIES] + 0.35 * rng.standard_normal((900, 16)).astype(np.float32)
    embedded = group["status"][:900] != 2
    group["page_embeddings"][:900] = np.where(embedded[:, None], vectors, 0.0).astype(np.float32)
    assert main(["map", "--zarr", str(out), "--no-progress"]) == 0
    with serving_in_thread(make_server("127.0.0.1", 0, client_for(out).application, threaded=True)) as url:
        yield url + "/"


def test_a_large_view_is_dots_coloured_by_series(islands: str, page, tmp_path: Path) -> None:
    errors, foreign = watch(page, islands)
    page.goto(f"{islands}map/book")
    after_drawing(page, 0)
    assert page.get_attribute("[data-testid=map-svg]", "data-mode") == "dots"
    dots = page.locator("[data-testid=map-point] circle")
    colours = page.eval_on_selector_all(
        "[data-testid=map-point] circle", "all => all.map(c => c.getAttribute('class'))"
    )
    assert len(colours) == dots.count() > 200 and set(colours) == {f"c{i}" for i in range(11)}  # 10 series + others
    # each series is an island: the dots of one colour lie closer to each other than to the rest
    xy = np.array(
        page.eval_on_selector_all(
            "[data-testid=map-point] circle", "all => all.map(c => [+c.getAttribute('cx'), +c.getAttribute('cy')])"
        )
    )
    own = np.array(colours)
    spread = np.mean([xy[own == c].std(axis=0).mean() for c in set(colours) - {"c10"}])
    assert spread < xy.std(axis=0).mean() / 3
    assert page.locator("[data-testid=map-legend] li").count() == 11
    shot = screenshot_path(tmp_path, "serve-map-dots.png")
    page.screenshot(path=str(shot))
    assert_png(shot, 1280)
    assert errors == [] and foreign == []
