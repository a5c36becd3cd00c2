"""The map of a store (`comix-embed map`, serve's `/api/map`): placement, incremental runs, level of detail.

Stores are real: written by the writer (StoreWriter) from tests/synthetic.py's results, with pages
of 13 series (more than the legend's colours). serve runs in Flask's test client on them, without
a model (the map needs none); the browser test is in test_map_browser.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient

from comix_embed.cli import main
from comix_embed.common.errors import EXIT_OK, EXIT_USAGE
from comix_embed.common.inputs.paths import ImageResolver
from comix_embed.common.store.reading import open_committed
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_OK, store_path
from comix_embed.tools.map.build import build_map
from comix_embed.tools.map.layout import NEIGHBOURS
from comix_embed.tools.map.storage import MapArrays, map_dir, read_arrays, read_meta
from comix_embed.tools.map.viewport import COLOURS, MapPoints, priority
from comix_embed.tools.search.rows import StoreRows
from comix_embed.tools.serve.app import ServeState, create_app
from comix_embed.tools.serve.stores import ServedStore
from tests import synthetic
from tests import test_index as index_tests
from tests.typed import StoreArrays

PAGES = 900
SERIES = 13
LANDMARKS = 64  # fewer than the pages: most are placed among landmarks, not laid out themselves


class Store(index_tests.Store):
    """test_index.py's synthetic store, its pages of SERIES series."""

    def __init__(self, out: Path, checkpoint: str = synthetic.CHECKPOINT_A) -> None:
        self.out = out
        pages = [
            dataclasses.replace(p, series=f"series {i % SERIES:02d}") for i, p in enumerate(synthetic.make_pages(PAGES))
        ]
        self.job, _ = synthetic.plan(out, pages, index_tests.BATCH)
        self.model = synthetic.model_info(checkpoint=checkpoint)

    def arrays(self) -> MapArrays:
        folder = map_dir(self.path)
        meta = read_meta(folder)
        assert meta is not None
        return read_arrays(folder, meta)


def run_map(out: Path, *extra: str) -> int:
    return main(["map", "--zarr", str(out), "--no-progress", "--landmarks", str(LANDMARKS), *extra])


def embedded(path: Path, stop: int) -> np.ndarray:
    """Rows below `stop` with a searchable status and a non-zero page vector: the ones a map places."""
    rows = StoreRows(path)
    return np.concatenate([r for r, _ in rows.page_vectors(np.arange(stop))])


def test_every_embedded_page_is_placed_among_its_nearest_landmarks(tmp_path: Path, capsys) -> None:
    store = Store(tmp_path)
    store.commit(0, 600)
    assert run_map(tmp_path) == EXIT_OK
    assert "600 committed rows" in capsys.readouterr().out
    arrays = store.arrays()
    placed = np.flatnonzero(np.isfinite(arrays.x))
    assert placed.tolist() == embedded(store.path, 600).tolist()
    assert (np.isfinite(arrays.x) == np.isfinite(arrays.y)).all()
    failed = np.flatnonzero(StoreArrays(store.path)["status"][:600] == STATUS_FAILED)
    assert len(failed) and np.isnan(arrays.x[failed]).all()
    assert len(arrays.landmark_rows) == LANDMARKS and np.isin(arrays.landmark_rows, placed).all()
    # landmarks keep their laid-out positions, which fill the unit box (the larger side spans [-1, 1])
    assert np.array_equal(arrays.x[arrays.landmark_rows], arrays.landmark_xy[:, 0])
    assert np.array_equal(arrays.y[arrays.landmark_rows], arrays.landmark_xy[:, 1])
    span = arrays.landmark_xy.max(axis=0) - arrays.landmark_xy.min(axis=0)
    assert span.max() == pytest.approx(2.0, abs=1e-5) and span.min() > 0.5
    # every other page lies among its nearest landmarks: inside the box their positions span
    vectors = np.concatenate([v for _, v in StoreRows(store.path).page_vectors(placed)])
    nearest = np.argsort(-(vectors @ arrays.landmark_vectors.T), axis=1)[:, :NEIGHBOURS]
    around = arrays.landmark_xy[nearest]
    xy = np.stack([arrays.x[placed], arrays.y[placed]], axis=1)
    assert ((xy >= around.min(axis=1) - 1e-5) & (xy <= around.max(axis=1) + 1e-5)).all()
    others = ~np.isin(placed, arrays.landmark_rows)
    assert len(np.unique(xy[others], axis=0)) == others.sum()  # no two pages pile on one point


def test_a_later_run_places_only_new_and_retried_rows_and_moves_none(tmp_path: Path, capsys) -> None:
    store = Store(tmp_path)
    store.commit(0, 600)
    assert run_map(tmp_path) == EXIT_OK
    before = store.arrays()
    # a failed row that --retry-failed then embedded in place (status 2 -> 1), and rows committed since
    retried = int(np.flatnonzero(before.status == STATUS_FAILED)[0])
    group = StoreArrays(store.path, mode="r+")
    group["page_embeddings"][retried] = before.landmark_vectors[0]
    group["status"][retried] = STATUS_OK
    store.commit(600, PAGES)
    capsys.readouterr()
    assert run_map(tmp_path) == EXIT_OK
    new = embedded(store.path, PAGES)
    added = int((new >= 600).sum()) + 1
    assert f"{len(new)} placed ({added} added, extended)" in capsys.readouterr().out
    after = store.arrays()
    kept = np.setdiff1d(np.arange(600), [retried])
    assert after.x[kept].tobytes() == before.x[kept].tobytes() and after.y[kept].tobytes() == before.y[kept].tobytes()
    for name in ("landmark_rows", "landmark_vectors", "landmark_xy"):
        assert getattr(after, name).tobytes() == getattr(before, name).tobytes()
    assert np.flatnonzero(np.isfinite(after.x)).tolist() == new.tolist() and retried in new
    meta = read_meta(map_dir(store.path))
    assert meta is not None and (meta.version, meta.rows, meta.placed) == (2, PAGES, len(new))
    assert sorted(p.name for p in map_dir(store.path).glob("*.npz")) == ["map_000002.npz"]  # the first removed
    assert run_map(tmp_path) == EXIT_OK
    assert f"map version 2 is up to date: {PAGES} committed rows" in capsys.readouterr().out
    assert run_map(tmp_path, "--rebuild") == EXIT_OK
    assert "laid out afresh" in capsys.readouterr().out


def test_the_map_of_another_store_is_refused(tmp_path: Path, capsys) -> None:
    ours, theirs = Store(tmp_path / "ours"), Store(tmp_path / "theirs", checkpoint=synthetic.CHECKPOINT_B)
    ours.commit(0, 200)
    theirs.commit(0, 200)
    assert run_map(tmp_path / "theirs") == EXIT_OK
    shutil.copytree(map_dir(theirs.path), map_dir(ours.path))
    capsys.readouterr()
    assert run_map(tmp_path / "ours") == EXIT_USAGE
    err = capsys.readouterr().err
    assert "is the map of another store" in err and str(theirs.path) in err and "--rebuild" in err
    with pytest.raises(Exception, match="another store"):
        MapPoints.load(ours.path)
    assert run_map(tmp_path / "ours", "--rebuild") == EXIT_OK
    meta = read_meta(map_dir(ours.path))
    assert meta is not None and meta.store_path == str(ours.path)


def test_a_map_whose_arrays_are_gone_is_refused_by_name(tmp_path: Path, capsys) -> None:
    store = Store(tmp_path)
    store.commit(0, 200)
    assert run_map(tmp_path) == EXIT_OK
    client = client_for(tmp_path)
    assert client.get("/api/map/book").status_code == 200
    (map_dir(store.path) / "map_000001.npz").unlink()
    store.commit(200, 400)
    capsys.readouterr()
    assert run_map(tmp_path) == EXIT_USAGE
    assert "names map_000001.npz, which is missing" in capsys.readouterr().err
    assert client.get("/api/map/book").status_code == 200  # serve keeps what it loaded while meta.json stays
    meta = map_dir(store.path) / "meta.json"
    os.utime(meta, ns=(meta.stat().st_atime_ns, meta.stat().st_mtime_ns + 10**9))  # as if written again
    refused = client.get("/api/map/book")
    assert refused.status_code == 404 and "which is missing" in refused.get_json()["error"]
    assert run_map(tmp_path, "--rebuild") == EXIT_OK
    assert client.get("/api/map/book").get_json()["covered_rows"] == 400


def test_a_store_with_nothing_embedded_has_no_map(tmp_path: Path, capsys) -> None:
    Store(tmp_path).commit(0, index_tests.BATCH)
    StoreArrays(store_path(tmp_path), mode="r+")["status"][: index_tests.BATCH] = (
        STATUS_FAILED  # every committed page failed
    )
    assert run_map(tmp_path) == EXIT_USAGE
    assert "no embedded pages yet" in capsys.readouterr().err
    assert read_meta(map_dir(store_path(tmp_path))) is None


def random_points(n: int, seed: int = 0) -> MapPoints:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(10 * n, size=n, replace=False))
    series = np.array([f"s{int(v)}" for v in rng.zipf(1.5, n) % 40], dtype=object)
    return MapPoints(
        rows, rng.uniform(-1, 1, n).astype(np.float32), rng.uniform(-1, 1, n).astype(np.float32), series, 10 * n
    )


def test_a_view_is_the_first_points_in_its_box_by_priority() -> None:
    points = random_points(50_000)
    for box, limit in (((-1, -1, 1, 1), 4000), ((0.1, -0.3, 0.4, 0.2), 500), ((0.2, 0.2, 0.25, 0.26), 4000)):
        view = points.view(box[0], box[1], box[2], box[3], limit)
        inside = (points.x >= box[0]) & (points.x <= box[2]) & (points.y >= box[1]) & (points.y <= box[3])
        expected = points.rows[inside][np.argsort(priority(points.rows[inside]), kind="stable")][:limit]
        assert view.rows.tolist() == expected.tolist()  # the first `limit` in priority order, all in the box
        assert view.in_view == inside.sum() and len(view.rows) == min(limit, inside.sum())
        assert ((view.x >= box[0]) & (view.x <= box[2]) & (view.y >= box[1]) & (view.y <= box[3])).all()
    few = points.view(0.2, 0.2, 0.25, 0.26, 4000)
    assert 0 < few.in_view < 4000 and len(few.rows) == few.in_view  # zoomed in: every page in view
    # a sample of the same density everywhere: each quarter of the whole map gets about a quarter
    whole = points.view(-1, -1, 1, 1, 4000)
    quarters = np.bincount((whole.x > 0).astype(int) * 2 + (whole.y > 0).astype(int), minlength=4)
    assert quarters.min() > 850


def test_colours_follow_the_most_common_series() -> None:
    points = random_points(5000)
    assert [e.colour for e in points.legend] == list(range(COLOURS + 1))
    counts = [e.pages for e in points.legend[:COLOURS]]
    assert counts == sorted(counts, reverse=True) and sum(e.pages for e in points.legend) == 5000
    assert np.bincount(points.colour, minlength=COLOURS + 1).tolist() == [e.pages for e in points.legend]


@pytest.fixture
def grown(tmp_path: Path) -> Store:
    store = Store(tmp_path)
    store.commit(0, 600)
    assert run_map(tmp_path) == EXIT_OK
    return store


def client_for(out: Path) -> FlaskClient:
    served = ServedStore("book", store_path(out), None, 1 << 30, 1)
    return create_app(ServeState(stores={"book": served}, resolver=ImageResolver([str(out)], []))).test_client()


def test_the_api_answers_a_view_and_follows_a_new_map(grown: Store) -> None:
    client = client_for(grown.out)
    whole = client.get("/api/map/book").get_json()
    arrays = grown.arrays()
    placed = np.flatnonzero(np.isfinite(arrays.x))
    assert whole["placed"] == whole["in_view"] == len(whole["rows"]) == len(placed)  # under the limit: all of them
    assert sorted(whole["rows"]) == placed.tolist()
    at = {r: i for i, r in enumerate(whole["rows"])}
    ids = StoreArrays(grown.path)["page_id"]
    for row in placed[::50]:
        i = at[int(row)]
        assert (whole["x"][i], whole["y"][i]) == pytest.approx((arrays.x[row], arrays.y[row]), abs=1e-6)
        assert whole["page_id"][i] == ids[row]
    assert sum(e["pages"] for e in whole["legend"]) == len(placed) and len(whole["legend"]) == COLOURS + 1
    x0, y0, x1, y1 = whole["extent"]
    box = {"x0": x0, "y0": y0, "x1": (x0 + x1) / 2, "y1": (y0 + y1) / 2, "limit": 20}
    part = client.get("/api/map/book", query_string=box).get_json()
    assert len(part["rows"]) == 20 < part["in_view"] < len(placed)
    assert all(x0 <= x <= box["x1"] for x in part["x"]) and all(y0 <= y <= box["y1"] for y in part["y"])
    # `comix-embed map` run again while serving: the next request sees the new rows
    grown.commit(600, PAGES)
    build_map(grown.out, landmarks=LANDMARKS)
    again = client.get("/api/map/book").get_json()
    assert again["covered_rows"] == PAGES and again["placed"] == len(embedded(grown.path, PAGES)) > len(placed)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("x0=abc", "x0"),
        ("y1=nan", "y1"),
        ("x1=inf", "x1"),
        ("limit=0", "limit"),
        ("limit=20001", "limit"),
        ("limit=many", "limit"),
        ("x0=1&x1=0", "x0"),
    ],
)
def test_the_api_refuses_bad_parameters_by_name(grown: Store, query: str, named: str) -> None:
    response = client_for(grown.out).get(f"/api/map/book?{query}")
    assert response.status_code == 400 and response.mimetype == "application/json"
    assert f"`{named}`" in response.get_json()["error"]


def test_without_a_map_the_api_says_404_and_the_page_says_what_to_run(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.commit(0, 200)
    client = client_for(tmp_path)
    missing = client.get("/api/map/book")
    assert missing.status_code == 404 and missing.mimetype == "application/json"
    assert "comix-embed map" in missing.get_json()["error"]
    unknown = client.get("/api/map/nothing")
    assert unknown.status_code == 404 and "no store named" in json.loads(unknown.data)["error"]
    page = client.get("/map/book").get_data(as_text=True)
    assert 'data-testid="map-missing"' in page and f"comix-embed map --zarr <bdi>{store.path}</bdi>" in page
    assert client.get("/map").headers["Location"].endswith("/map/book")


def test_a_filter_greys_out_the_pages_outside_it(grown: Store) -> None:
    """The map coloured by a search filter: the same points in the same order, those outside the
    filter with colour -1, the others their series' colour; the page keeps the filter's values and
    carries them to its script's API address; a bad filter is a 400 naming it."""
    client = client_for(grown.out)
    whole = client.get("/api/map/book").get_json()
    filtered = client.get("/api/map/book", query_string={"series": "series 03", "status": "ok"}).get_json()
    assert filtered["rows"] == whole["rows"] and filtered["x"] == whole["x"]
    series = StoreArrays(grown.path)["series"]
    inside = [str(series[r]) == "series 03" for r in filtered["rows"]]
    assert any(inside) and not all(inside)
    for keep, before, after in zip(inside, whole["colour"], filtered["colour"]):
        assert after == (before if keep else -1)
    assert filtered["filter"] == {"series": "series 03", "status": "ok"}
    ds = open_committed(grown.path)
    passing = [str(s) == "series 03" and st != STATUS_FAILED for s, st in zip(ds["series"].values, ds["status"].values)]
    assert filtered["filtered_pages"] == sum(passing) < sum(str(s) == "series 03" for s in ds["series"].values)
    assert whole["filter"] == {} and whole["filtered_pages"] is None
    page = client.get("/map/book", query_string={"series": "series 03"}).get_data(as_text=True)
    assert 'name="series" value="series 03"' in page and 'data-testid="legend-outside"' in page
    assert 'data-api="/api/map/book?series=series+03"' in page
    bad = client.get("/api/map/book", query_string={"status": "lost"})
    assert bad.status_code == 400 and "filter status must be one of ok, failed" in bad.get_json()["error"]
