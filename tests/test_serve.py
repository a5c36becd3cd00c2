"""`comix-embed serve` through Flask's test client, on stores the pipeline made.

The JSON API against `query --json`, one answer per store in its own encoder mode, pages,
status on a growing store, image confinement, thumbnails and their bounded cache, credentials.
The stores: a fused one, and a vision one from the same corpus; the browser tests are in
test_serve_browser.py."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from markupsafe import escape
from PIL import Image

from comix_embed.cli import main
from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.paths import ImageResolver, PathMapper
from comix_embed.common.messages import decode_json, encode_json
from comix_embed.common.model.identity import IDENTITY_KEYS
from comix_embed.common.store.jobs import load_jobs
from comix_embed.common.store.reading import open_committed, read_attrs
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_FULL_PAGE, store_path
from comix_embed.demo import serve_command
from comix_embed.tools.init_checkpoint import init_checkpoint
from comix_embed.tools.search.answers import QueryAnswer
from comix_embed.tools.serve import command
from comix_embed.tools.serve.answers import (
    PAGE_RECORD,
    ApiError,
    RequestFields,
    StatusList,
    StoreAnswer,
    StoreList,
    StoreRefusal,
)
from comix_embed.tools.serve.app import ServeState, create_app
from comix_embed.tools.serve.thumbs import OUTLINE, Thumbnail, ThumbnailCache, render
from comix_embed.writer.commit import StoreWriter
from tests.cli import run_cli
from tests.synthetic import make_result
from tests.test_query import longest_word
from tests.typed import StoreArrays

EXTRA_FIELDS = {"name", "encoder_mode", "elapsed_ms"}


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


def make_client(stores: list[Path], checkpoint: Path, root: Path, *extra: str) -> FlaskClient:
    argv = [a for s in stores for a in ("--zarr", str(s))]
    args = serve_args(*argv, "--checkpoint", str(checkpoint), "--image-root", str(root), *extra)
    return create_app(command.build_state(args)).test_client()


@pytest.fixture(scope="module")
def client(pipeline_store: Path, vision_store: Path, tiny_checkpoint: Path, pipeline_corpus: Path) -> FlaskClient:
    return make_client([pipeline_store, vision_store], tiny_checkpoint, pipeline_corpus / "images")


@pytest.fixture(scope="module")
def names(client: FlaskClient) -> dict[str, str]:
    """Encoder mode -> the store's name in the application."""
    stores = client.get("/api/stores").get_json()["stores"]
    return {s["encoder_mode"]: s["name"] for s in stores}


def query_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["query", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def answers(client: FlaskClient, **fields: Any) -> dict[str, dict[str, Any]]:
    """The API's answer to a GET search, per store name; it must be 200."""
    response = client.get("/api/search", query_string=fields)
    assert response.status_code == 200, response.get_data(as_text=True)
    return {a["name"]: a for a in response.get_json()["stores"]}


def as_query_json(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in EXTRA_FIELDS}


def committed(store: Path) -> dict[str, np.ndarray]:
    ds = open_committed(store_path(store))
    return {name: ds[name].values for name in ("page_id", "status", "page_text", "panel_mask", "error")}


def full_page_image(store: Path, corpus: Path) -> tuple[int, Path]:
    """A row embedded as one full-page panel, and its image (found through the store's record)."""
    group = StoreArrays(store_path(store))
    row = int(np.flatnonzero(committed(store)["status"] == STATUS_FULL_PAGE)[0])
    assert int(group["image_root"][row]) == 0
    return row, corpus / "images" / str(group["image_path"][row])


def test_keyword_answers_as_query_json_in_every_store(
    client: FlaskClient, pipeline_store: Path, vision_store: Path, names: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    pages = committed(pipeline_store)
    word = next(w for w in (longest_word(t) for t in pages["page_text"]) if w).lower()
    got = answers(client, mode="keyword", q=word, k=24)
    assert set(got) == set(names.values())
    for mode, store in (("fused", pipeline_store), ("vision", vision_store)):
        answer = got[names[mode]]
        expected = query_json(capsys, "--zarr", str(store), "--keyword", word, "--top-k", "24")
        assert as_query_json(answer) == expected and expected["results"]
        assert answer["encoder_mode"] == mode and answer["store"] == str(store_path(store))
        assert all(word in r["snippet"].lower() for r in answer["results"])


def test_text_query_is_embedded_per_store_and_refused_where_the_mode_cannot(
    client: FlaskClient,
    pipeline_store: Path,
    tiny_checkpoint: Path,
    names: dict,
    capsys: pytest.CaptureFixture[str],
) -> None:
    got = answers(client, mode="text", q="the giant robot", k=7, panels=1)
    expected = query_json(
        capsys,
        "--zarr",
        str(pipeline_store),
        "--text",
        "the giant robot",
        "--checkpoint",
        str(tiny_checkpoint),
        "--top-k",
        "7",
        "--panels",
    )
    assert as_query_json(got[names["fused"]]) == expected
    refused = got[names["vision"]]
    assert "results" not in refused and "text tower" in refused["error"] and "'vision'" in refused["error"]


def test_uploaded_image_ranks_its_page_first_in_each_stores_own_space(
    client: FlaskClient, pipeline_store: Path, pipeline_corpus: Path, names: dict
) -> None:
    row, image = full_page_image(pipeline_store, pipeline_corpus)
    page_id = str(committed(pipeline_store)["page_id"][row])
    for panels in ("", "1"):
        data = {"mode": "image", "k": "5", "panels": panels, "image": (io.BytesIO(image.read_bytes()), image.name)}
        response = client.post("/api/search", data=data, content_type="multipart/form-data")
        assert response.status_code == 200, response.get_data(as_text=True)
        got = {a["name"]: a for a in response.get_json()["stores"]}
        for mode in ("fused", "vision"):  # the same row in both stores: one list, two runs
            first = got[names[mode]]["results"][0]
            assert (first["page_id"], first["row"]) == (page_id, row)
            assert first["score"] >= 0.999, (mode, first)
            assert first["panel"] == (0 if panels else None)
            assert got[names[mode]]["query"] == image.name and got[names[mode]]["mode"] == "image"


def test_the_uploaded_image_is_shown_beside_its_results(
    client: FlaskClient, pipeline_store: Path, pipeline_corpus: Path
) -> None:
    """The page of an image search shows the upload itself, reduced, as a `data:` JPEG (nothing kept
    on the server); an upload that cannot be decoded shows none, and each store says why."""
    from comix_embed.tools.serve.views import PREVIEW_SIZE

    _, image = full_page_image(pipeline_store, pipeline_corpus)
    data = {"mode": "image", "k": "3", "image": (io.BytesIO(image.read_bytes()), image.name)}
    html = client.post("/search", data=data, content_type="multipart/form-data").get_data(as_text=True)
    found = re.search(r'data-testid="query-preview">\s*<img src="data:image/jpeg;base64,([^"]+)"', html)
    assert found is not None and f"searched with <bdi>{image.name}</bdi>" in html
    preview = Image.open(io.BytesIO(base64.b64decode(found.group(1))))
    original = Image.open(image)
    assert preview.format == "JPEG" and max(preview.size) == min(PREVIEW_SIZE, max(original.size))
    assert abs(preview.size[0] / preview.size[1] - original.size[0] / original.size[1]) < 0.02
    data = {"mode": "image", "image": (io.BytesIO(b"plain text"), "notes.png")}
    html = client.post("/search", data=data, content_type="multipart/form-data").get_data(as_text=True)
    assert "query-preview" not in html and "not a readable image" in html


def test_image_search_needs_an_image_and_refuses_a_non_image(client: FlaskClient, names: dict) -> None:
    response = client.post("/api/search", data={"mode": "image"}, content_type="multipart/form-data")
    assert response.status_code == 400 and "image" in response.get_json()["error"]
    data = {"mode": "image", "image": (io.BytesIO(b"plain text"), "notes.png")}
    response = client.post("/api/search", data=data, content_type="multipart/form-data")
    for answer in response.get_json()["stores"]:
        assert "not a readable image" in answer["error"] and "notes.png" in answer["error"]
    html = client.get("/search", query_string={"mode": "nonsense", "q": "x"})
    assert html.status_code == 400 and "mode must be one of" in html.get_data(as_text=True)


def test_more_like_this_page_and_panel(client: FlaskClient, pipeline_store: Path, names: dict) -> None:
    pages = committed(pipeline_store)
    row = int(np.flatnonzero(pages["panel_mask"].sum(axis=1) >= 3)[0])
    page_id = str(pages["page_id"][row])
    store = names["fused"]
    first = answers(client, mode="like", q=page_id, store=store)[store]["results"][0]
    assert (first["row"], first["score"]) == (row, pytest.approx(1.0, abs=1e-5))
    for slot in (0, 2):
        results = answers(client, mode="like", q=page_id, panel=slot, store=store)[store]["results"]
        assert (results[0]["row"], results[0]["panel"]) == (row, slot)
        assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    padded = int(pages["panel_mask"][row].sum())
    refused = answers(client, mode="like", q=page_id, panel=padded, store=store)[store]
    assert f"no panel {padded}" in refused["error"]
    assert client.get("/api/search", query_string={"mode": "like", "q": page_id, "store": "nope"}).status_code == 400


def test_page_api_shows_every_panel_as_stored(client: FlaskClient, pipeline_store: Path, names: dict) -> None:
    group = StoreArrays(store_path(pipeline_store))
    count = read_attrs(store_path(pipeline_store))["committed_rows"]
    for row in range(count):
        page = client.get(f"/api/page/{names['fused']}/{row}").get_json()
        mask = group["panel_mask"][row]
        assert page["page_id"] == str(group["page_id"][row]) and page["status"] == int(group["status"][row])
        assert [p["slot"] for p in page["panels"]] == np.flatnonzero(mask).tolist()
        for p in page["panels"]:
            assert p["box"] == pytest.approx(group["panel_coordinates"][row, p["slot"]].tolist(), abs=0.01)
            assert p["next"] in [q["slot"] for q in page["panels"]]  # argmax over valid slots
            assert json.loads(str(group["text_content"][row, p["slot"]])) == p["text"]
        if page["status"] == STATUS_FAILED:
            assert not page["panels"] and page["error"]
        else:
            assert sum(p["attention"] for p in page["panels"]) == pytest.approx(1.0, abs=1e-4)
    assert client.get(f"/api/page/{names['fused']}/{count}").status_code == 404
    assert client.get(f"/page/{names['fused']}/{count}").status_code == 404


def test_every_api_answer_is_its_declared_record(
    client: FlaskClient, names: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the API and `query --json` answer decodes into the records declared for it, and encodes
    back to the same JSON: no field missing, none added."""

    def same_after_decoding(raw: bytes | str, kind: Any) -> None:
        assert json.loads(encode_json(decode_json(raw, kind, "answer"))) == json.loads(raw)

    fused = names["fused"]
    same_after_decoding(client.get("/api/stores").get_data(), StoreList)
    same_after_decoding(client.get("/api/status").get_data(), StatusList)
    same_after_decoding(client.get(f"/api/page/{fused}/0").get_data(), PAGE_RECORD)
    same_after_decoding(client.get(f"/api/page/{fused}/100000").get_data(), ApiError)
    page_id = client.get(f"/api/page/{fused}/0").get_json()["page_id"]
    search = client.get("/api/search", query_string={"mode": "like", "q": page_id}).get_json()
    refused = client.get("/api/search", query_string={"mode": "like", "q": page_id, "panel": 99}).get_json()
    assert not any("error" in a for a in search["stores"]) and all("error" in a for a in refused["stores"])
    same_after_decoding(json.dumps(search["request"]), RequestFields)
    for answer in search["stores"]:
        same_after_decoding(json.dumps(answer), StoreAnswer)
    for answer in refused["stores"]:
        same_after_decoding(json.dumps(answer), StoreRefusal)
    assert main(["query", "--zarr", search["stores"][0]["store"], "--like", page_id, "--json"]) == 0
    same_after_decoding(capsys.readouterr().out, QueryAnswer)


def test_status_lists_failed_pages_with_their_reasons(client: FlaskClient, pipeline_store: Path, names: dict) -> None:
    pages = committed(pipeline_store)
    stores = {s["name"]: s for s in client.get("/api/status").get_json()["stores"]}
    status = stores[names["fused"]]
    failed = np.flatnonzero(pages["status"] == STATUS_FAILED)
    assert status["committed_rows"] == status["registered_rows"] == len(pages["status"])
    assert status["failed"] == len(failed) == 3
    assert status["ok"] + status["full_page"] + status["failed"] == status["committed_rows"]
    assert [(f["row"], f["page_id"], f["error"]) for f in status["failed_pages"]] == [
        (int(r), str(pages["page_id"][r]), str(pages["error"][r])) for r in failed
    ]
    assert all(f["error"] for f in status["failed_pages"])
    html = client.get("/status").get_data(as_text=True)
    assert 'http-equiv="refresh"' not in html  # nothing left to commit
    assert all(str(escape(str(pages["error"][r]))) in html for r in failed)


def test_status_and_search_follow_a_store_that_grows(
    interrupted_store: Path, tiny_checkpoint: Path, corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "growing"
    shutil.copytree(interrupted_store, out)
    client = make_client([out], tiny_checkpoint, corpus / "images")
    name = client.get("/api/stores").get_json()["stores"][0]["name"]
    status = client.get("/api/status").get_json()["stores"][0]
    assert (status["committed_rows"], status["registered_rows"]) == (8, 24)  # batches 0, 1 (and 3) of 6
    assert 'http-equiv="refresh"' in client.get("/status").get_data(as_text=True)
    assert client.get(f"/api/page/{name}/8").status_code == 404  # not committed: not shown
    attrs = read_attrs(store_path(out))
    with StoreWriter(out, fsync=False) as writer:  # the job goes on: batch 2 arrives
        writer.commit([make_result(load_jobs(out)[0], 2, {k: attrs[k] for k in IDENTITY_KEYS})])
    status = client.get("/api/status").get_json()["stores"][0]
    assert status["committed_rows"] == 16  # batch 3 was already written: the prefix now ends after it
    assert client.get(f"/api/page/{name}/8").status_code == 200
    # the search index reloads in the background once a search sees more committed rows
    deadline = time.monotonic() + 120
    while client.get("/api/stores").get_json()["stores"][0]["committed_rows"] < 16:
        assert time.monotonic() < deadline, "the search index never reloaded"
        time.sleep(0.1)
    hits = answers(client, mode="keyword", q="line 9.0", k=50)[name]["results"]
    assert [r["row"] for r in hits] == [9]  # synthetic text of row 9, committed after the start


def test_images_are_served_from_the_roots_only(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "book").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (40, 60), (200, 10, 10)).save(root / "book" / "p.jpg")
    (outside / "secret.jpg").write_bytes(b"TOP-SECRET-CONTENT")
    (root / "book" / "link.jpg").symlink_to(outside / "secret.jpg")
    (root / "book" / "notes.txt").write_text("not an image")
    resolver = ImageResolver([root], [("E:\\Comics", str(root))])
    state = ServeState(stores={}, resolver=resolver, mapper=PathMapper([("E:\\Comics", str(root))]))
    client = create_app(state).test_client()
    ok = client.get("/images/book/p.jpg")
    assert ok.status_code == 200 and ok.data == (root / "book" / "p.jpg").read_bytes()
    assert client.get("/images/E:%5CComics%5Cbook%5Cp.jpg").data == ok.data  # a DataSpec path, mapped
    refused = [
        "/images/../../etc/passwd",
        "/images/..%2f..%2fetc%2fpasswd",
        "/images/%2e%2e/%2e%2e/etc/passwd",
        "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/images/book/../../../etc/passwd",
        "/images/book/..%2F..%2F..%2Fetc%2Fpasswd",
        "/images//etc/passwd",
        "/images/%2Fetc%2Fpasswd",
        f"/images/{root}/book/p.jpg",  # absolute, even inside the root: only path maps make them local
        "/images/E:%5COther%5Cp.jpg",  # no map for that prefix
        "/images/book/link.jpg",  # a link out of the root
        "/images/book/notes.txt",  # not an image
        "/images/book/p.jpg?root=3",  # no such root
        "/images/book/p.jpg%00.png",
    ]
    for url in refused:
        response = client.get(url)
        assert response.status_code == 403, (url, response.status_code)
        assert b"TOP-SECRET" not in response.data and b"root:x:0:0" not in response.data
        assert b"outside" not in response.data  # where a link leads is not told
    for url in ("/images/%252e%252e/%252e%252e/etc/passwd", "/images/book/none.jpg"):
        assert client.get(url).status_code == 404  # a literal `%2e%2e` folder, or no file


def test_thumbnail_outlines_the_panel_where_its_box_is(tmp_path: Path) -> None:
    page = Image.new("RGB", (1000, 1600), (255, 255, 255))
    box = [200.0, 400.0, 500.0, 600.0]
    plain = tmp_path / "plain.jpg"
    page.save(plain, quality=95)
    # the same page stored turned a quarter (EXIF orientation 6): boxes are in upright pixels
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    page.transpose(Image.Transpose.ROTATE_90).save(turned, quality=95, exif=exif)
    for path in (plain, turned):
        thumb = render(path.read_bytes(), path.name, 256, box)
        assert thumb.page_size == (1000, 1600)
        img = Image.open(io.BytesIO(thumb.jpeg)).convert("RGB")
        assert img.size == (160, 256)
        s = 256 / 1600
        left, top, bottom = round(box[0] * s), round(box[1] * s), round((box[1] + box[3]) * s)
        edge = np.asarray(img)[(top + bottom) // 2, left]
        assert np.abs(edge.astype(int) - OUTLINE).max() < 60, (path.name, edge)
        inside = np.asarray(img)[(top + bottom) // 2, left + 20]
        assert inside.min() > 230  # white page inside the outline


def test_thumbnail_cache_stays_within_its_bytes(tmp_path: Path) -> None:
    cache = ThumbnailCache(max_bytes=1000)
    made: list[str] = []

    def maker(key: str, size: int):
        def make() -> Thumbnail:
            made.append(key)
            return Thumbnail(b"x" * size, (1, 1))

        return make

    for key in ("a", "b", "c"):
        cache.get(key, maker(key, 300))
    cache.get("a", maker("a", 300))  # a hit: `a` is now the most recently used
    cache.get("d", maker("d", 300))  # over the budget: `b`, the least recently used, goes
    assert made == ["a", "b", "c", "d"] and cache.bytes == 900 and len(cache) == 3
    cache.get("a", maker("a", 300))
    cache.get("b", maker("b", 300))
    assert made == ["a", "b", "c", "d", "b"] and cache.bytes <= 1000
    cache.get("big", maker("big", 5000))  # larger than the whole budget: served, never kept
    assert cache.bytes <= 1000 and made[-1] == "big" and len(cache) == 3


def test_credentials_are_required_beyond_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("COMIX_SERVE_USER", "COMIX_SERVE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    assert command.credentials_for("127.0.0.1") is None and command.credentials_for("::1") is None
    with pytest.raises(UsageError, match="COMIX_SERVE_USER and COMIX_SERVE_PASSWORD"):
        command.credentials_for("0.0.0.0")
    monkeypatch.setenv("COMIX_SERVE_USER", "reader")
    with pytest.raises(UsageError, match="only COMIX_SERVE_USER is set"):
        command.credentials_for("127.0.0.1")
    monkeypatch.setenv("COMIX_SERVE_PASSWORD", "s3cret")
    assert command.credentials_for("0.0.0.0") == ("reader", "s3cret")
    state = ServeState(stores={}, resolver=ImageResolver([tmp_path]), credentials=("reader", "s3cret"))
    client = create_app(state).test_client()
    for path in ("/", "/api/status", "/static/style.css", "/images/x.jpg"):
        denied = client.get(path)
        assert denied.status_code == 401 and "Basic" in denied.headers["WWW-Authenticate"]
        assert client.get(path, auth=("reader", "wrong")).status_code == 401
    assert client.get("/api/status", auth=("reader", "s3cret")).status_code == 200


def test_serve_refuses_before_listening(
    pipeline_store: Path, pipeline_corpus: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMIX_SERVE_")}
    base = ["serve", "--zarr", str(pipeline_store), "--image-root", str(pipeline_corpus / "images")]
    proc = run_cli(*base, "--checkpoint", str(tiny_checkpoint), "--host", "0.0.0.0", env=env)
    assert proc.returncode == 2 and "COMIX_SERVE_USER" in proc.stderr
    other = tmp_path / "other.pt"
    init_checkpoint(other, size="tiny", seed=3)
    with pytest.raises(UsageError, match="did not make this store"):
        command.build_state(serve_args(*base[1:], "--checkpoint", str(other)))


def test_demo_prints_a_serve_command_for_its_store(tmp_path: Path) -> None:
    argv = serve_command(tmp_path / "embeddings", tmp_path / "tiny.pt", tmp_path / "corpus")
    assert argv[0] == "serve"
    args = serve_args(*argv[1:])
    assert args.zarr == [str(tmp_path / "embeddings")] and args.checkpoint == tmp_path / "tiny.pt"
    assert args.image_root == [str(tmp_path / "corpus" / "images")] and args.host == "127.0.0.1"


def test_page_view_shows_panel_similarity_and_attention(client: FlaskClient, pipeline_store: Path, names: dict) -> None:
    """The page view's heatmap holds the cosine similarity of every pair of the page's panel
    embeddings, as stored; the attention chart one bar per panel, as long as its weight."""
    name = names["fused"]
    ds = open_committed(store_path(pipeline_store))
    row = int(np.flatnonzero(ds["panel_mask"].values.sum(axis=1) >= 3)[0])
    html = client.get(f"/page/{name}/{row}").get_data(as_text=True)
    slots = np.flatnonzero(ds["panel_mask"].values[row])
    vectors = ds["panel_embeddings"].values[row][slots].astype(np.float64)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cells = re.findall(r'data-testid="heat-cell" data-i="(\d+)" data-j="(\d+)" data-sim="([-\d.e]+)"', html)
    assert len(cells) == len(slots) ** 2
    position = {int(s): k for k, s in enumerate(slots)}
    for i, j, sim in cells:
        assert abs(float(sim) - unit[position[int(i)]] @ unit[position[int(j)]]) < 1e-4
    bars = re.findall(r'data-testid="attention-bar" data-slot="(\d+)"[^>]* width="([\d.]+)"', html)
    weights = ds["attention_weights"].values[row]
    assert [int(s) for s, _ in bars] == slots.tolist()
    for slot, width in bars:
        assert abs(float(width) - weights[int(slot)] * 78) < 0.01
    detail = client.get(f"/api/page/{name}/{row}").get_json()
    assert len(detail["panel_similarity"]) == len(slots)


def test_panel_boxes_are_drawn_clipped_to_the_page() -> None:
    from comix_embed.tools.serve.views import clipped

    assert clipped([-10.0, 50.0, 100.0, 2000.0], (800, 1200)) == [0.0, 50.0, 90.0, 1150.0]
    assert clipped([700.0, 1100.0, 300.0, 300.0], (800, 1200)) == [700.0, 1100.0, 100.0, 100.0]
    assert clipped([900.0, 10.0, 50.0, 50.0], (800, 1200))[2] == 0.0  # wholly outside: nothing drawn


def test_labels_of_nested_panels_do_not_overlap() -> None:
    """Panels inside panels, sharing corners or all of their box: every label gets a place of its
    own, inside its box where there is room; a lone panel's label stays at its top-left corner."""
    from comix_embed.tools.serve.views import LABEL_H, LABEL_W, label_places

    unit = 10.0
    w, h = LABEL_W * unit, LABEL_H * unit
    boxes = {
        0: [0.0, 0.0, 1000.0, 1000.0],  # the page
        1: [0.0, 0.0, 500.0, 500.0],  # its top-left quarter: same corner
        2: [0.0, 0.0, 500.0, 500.0],  # the same box again
        3: [0.0, 0.0, 100.0, 30.0],  # smaller than a label
        4: [0.0, 0.0, 100.0, 30.0],
        5: [600.0, 600.0, 300.0, 300.0],  # alone
    }
    places = label_places(boxes, unit)
    assert places[0] == (0.0, 0.0) and places[5] == (600.0, 600.0)
    assert places[1] == (500.0 - w, 0.0)  # the quarter's next free corner
    spots = list(places.values())
    for i, (x1, y1) in enumerate(spots):
        for x2, y2 in spots[i + 1 :]:
            assert abs(x1 - x2) >= w or abs(y1 - y2) >= h, places


def test_page_id_fragment_search_lists_every_match_page_by_page(
    client: FlaskClient, pipeline_store: Path, names: dict
) -> None:
    """`mode=id` in the page and the API: every page whose id holds the fragment, `k` at a time,
    with `next` and `previous` links that keep the query."""
    name = names["fused"]
    ids = [str(v) for v in open_committed(store_path(pipeline_store))["page_id"].values]
    want = [r for r, pid in enumerate(ids) if "jpg4cbz/" in pid.lower()]
    got: list[int] = []
    offset = 0
    while True:
        answer = client.get(
            "/api/search", query_string={"mode": "id", "q": "jpg4cbz/", "k": 5, "offset": offset, "store": name}
        ).get_json()["stores"][0]
        assert answer["matches"] == len(want)
        got += [r["row"] for r in answer["results"]]
        if offset + 5 >= len(want):
            break
        offset += 5
    assert got == want
    html = client.get("/search", query_string={"mode": "id", "q": "jpg4cbz/", "k": 5, "store": name}).get_data(
        as_text=True
    )
    assert f'data-testid="matches">{len(want)}<' in html
    link = re.search(r'data-testid="next" href="([^"]+)"', html)
    assert link is not None and "offset=5" in link.group(1) and "mode=id" in link.group(1)
    following = client.get(link.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert 'data-testid="previous"' in following
    assert client.get("/api/search?mode=id&q=x&offset=abc").status_code == 400


def test_filters_narrow_every_store_before_ranking_and_stay_in_the_form(
    client: FlaskClient, pipeline_store: Path, names: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """Filters as query parameters: each store answers as `query` does with the same flags, the
    form keeps them, the `id` pager's links carry them, and a bad one is a 400 naming it."""
    pages = committed(pipeline_store)
    ids = [str(p) for p in pages["page_id"]]
    target = next(p for p, s in zip(ids, pages["status"]) if s != STATUS_FAILED)
    fragment = target.rsplit("/", 2)[-2]  # the page's folder: a few pages share it
    got = answers(client, mode="like", q=target, k=10, id_contains=fragment, status="ok")
    for mode in ("fused", "vision"):
        answer = got[names[mode]]
        assert answer["filter"] == {"id_contains": fragment, "status": "ok"}
        expected = query_json(
            capsys,
            "--zarr",
            str(pipeline_store if mode == "fused" else answer["store"]),
            "--like",
            target,
            "--top-k",
            "10",
            "--id-contains",
            fragment,
            "--status",
            "ok",
        )
        assert as_query_json(answer)["results"] == expected["results"]
        assert all(fragment.lower() in r["page_id"].lower() for r in answer["results"])
        assert answer["filtered_pages"] == sum(
            fragment.lower() in p.lower() and s != STATUS_FAILED for p, s in zip(ids, pages["status"])
        )
    failed = [r for r, s in enumerate(pages["status"]) if s == STATUS_FAILED]
    html = client.get(
        "/search", query_string={"mode": "id", "q": "/", "k": 1, "status": "failed", "store": names["fused"]}
    ).get_data(as_text=True)
    assert f'data-testid="filtered-pages">{len(failed)}<' in html
    assert '<option value="failed" selected>' in html
    link = re.search(r'data-testid="next" href="([^"]+)"', html)
    assert link is not None and "status=failed" in link.group(1)
    following = client.get(link.group(1).replace("&amp;", "&")).get_data(as_text=True)
    rows = [int(r) for r in re.findall(r'data-row="(\d+)"', following)]
    assert rows == failed[1:2]
    html = client.get("/search", query_string={"mode": "keyword", "q": "zzz", "series": "a <b>"}).get_data(as_text=True)
    assert 'name="series" value="a &lt;b&gt;"' in html
    bad = client.get("/api/search", query_string={"mode": "id", "q": "/", "status": "lost"})
    assert bad.status_code == 400 and "filter status must be one of ok, failed" in bad.get_json()["error"]


def test_side_by_side_shows_one_page_in_two_stores(client: FlaskClient, pipeline_store: Path, names: dict) -> None:
    """/compare: the page's nearest pages in each store, each as that store's `like` search answers;
    the page view links to it; a store that does not exist is a 400 naming it."""
    pages = committed(pipeline_store)
    target = next(str(p) for p, s in zip(pages["page_id"], pages["status"]) if s != STATUS_FAILED)
    fused, vision = names["fused"], names["vision"]
    response = client.get("/api/compare", query_string={"page": target, "a": vision, "b": fused, "k": 5})
    assert response.status_code == 200, response.get_data(as_text=True)
    sides = response.get_json()["stores"]
    assert [s["name"] for s in sides] == [vision, fused]
    for side in sides:
        alone = answers(client, mode="like", q=target, k=5, store=side["name"])[side["name"]]
        assert side["results"] == alone["results"] and side["results"][0]["page_id"] == target
    html = client.get("/compare", query_string={"page": target, "a": fused, "b": vision, "k": 5}).get_data(as_text=True)
    columns = re.findall(r'<section class="answer" data-testid="answer" data-store="([^"]+)"', html)
    assert columns == [fused, vision] and html.count('data-testid="result"') == 10
    row = sides[1]["results"][0]["row"]
    page = client.get(f"/page/{fused}/{row}").get_data(as_text=True)
    link = re.search(r'data-testid="compare-link" href="([^"]+)"', page)
    assert link is not None and f"b={vision}" in link.group(1)
    bad = client.get("/api/compare", query_string={"page": target, "b": "nowhere"})
    assert bad.status_code == 400 and "no store named 'nowhere'" in bad.get_json()["error"]
    assert client.get("/compare").status_code == 200


def test_a_page_notes_the_panels_that_were_not_embedded(
    client: FlaskClient, pipeline_store: Path, pipeline_corpus: Path, names: dict
) -> None:
    """A DataSpec with more panels than the 12 slots: the page view says how many were left out
    (the job file's count); a page that lost none says nothing."""
    name = names["fused"]
    manifests = StoreArrays(store_path(pipeline_store))["manifest_path"]
    pages = committed(pipeline_store)
    seen = {"over": 0, "within": 0}
    for row in range(len(pages["status"])):
        spec_file = pipeline_corpus / str(manifests[row]).replace("\\", "/")
        if pages["status"][row] == STATUS_FAILED or not spec_file.is_file():
            continue
        panels = len(json.loads(spec_file.read_text())["panels"])
        detail = client.get(f"/api/page/{name}/{row}").get_json()
        html = client.get(f"/page/{name}/{row}").get_data(as_text=True)
        if panels > 12:
            seen["over"] += 1
            assert detail["dropped_panels"] >= panels - 12
            assert f'data-testid="dropped-panels">{detail["dropped_panels"]} more panel(s)' in html
        elif detail["dropped_panels"] == 0:
            seen["within"] += 1
            assert 'data-testid="dropped-panels"' not in html
    assert seen["over"] and seen["within"], seen
