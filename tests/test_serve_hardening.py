"""`comix-embed serve` against a hostile client: headers, JSON errors, strict parameters, raster-only images, logins, logs, text direction.

Through Flask's test client, on the store the pipeline made (and on an imported store whose page
ids hold a right-to-left override). Each point of the hardening list has its test here; the
keyword query's bounded cost is checked for its answers here and timed in benchmarks/serve.py.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import re
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from comix_embed.common.inputs.paths import ImageResolver, PathMapper
from comix_embed.common.model.identity import identify
from comix_embed.tools.search.text import MAX_TERMS, TextIndex
from comix_embed.tools.serve.app import ServeState, create_app
from comix_embed.tools.serve.security import CONTENT_SECURITY_POLICY, LOGIN_FAILURES, LoginThrottle
from comix_embed.writer.import_v2.command import import_v2
from tests.test_serve import make_client
from tests.v2_store import V2Page, write_v2_store

RLO = "\u202e"


@pytest.fixture(scope="module")
def client(pipeline_store: Path, tiny_checkpoint: Path, pipeline_corpus: Path) -> FlaskClient:
    return make_client([pipeline_store], tiny_checkpoint, pipeline_corpus / "images")


@pytest.fixture(scope="module")
def store_name(client: FlaskClient) -> str:
    return client.get("/api/stores").get_json()["stores"][0]["name"]


def _guarded(response) -> None:
    csp = response.headers["Content-Security-Policy"]
    assert csp == CONTENT_SECURITY_POLICY and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "script-src 'self';" in csp and "connect-src 'self';" in csp  # the map's script file, fetching its points
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"


def test_every_response_carries_the_security_headers(client: FlaskClient, store_name: str) -> None:
    urls = [
        "/",
        "/status",
        "/search?mode=keyword&q=the",
        f"/page/{store_name}/0",
        f"/thumb/{store_name}/0",
        "/static/style.css",
        f"/map/{store_name}",
        "/static/map.js",
        "/api/stores",
        "/api/status",
        f"/api/map/{store_name}",
        "/nowhere",
        "/api/nowhere",
        "/images/../../etc/passwd",
    ]
    for url in urls:
        _guarded(client.get(url))
    for url in ("/", "/api/stores"):  # no password: nothing says private
        assert "private" not in client.get(url).headers.get("Cache-Control", "")


def test_every_api_route_answers_json_errors_included(client: FlaskClient) -> None:
    cases = [
        (client.get("/api/nowhere"), 404),
        (client.get("/api/page/nostore/0"), 404),
        (client.post("/api/stores"), 405),
        (client.delete("/api/search"), 405),
        (client.get("/api/search?mode=keyword&q=x&k=abc"), 400),
    ]
    for response, code in cases:
        assert response.status_code == code and response.mimetype == "application/json", (code, response.data)
        assert isinstance(response.get_json()["error"], str) and response.get_json()["error"]
    app = client.application
    limit = app.config["MAX_CONTENT_LENGTH"]
    app.config["MAX_CONTENT_LENGTH"] = 1000
    try:
        big = client.post("/api/search", data={"mode": "image", "image": (io.BytesIO(b"x" * 5000), "big.png")})
    finally:
        app.config["MAX_CONTENT_LENGTH"] = limit
    assert big.status_code == 413 and big.mimetype == "application/json" and big.get_json()["error"]


def test_a_missing_page_gets_a_404_page_in_the_sites_style(client: FlaskClient) -> None:
    for url in ("/nowhere", "/page/nostore/0"):
        response = client.get(url)
        assert response.status_code == 404 and response.mimetype == "text/html"
        html = response.get_data(as_text=True)
        assert 'href="/static/style.css"' in html and '<a href="/" data-testid="back-home">' in html


def test_parameters_are_validated_alike_everywhere(client: FlaskClient, store_name: str) -> None:
    for url, name in (
        (f"/thumb/{store_name}/0?size=abc", "size"),
        (f"/thumb/{store_name}/0?panel=abc", "panel"),
        ("/images/x.jpg?root=abc", "root"),
        ("/api/search?mode=keyword&q=x&k=abc", "k"),
        ("/api/search?mode=like&q=x&panel=abc", "panel"),
        ("/api/status?failed_limit=abc", "failed_limit"),
        (f"/thumb/{store_name}/0?size=5", "size"),
    ):
        response = client.get(url)
        assert response.status_code == 400, (url, response.status_code)
        assert f"parameter `{name}`" in response.get_data(as_text=True), url


def test_only_raster_images_are_served_whatever_their_names(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    Image.new("RGB", (30, 20), (9, 9, 9)).save(root / "page.jpg")
    Image.new("RGB", (30, 20), (9, 9, 9)).save(root / "named-wrong.txt", format="PNG")
    Image.new("RGB", (30, 20), (9, 9, 9)).save(root / "page.webp", format="WEBP")
    Image.new("RGB", (30, 20), (9, 9, 9)).save(root / "page.gif", format="GIF")
    Image.new("RGB", (30, 20), (9, 9, 9)).save(root / "page.tif", format="TIFF")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script></svg>'
    (root / "evil.svg").write_bytes(svg)
    (root / "evil.jpg").write_bytes(svg)  # an SVG under a raster name
    (root / "evil.html").write_bytes(b"<html><script>alert(1)</script></html>")
    client = create_app(ServeState(stores={}, resolver=ImageResolver([root]), mapper=PathMapper())).test_client()
    for name, kind in (
        ("page.jpg", "image/jpeg"),
        ("named-wrong.txt", "image/png"),
        ("page.webp", "image/webp"),
        ("page.gif", "image/gif"),
        ("page.tif", "image/tiff"),
    ):
        response = client.get(f"/images/{name}")
        assert response.status_code == 200 and response.mimetype == kind, name
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    for name in ("evil.svg", "evil.jpg", "evil.html"):
        response = client.get(f"/images/{name}")
        assert response.status_code == 403 and b"<script>" not in response.data, name


def test_failed_logins_are_slowed_and_private_pages_say_so(tmp_path: Path) -> None:
    # an hour's window: the failures counted here stay inside it however slow the machine
    throttle = LoginThrottle(window_s=3600.0)
    state = ServeState(
        stores={},
        resolver=ImageResolver([tmp_path]),
        mapper=PathMapper(),
        credentials=("ann", "s3cret"),
        logins=throttle,
    )
    client = create_app(state).test_client()
    right = {"Authorization": "Basic " + base64.b64encode(b"ann:s3cret").decode()}
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ann:guess").decode()}
    ok = client.get("/status", headers=right)
    assert ok.status_code == 200 and "private" in ok.headers["Cache-Control"]
    assert "private" in client.get("/api/stores", headers=right).headers["Cache-Control"]
    assert client.get("/status").status_code == 401  # no credentials at all: not counted
    for _ in range(LOGIN_FAILURES):
        assert client.get("/status", headers=wrong).status_code == 401
    slowed = client.get("/status", headers=right)
    assert slowed.status_code == 429 and int(slowed.headers["Retry-After"]) >= 1
    other = client.get("/status", headers=right, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 200  # another address is not held back


def test_request_values_cannot_forge_log_lines(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    """A line feed never reaches a route (no route matches one); a carriage return, an escape
    sequence or a Unicode line separator in a refused image path would, and are escaped."""
    with caplog.at_level(logging.INFO, logger="comix_embed.tools.serve.views"):
        client.get("/images/../x%0D12:00:00 INFO comix: admin logged in%1B[2J%E2%80%A8.jpg")
    lines = [r.getMessage() for r in caplog.records if "refused /images/" in r.getMessage()]
    assert lines, [r.getMessage() for r in caplog.records]
    assert all(not any(c in line for c in "\n\r\x1b\u2028") for line in lines)
    assert "\\r12:00:00 INFO comix: admin logged in\\x1b[2J\\u2028" in lines[0]


def test_text_from_dataspecs_and_paths_is_isolated(
    tiny_checkpoint: Path, pipeline_corpus: Path, tmp_path: Path
) -> None:
    d = identify(tiny_checkpoint, None, "fused").embedding_dim
    line = f"specs/{RLO}evil gpj.html/0001.json"
    pages = [V2Page(line, panels=1, texts=[{"dialogue": [f"{RLO}olleh"]}]), V2Page("specs/plain/0002.json")]
    v2 = write_v2_store(tmp_path / "v2", pages, d=d)
    import_v2(v2, tmp_path / "ours", None)
    client = make_client([tmp_path / "ours"], tiny_checkpoint, pipeline_corpus / "images")
    name = client.get("/api/stores").get_json()["stores"][0]["name"]
    html = client.get(f"/page/{name}/0").get_data(as_text=True)
    assert f"<bdi>{line}</bdi>" in html and f"<bdi>{RLO}olleh</bdi>" in html
    found = client.get(f"/search?mode=keyword&q=olleh&store={name}").get_data(as_text=True)
    assert "<bdi>olleh</bdi>" in found  # the query, shown as typed, isolated too
    text = re.sub(r"<(?!/?bdi>)[^>]*>", "", found)  # what is shown: tags but the isolates dropped
    assert text.count(RLO) >= 1 and RLO not in text.replace(f"<bdi>{RLO}", "")  # every override isolated


def test_a_long_keyword_query_answers_as_the_plain_count() -> None:
    rng = random.Random(7)
    words = ["night", "harbor", "the", "a", "rain", "don't", "look", "down", "good", "morning", "blam"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 40))) for _ in range(400)]
    texts[5] = "well good morning to you, good morning!"
    index = TextIndex(texts)
    queries = [
        "good morning",
        "ood mor",
        "don't look down",
        " the rain ",
        "rain, the",
        "good!",
        ", good",
        "rain rain rain",
        " ".join(["the"] * 12000),  # 48 kB of one word repeated
        " ".join(rng.choice(words) for _ in range(10000)),  # many distinct words, beyond MAX_TERMS
        "x" * 65536,
        " ".join(f"w{i}" for i in range(MAX_TERMS * 3)),
    ]
    for q in queries:
        want = np.array([t.lower().count(q.lower()) for t in texts])
        assert (index.counts(q) == want).all(), q[:40]


def test_the_panel_field_is_shown_and_can_be_cleared(client: FlaskClient, store_name: str) -> None:
    """ "More like this panel" shows its panel in a visible field (no hidden one that would stick to
    a page id typed next), and the same form without it searches the whole page."""
    page_id = client.get(f"/api/page/{store_name}/0").get_json()["page_id"]
    html = client.get("/search", query_string={"mode": "like", "q": page_id, "panel": "0"}).get_data(as_text=True)
    assert 'type="hidden" name="panel"' not in html
    assert re.search(r'<input type="number" name="panel"[^>]* value="0"', html)
    cleared = client.get("/search", query_string={"mode": "like", "q": page_id, "panel": ""}).get_data(as_text=True)
    assert re.search(r'<input type="number" name="panel"[^>]* value=""', cleared) and "panel 0" not in cleared
