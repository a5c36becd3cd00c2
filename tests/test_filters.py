"""Filters applied before ranking: every mode ranks within the filtered pages, with or without an index.

Each filtered answer is checked against a brute-force one: the store's committed rows read by the
project's reader, the filter applied by hand, and the cosines computed in numpy. Through an IVF
index, both ways of a filtered search are exercised: the few allowed vectors scored exactly, and
faiss scanning with a bitmap of the allowed ones (forced by a gather limit of 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from comix_embed.cli import main
from comix_embed.common.errors import UsageError
from comix_embed.common.store.reading import open_committed
from comix_embed.common.store.schema import STATUS_FAILED, store_path
from comix_embed.tools.search import SearchIndex, build_index
from comix_embed.tools.search import ann as ann_module
from comix_embed.tools.search.filters import PageFilter
from tests.test_index import IVF_MIN, PAGES, Store, unit


@pytest.fixture(scope="module")
def ivf_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic store of 2,400 pages (24 volumes of 100), indexed with IVF lists."""
    out = tmp_path_factory.mktemp("filtered")
    store = Store(out)
    store.commit(0, PAGES)
    build_index(out, ivf_min=IVF_MIN)
    return out


class Truth:
    """The committed rows as the project's reader gives them, searched by brute force."""

    def __init__(self, out: Path) -> None:
        ds = open_committed(store_path(out))
        self.columns = {name: np.array([str(v) for v in ds[name].values]) for name in ("series", "volume", "page_id")}
        self.status = ds["status"].values
        pages = ds["page_embeddings"].values.astype(np.float64)
        self.norms = np.linalg.norm(pages, axis=1)
        self.pages = pages / np.maximum(self.norms, 1e-12)[:, None]
        self.panels = ds["panel_embeddings"].values.astype(np.float64)
        self.mask = ds["panel_mask"].values

    def rows(self, volume: str = "", id_contains: str = "") -> np.ndarray:
        keep = (self.status != STATUS_FAILED) & (self.norms > 1e-6)
        if volume:
            keep &= np.char.lower(self.columns["volume"]) == volume.lower()
        if id_contains:
            keep &= np.char.find(np.char.lower(self.columns["page_id"]), id_contains.lower()) >= 0
        return np.flatnonzero(keep)

    def nearest_pages(self, q: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
        scores = self.pages[rows] @ q
        return np.sort(scores)[::-1][:k]

    def best_panels(self, q: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
        panels = self.panels[rows][self.mask[rows]]
        panels = panels / np.linalg.norm(panels, axis=1, keepdims=True)
        return np.sort(panels @ q)[::-1][:k]


FILTERS = [
    PageFilter(volume="VOL03"),  # 100 pages: few, scored exactly
    PageFilter(id_contains="vol1"),  # vol10..vol19: 1,000 pages
    PageFilter(id_contains="/vol2", volume="vol21"),  # two fields at once
]


@pytest.mark.parametrize("gather_limit", [ann_module.GATHER_LIMIT, 0], ids=["gathered", "faiss-bitmap"])
@pytest.mark.parametrize("use_index", [True, False], ids=["index", "exact"])
def test_similarity_ranks_within_the_filter(
    ivf_store: Path, monkeypatch: pytest.MonkeyPatch, gather_limit: int, use_index: bool
) -> None:
    monkeypatch.setattr(ann_module, "GATHER_LIMIT", gather_limit)
    index, truth = SearchIndex.load(ivf_store, use_index=use_index), Truth(ivf_store)
    assert (index.generation is not None) == use_index
    rng = np.random.default_rng(11)
    exact_everywhere = not use_index or gather_limit > 0  # every allowed vector scored, up to float16
    recall = []
    for where in FILTERS:
        allowed = index.allowed(where)
        assert allowed is not None
        rows = truth.rows(where.volume, where.id_contains)
        assert np.flatnonzero(allowed & np.isin(index.status, (1, 3))).tolist() == rows.tolist()
        for _ in range(5):
            q = unit(rng)
            for got, best in (
                ([h.score for h in index.nearest_pages(q, 50, allowed)], truth.nearest_pages(q, rows, 50)),
                ([h.score for h in index.panels(q, 20, False, allowed)], truth.best_panels(q, rows, 20)),
            ):
                assert len(got) == len(best), where  # a narrow filter still fills its top-k
                if exact_everywhere:
                    np.testing.assert_allclose(got, best, atol=2e-3)
                else:  # faiss's lists: never better than the truth, and mostly the same
                    assert (np.array(got) <= best + 2e-3).all() and got == sorted(got, reverse=True)
                    recall.append(np.mean(np.array(got) >= best[-1] - 2e-3))
            assert all(allowed[h.row] for h in index.nearest_pages(q, 50, allowed))
            assert all(allowed[h.row] for h in index.panels(q, 20, True, allowed))
    assert exact_everywhere or np.mean(recall) >= 0.6, np.mean(recall)


def test_keyword_id_and_like_modes_are_filtered(ivf_store: Path) -> None:
    index = SearchIndex.load(ivf_store)
    allowed = index.allowed(PageFilter(volume="vol05"))
    assert allowed is not None and int(allowed.sum()) == 100
    # `id`: the count is of the pages that pass the filter too
    hits, matches = index.id_matches("/0051", 10, 0, allowed)
    assert matches == 10 and all(index.page_ids[h.row].startswith("book/vol05/0051") for h in hits)
    assert index.id_matches("/0051", 10)[1] == 10 and index.id_matches("/0061", 10, 0, allowed)[1] == 0
    # `like`: the page itself ranks first only if it passes
    inside, outside = 510, 20
    assert index.like(inside, 5, allowed)[0].row == inside
    found = index.like(outside, 30, allowed)
    assert len(found) == 30 and all(allowed[h.row] for h in found)
    # keyword: counts of the allowed pages only, the same as unfiltered ones among them
    word = "line"
    everywhere = {h.row: h.score for h in index.keyword(word, PAGES)}
    filtered = index.keyword(word, PAGES, allowed=allowed)
    assert filtered and {h.row: h.score for h in filtered} == {r: s for r, s in everywhere.items() if allowed[r]}


def test_text_status_and_series_fields(pipeline_store: Path) -> None:
    index = SearchIndex.load(pipeline_store)
    ds = open_committed(store_path(pipeline_store))
    status = ds["status"].values
    failed = index.allowed(PageFilter(status="failed"))
    assert failed is not None and np.flatnonzero(failed).tolist() == np.flatnonzero(status == STATUS_FAILED).tolist()
    ok = index.allowed(PageFilter(status="ok"))
    assert ok is not None and not (ok & failed).any() and (ok | failed).all()
    row = int(index.rows[2])
    phrase = " ".join(index.page_text(np.array([row]))[0].split()[:2]).upper()
    holding = index.allowed(PageFilter(text_contains=phrase))
    texts = [t.lower() for t in index.page_text(index.rows)]
    assert holding is not None and holding[row]
    assert np.flatnonzero(holding).tolist() == [int(r) for r, t in zip(index.rows, texts) if phrase.lower() in t]
    series = str(ds["series"].values[row])
    part = series[1:-1].upper()
    in_series = index.allowed(PageFilter(series=part))
    assert in_series is not None
    assert np.flatnonzero(in_series).tolist() == [
        i for i, s in enumerate(ds["series"].values) if part.lower() in str(s).lower()
    ]
    assert not index.allowed(PageFilter(series="no such series")).any()  # type: ignore[union-attr]


def test_query_command_takes_filters(pipeline_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = open_committed(store_path(pipeline_store))
    failed = sorted(str(p) for p, s in zip(ds["page_id"].values, ds["status"].values) if s == STATUS_FAILED)

    def ask(*argv: str) -> tuple[int, str, str]:
        code = main(["query", "--zarr", str(pipeline_store), *argv])
        printed = capsys.readouterr()
        return code, printed.out, printed.err

    code, out, err = ask("--id", "/", "--status", "failed", "--top-k", "50", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert sorted(r["page_id"] for r in answer["results"]) == failed
    assert answer["filter"] == {"status": "failed"} and answer["filtered_pages"] == len(failed)
    code, out, err = ask("--id", "/", "--filters", '{"status": "failed"}', "--top-k", "50", "--json")
    assert code == 0 and sorted(r["page_id"] for r in json.loads(out)["results"]) == failed
    code, out, _ = ask("--id", "/", "--status", "failed")
    assert code == 0 and f"filtered to {len(failed)} of" in out and "status = 'failed'" in out
    code, _, err = ask("--id", "/", "--filters", '{"serie": "x"}')
    assert code == 2 and "--filters: unknown field(s) serie" in err
    code, _, err = ask("--id", "/", "--filters", "{nope")
    assert code == 2 and "--filters: not JSON" in err
    with pytest.raises(SystemExit):
        main(["query", "--zarr", str(pipeline_store), "--id", "/", "--status", "broken"])
    assert "invalid choice: 'broken'" in capsys.readouterr().err
    with pytest.raises(UsageError, match="filter status must be one of ok, failed, not 'x'"):
        PageFilter.of_values({"status": "x"})
