"""`comix-embed serve` in a real browser: Debian's Chromium, headless, driven by Playwright.

The server is the real command (waitress, `--port 0`), started on a store made by the pipeline
from the sample corpus; the browser types, clicks and uploads as a person would. Chromium comes
from the Debian package (`apt-get install -y chromium`, which .ci/run does when it is missing);
Playwright's own browser download is never used. Without /usr/bin/chromium these tests skip and
say why. Screenshots go to $COMIX_SCREENSHOTS when set (the README's come from there), else to
the test's temporary folder.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from comix_embed.common.child import cli_argv
from comix_embed.common.model.preprocess import join_text
from comix_embed.common.store.reading import open_committed
from comix_embed.common.store.schema import STATUS_FULL_PAGE, store_path
from tests.typed import StoreArrays

CHROMIUM = Path(os.environ.get("COMIX_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 300  # loading the model and the index on a loaded machine; normally a few seconds
SERVING = re.compile(r"serving \d+ store\(s\) on (http://\S+/)")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"no Chromium at {CHROMIUM}: install Debian's package (apt-get update && apt-get install -y chromium), "
    "as .ci/run does, to run the browser tests",
)


@contextmanager
def serving(stores: list[Path], corpus: Path, checkpoint: Path) -> Iterator[str]:
    """`comix-embed serve` on these stores; yields its URL once it says it is serving."""
    argv = cli_argv(
        "serve",
        *[a for store in stores for a in ("--zarr", str(store))],
        "--checkpoint",
        str(checkpoint),
        "--image-root",
        str(corpus / "images"),
        "--port",
        "0",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMIX_SERVE_")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    found: list[str] = []

    def read() -> None:  # until the promised line; the rest is drained so the server never blocks
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = SERVING.search(line)
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    ready = threading.Event()
    threading.Thread(target=read, daemon=True).start()
    try:
        ready.wait(SERVER_START_S)
        assert found, f"serve did not start (exit {proc.poll()}):\n{''.join(lines)}"
        yield found[0]
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def server(pipeline_store: Path, pipeline_corpus: Path, tiny_checkpoint: Path) -> Iterator[str]:
    """`comix-embed serve` on the pipeline store."""
    with serving([pipeline_store], pipeline_corpus, tiny_checkpoint) as url:
        yield url


@pytest.fixture(scope="module")
def two_stores(pipeline_store: Path, vision_store: Path, pipeline_corpus: Path, tiny_checkpoint: Path) -> Iterator[str]:
    """`comix-embed serve` on the pipeline store and the same corpus embedded vision-only."""
    with serving([pipeline_store, vision_store], pipeline_corpus, tiny_checkpoint) as url:
        yield url


@pytest.fixture(scope="module")
def store_name(server: str) -> str:
    """The pipeline store's name in the application, from the JSON API."""
    with urllib.request.urlopen(f"{server}api/stores", timeout=30) as response:
        return json.load(response)["stores"][0]["name"]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Iterator:
    """A browser tab; when the test is done, it must have raised no script error, had nothing
    refused by the Content-Security-Policy, and requested nothing from another origin than the
    server's (`data:` images aside: the uploaded image's preview)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    errors: list[str] = []
    requested: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    tab.on("request", lambda req: requested.append(req.url) if not req.url.startswith("data:") else None)
    yield tab
    context.close()
    origins = {f"{urlsplit(url).scheme}://{urlsplit(url).netloc}" for url in requested}
    assert errors == [], errors
    assert len(origins) <= 1, origins


@pytest.fixture(scope="module")
def stored(pipeline_store: Path) -> dict[str, np.ndarray]:
    ds = open_committed(store_path(pipeline_store))
    return {name: ds[name].values for name in ("page_id", "status", "page_text", "panel_mask")}


def screenshot_path(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("COMIX_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def assert_png(path: Path, width: int) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == width


def watch(page, origin: str) -> tuple[list[str], list[str]]:
    """The script errors (uncaught, or logged as errors) and the requests to anywhere but `origin`
    of every page this tab loads from now on: lists that fill as they happen."""
    errors: list[str] = []
    foreign: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("request", lambda req: foreign.append(req.url) if not req.url.startswith(origin) else None)
    return errors, foreign


def images_loaded(page) -> list[int]:
    """Natural widths of the result thumbnails, once each has loaded or failed."""
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=result] img')].every(i => i.complete)")
    return page.eval_on_selector_all("[data-testid=result] img", "imgs => imgs.map(i => i.naturalWidth)")


def common_word(texts: list[str]) -> str:
    """The word of 5+ letters that the most texts hold (ties: alphabetical)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update({w.lower() for w in re.findall(r"[A-Za-z]{5,}", text)})
    return min(counts, key=lambda w: (-counts[w], w))


def test_keyword_shows_thumbnails_whose_text_holds_it(
    server: str, page, stored: dict, pipeline_store: Path, tmp_path: Path
) -> None:
    searchable = stored["status"] != 2
    page_texts = [join_text(json.loads(t)) if ok else "" for t, ok in zip(stored["page_text"], searchable)]
    word = common_word(page_texts)
    group = StoreArrays(store_path(pipeline_store))
    panel_texts = [
        join_text(json.loads(str(group["text_content"][row, slot])))
        for row, slot in zip(*np.nonzero(stored["panel_mask"] & searchable[:, None]))
    ]
    for panels, texts in ((False, page_texts), (True, panel_texts)):
        holding = sum(word in t.lower() for t in texts)
        page.goto(server)
        page.select_option("[data-testid=mode]", "keyword")
        page.fill("[data-testid=query]", word)
        page.set_checked("[data-testid=panels]", panels)
        page.click("[data-testid=submit]")
        cards = page.locator("[data-testid=result]")
        cards.first.wait_for()
        assert cards.count() == min(holding, 24) > 1
        for snippet in page.locator("[data-testid=snippet]").all_inner_texts():
            assert word in snippet.lower()
        outlined = [cards.nth(i).get_attribute("data-panel") for i in range(cards.count())]
        assert all(outlined) if panels else not any(outlined)  # the matching panel is named and outlined
        assert all(width > 0 for width in images_loaded(page))  # every thumbnail was served and decoded
    shot = screenshot_path(tmp_path, "serve-search.png")
    page.screenshot(path=str(shot))
    assert_png(shot, 1280)


def test_a_page_shows_as_many_boxes_as_it_has_panels(
    server: str, store_name: str, page, stored: dict, pipeline_corpus: Path, pipeline_store: Path, tmp_path: Path
) -> None:
    counts = stored["panel_mask"].sum(axis=1)
    manifests = StoreArrays(store_path(pipeline_store))["manifest_path"]
    checked = 0
    for row in np.argsort(-counts, kind="stable")[:3]:  # the pages with the most panels
        spec = json.loads((pipeline_corpus / str(manifests[row]).replace("\\", "/")).read_text())
        assert counts[row] == min(len(spec["panels"]), 12)  # what the DataSpec says, up to 12 slots
        page.goto(f"{server}page/{store_name}/{row}")
        page.locator("[data-testid=page-svg]").wait_for()
        assert page.locator("[data-testid=panel-box]").count() == counts[row]
        assert page.locator("[data-testid=panel-row]").count() == counts[row]
        assert page.locator("[data-testid=like-panel]").count() == counts[row]
        assert page.inner_text("[data-testid=page-id]") == stored["page_id"][row]
        loaded = page.evaluate(
            "() => new Promise(done => { const i = new Image(); i.onload = () => done(i.naturalWidth);"
            " i.onerror = () => done(0); i.src = document.querySelector('svg image').getAttribute('href'); })"
        )
        assert loaded > 0
        checked += 1
        if checked == 1:
            shot = screenshot_path(tmp_path, "serve-page.png")
            page.screenshot(path=str(shot))
            assert_png(shot, 1280)
    assert checked == 3


def test_uploading_a_page_without_panels_finds_it_first(
    server: str, page, stored: dict, pipeline_store: Path, pipeline_corpus: Path, tmp_path: Path
) -> None:
    """The upload ranks its own page first, and is shown beside the results."""
    rows = np.flatnonzero(stored["status"] == STATUS_FULL_PAGE)
    assert len(rows), "the sample corpus has pages without panels (covers)"
    group = StoreArrays(store_path(pipeline_store))
    row = int(rows[0])
    image = pipeline_corpus / "images" / str(group["image_path"][row])
    page.goto(server)
    page.select_option("[data-testid=mode]", "image")
    page.set_input_files("[data-testid=image]", str(image))
    page.click("[data-testid=submit]")
    first = page.locator("[data-testid=result]").first
    first.wait_for()
    assert first.get_attribute("data-page-id") == stored["page_id"][row]
    assert float(first.get_attribute("data-score") or 0) >= 0.999
    preview = page.locator("[data-testid=query-preview] img")
    page.wait_for_function("() => document.querySelector('[data-testid=query-preview] img').complete")
    assert preview.evaluate("i => i.naturalWidth") > 0 and preview.is_visible()
    assert image.name in page.inner_text("[data-testid=query-preview]")
    assert all(width > 0 for width in images_loaded(page))
    shot = screenshot_path(tmp_path, "serve-upload.png")
    page.screenshot(path=str(shot))
    assert_png(shot, 1280)


def test_status_lists_the_failed_pages(server: str, page, stored: dict) -> None:
    page.goto(f"{server}status")
    assert page.inner_text("[data-testid=committed]") == str(len(stored["status"]))
    assert page.inner_text("[data-testid=failed]") == str(int((stored["status"] == 2).sum()))
    assert page.locator("[data-testid=failed-row]").count() == int((stored["status"] == 2).sum())
    assert "escapes the image root" in page.inner_text("[data-testid=failed-table]")


TRAVERSALS = [
    "/images/../../etc/passwd",
    "/images/..%2f..%2fetc%2fpasswd",
    "/images/%2e%2e/%2e%2e/etc/passwd",
    "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/images/..%252f..%252fetc%252fpasswd",
    "/images//etc/passwd",
    "/images/%2fetc%2fpasswd",
]


def test_image_paths_out_of_the_roots_are_refused(server: str, page) -> None:
    for path in TRAVERSALS:
        # as the browser sends it (it resolves dot segments itself) ...
        response = page.goto(server.rstrip("/") + path)
        assert response is not None and response.status in (403, 404), path
        assert "root:x:0:0" not in page.content()
        # ... and exactly as written, on the wire
        parts = urlsplit(server)
        assert parts.hostname is not None
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("GET", path)
        raw = conn.getresponse()
        body = raw.read()
        conn.close()
        assert raw.status in (403, 404) and b"root:x:0:0" not in body, (path, raw.status)
        if "%25" not in path:  # a double-encoded path names a literal `%2f` file: merely not found
            assert raw.status == 403, (path, raw.status, body)


def test_the_page_view_draws_the_panel_heatmap_and_attention(
    server: str, store_name: str, page, stored: dict, tmp_path: Path
) -> None:
    """The heatmap has a cell per pair of panels and the chart a bar per panel (and, as for every
    tab, `page` checks that no script error occurred and nothing loaded from another origin)."""
    counts = stored["panel_mask"].sum(axis=1)
    row = int(np.argmax(counts))
    page.goto(f"{server}page/{store_name}/{row}")
    page.locator("[data-testid=heatmap]").wait_for()
    assert page.locator("[data-testid=heat-cell]").count() == counts[row] ** 2
    assert page.locator("[data-testid=attention-bar]").count() == counts[row]
    assert page.locator("[data-testid=heatmap]").bounding_box()["width"] > 100  # drawn, not collapsed
    shot = screenshot_path(tmp_path, "serve-heatmap.png")
    page.locator("[data-testid=heatmap]").screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_filters_narrow_the_results_and_keep_their_values(server: str, page, stored: dict) -> None:
    """Filters typed into the form narrow the search; the form keeps them; the next page of an
    `id` listing keeps them too."""
    failed = [str(p) for p, s in zip(stored["page_id"], stored["status"]) if s == 2]
    page.goto(server)
    page.select_option("[data-testid=mode]", "id")
    page.fill("[data-testid=query]", "/")
    page.fill("input[name=k]", "2")
    page.select_option("[data-testid=filter-status]", "failed")
    page.click("[data-testid=submit]")
    page.locator("[data-testid=filtered]").wait_for()
    assert page.inner_text("[data-testid=filtered-pages]") == str(len(failed))
    assert page.input_value("[data-testid=filter-status]") == "failed"
    shown = page.locator("[data-testid=result]").evaluate_all("cards => cards.map(c => c.dataset.pageId)")
    page.click("[data-testid=next]")
    page.locator("[data-testid=filtered]").wait_for()
    shown += page.locator("[data-testid=result]").evaluate_all("cards => cards.map(c => c.dataset.pageId)")
    assert page.input_value("[data-testid=filter-status]") == "failed"
    assert shown == failed[:4]
    target = next(str(p) for p, s in zip(stored["page_id"], stored["status"]) if s != 2)
    folder = target.rsplit("/", 2)[-2]
    page.goto(server)
    page.select_option("[data-testid=mode]", "like")
    page.fill("[data-testid=query]", target)
    page.fill("[data-testid=filter-id_contains]", folder)
    page.click("[data-testid=submit]")
    page.locator("[data-testid=result]").first.wait_for()
    ids = page.locator("[data-testid=result]").evaluate_all("cards => cards.map(c => c.dataset.pageId)")
    expected = [str(p) for p, s in zip(stored["page_id"], stored["status"]) if s != 2 and folder in str(p)]
    assert ids[0] == target and sorted(ids) == sorted(expected[:24])
    assert page.input_value("[data-testid=filter-id_contains]") == folder


def test_side_by_side_shows_the_page_in_both_stores(two_stores: str, page, stored: dict, tmp_path: Path) -> None:
    """From a page's view to its comparison: two columns, each led by the page itself."""
    with urllib.request.urlopen(f"{two_stores}api/stores", timeout=30) as response:
        names = [s["name"] for s in json.load(response)["stores"]]
    row = int(np.flatnonzero(stored["status"] != 2)[0])
    page.goto(f"{two_stores}page/{names[0]}/{row}")
    page.click("[data-testid=compare-link]")
    page.locator("[data-testid=side-by-side]").wait_for()
    columns = page.locator("[data-testid=side-by-side] [data-testid=answer]")
    assert columns.evaluate_all("cols => cols.map(c => c.dataset.store)") == names
    for i in range(2):
        first = columns.nth(i).locator("[data-testid=result]").first
        assert first.get_attribute("data-page-id") == stored["page_id"][row]
    boxes = [columns.nth(i).bounding_box() for i in range(2)]
    assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"]  # side by side, not one under the other
    assert all(width > 0 for width in images_loaded(page))
    shot = screenshot_path(tmp_path, "serve-side-by-side.png")
    page.screenshot(path=str(shot))
    assert_png(shot, 1280)
