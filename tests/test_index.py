"""The search index beside a store (`comix-embed index`): recall, incremental builds, never stale, a killed build.

Recall is measured against exact search; never stale means rows committed or changed (by
`--retry-failed`) after a build are found, searched exactly and merged in.

Stores are real: written by the writer (StoreWriter) from tests/synthetic.py's results, or made
by `comix-embed run` (the pipeline store, copied so that other tests keep searching it exactly).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from comix_embed.cli import main
from comix_embed.common.child import cli_argv
from comix_embed.common.store.jobs import Job
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_OK, store_path
from comix_embed.tools.search import SearchIndex, build_index
from comix_embed.tools.search.layout import CURRENT, SEGMENTS, index_dir, read_meta
from comix_embed.writer.commit import StoreWriter
from tests import synthetic
from tests.cli import run_cli
from tests.typed import StoreArrays

PAGES = 2400
BATCH = 8
# Low enough that these stores (~2,200 searchable pages, ~14,000 panels) get IVF lists, not a flat index.
IVF_MIN = 1000


class Store:
    """An output folder whose synthetic job the writer commits batch range by batch range."""

    def __init__(self, out: Path, pages: int = PAGES, checkpoint: str = synthetic.CHECKPOINT_A) -> None:
        self.out = out
        job, _ = synthetic.plan(out, synthetic.make_pages(pages), BATCH)
        assert job is not None
        self.job: Job = job
        self.model = synthetic.model_info(checkpoint=checkpoint)

    def commit(self, first_row: int, stop_row: int) -> None:
        with StoreWriter(self.out, fsync=False) as writer:
            batches = range(first_row // BATCH, -(-stop_row // BATCH))
            writer.commit([synthetic.make_result(self.job, b, self.model) for b in batches])

    @property
    def path(self) -> Path:
        return store_path(self.out)


def unit(rng: np.random.Generator, d: int = 16) -> np.ndarray:
    q = rng.standard_normal(d).astype(np.float32)
    return q / np.linalg.norm(q)


def current(out: Path) -> str:
    return (index_dir(store_path(out)) / CURRENT).read_text().strip()


def test_recall_at_10_against_exact_search(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.commit(0, PAGES)
    report = build_index(tmp_path, ivf_min=IVF_MIN)
    meta = read_meta(index_dir(store.path) / current(tmp_path))
    assert meta.parts.panels.type == "ivf" and meta.parts.pages.type == "ivf"
    assert meta.parts.panels.lists > 32  # more lists than a query reads: approximate for real
    indexed, exact = SearchIndex.load(tmp_path), SearchIndex.load(tmp_path, use_index=False)
    assert indexed.generation == 1 and indexed.covered == PAGES and not len(indexed.exact.page_rows)
    assert report.pages == len(exact.rows) and indexed.rows.tolist() == exact.rows.tolist()
    rng = np.random.default_rng(7)
    panel_recall, page_recall = [], []
    for _ in range(100):
        q = unit(rng)
        truth = {(h.row, h.panel) for h in exact.panels(q, 10, per_page=False)}
        panel_recall.append(len(truth & {(h.row, h.panel) for h in indexed.panels(q, 10, per_page=False)}) / 10)
        truth_pages = {h.row for h in exact.nearest_pages(q, 10)}
        page_recall.append(len(truth_pages & {h.row for h in indexed.nearest_pages(q, 10)}) / 10)
    assert np.mean(panel_recall) >= 0.95, np.mean(panel_recall)
    assert np.mean(page_recall) >= 0.95, np.mean(page_recall)
    # clear cases: a stored panel's own vector finds that panel first, with or without the index
    for row in exact.rows[::211]:
        slots, vectors = exact.page_panels(int(row))
        for found in (indexed.panels(vectors[0], 3, per_page=False), exact.panels(vectors[0], 3, per_page=False)):
            assert (found[0].row, found[0].panel) == (row, slots[0])
            assert found[0].score == pytest.approx(1.0, abs=2e-3)  # float16 re-ranking
        assert [h.row for h in indexed.like(int(row), 1)] == [row]
    # keywords through the index's word index: the same counts as exact search, words and phrases
    for word in ("line", "LINE 1", "é", "ne 20", "1.1", "zzz"):
        assert indexed.keyword(word, 50) == exact.keyword(word, 50), word


def test_incremental_build_adds_only_what_was_committed_since(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.commit(0, 1600)
    first = build_index(tmp_path, ivf_min=IVF_MIN)
    assert (first.generation, first.rows, first.retrained) == (1, 1600, ["pages", "panels"])
    store.commit(1600, PAGES)
    second = build_index(tmp_path, ivf_min=IVF_MIN)
    exact = SearchIndex.load(tmp_path, use_index=False)
    new_pages = int(np.count_nonzero(exact.rows >= 1600))
    new_panels = int(np.count_nonzero(exact.store.read("panel_mask", exact.rows[exact.rows >= 1600])))
    assert (second.generation, second.rows, second.retrained) == (2, PAGES, [])
    assert (second.added_pages, second.added_panels) == (new_pages, new_panels)
    assert (second.pages, second.panels) == (len(exact.rows), first.panels + new_panels)
    folder = index_dir(store.path)
    assert sorted(p.name for p in folder.glob("gen_*")) == ["gen_000002"]  # the previous one removed
    assert sorted(p.name for p in (folder / SEGMENTS).iterdir()) == [
        "pages_000001.f16",
        "pages_000002.f16",
        "panels_000001.f16",
        "panels_000002.f16",
        "text_000001",
        "text_000002",
    ]
    indexed = SearchIndex.load(tmp_path)
    assert indexed.covered == PAGES and not len(indexed.exact.page_rows)
    assert indexed.rows.tolist() == exact.rows.tolist()
    third = build_index(tmp_path, ivf_min=IVF_MIN)
    assert third.up_to_date and third.generation == 2


def test_never_stale_rows_committed_or_retried_since_are_found(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.commit(0, 1600)
    build_index(tmp_path, ivf_min=IVF_MIN)
    store.commit(1600, PAGES)
    indexed, exact = SearchIndex.load(tmp_path), SearchIndex.load(tmp_path, use_index=False)
    assert (indexed.generation, indexed.covered, indexed.committed) == (1, 1600, PAGES)
    assert indexed.rows.tolist() == exact.rows.tolist()
    for row in exact.rows[exact.rows >= 1600][::97]:
        slots, vectors = indexed.page_panels(int(row))
        assert (lambda h: (h.row, h.panel))(indexed.panels(vectors[-1], 1, per_page=False)[0]) == (row, slots[-1])
        assert indexed.like(int(row), 2)[1].row == exact.like(int(row), 2)[1].row
        word = f"line {row}.0"
        assert [h.row for h in indexed.keyword(word, 5)] == [h.row for h in exact.keyword(word, 5)] == [row]
    # a failed row that --retry-failed then embedded in place (status 2 -> 1): searched exactly until
    # the next build, which indexes it
    retried = int(np.flatnonzero(indexed.status[:1600] == STATUS_FAILED)[0])
    vector = unit(np.random.default_rng(3))
    group = StoreArrays(store.path, mode="r+")
    group["page_embeddings"][retried] = vector
    group["panel_embeddings"][retried, 0] = vector
    group["panel_mask"][retried, 0] = True
    group["status"][retried] = STATUS_OK
    indexed = SearchIndex.load(tmp_path)
    assert indexed.changed.tolist() == [retried] and retried in indexed.exact.page_rows
    assert [(h.row, h.panel) for h in indexed.panels(vector, 1, per_page=False)] == [(retried, 0)]
    assert indexed.exact.load_panels()
    delta = (len(indexed.exact.page_rows), indexed.exact.panel_count)  # rows 1600.. and the retried one
    rebuilt = build_index(tmp_path, ivf_min=IVF_MIN)
    assert (rebuilt.generation, rebuilt.added_pages, rebuilt.added_panels) == (2, *delta)
    indexed = SearchIndex.load(tmp_path)
    assert not len(indexed.changed) and not len(indexed.exact.page_rows)
    assert [(h.row, h.panel) for h in indexed.panels(vector, 1, per_page=False)] == [(retried, 0)]
    assert [h.row for h in indexed.nearest_pages(vector, 1)] == [retried]


def test_a_killed_build_leaves_the_previous_index_in_use(tmp_path: Path) -> None:
    """`comix-embed index` is killed once it has said `building generation N` and before it has
    put that generation in use; the previous generation still answers (and the rows it lacks are
    searched exactly); a second run removes what the killed one left and completes."""
    store = Store(tmp_path)
    store.commit(0, 800)
    assert run_cli("index", "--zarr", str(tmp_path)).returncode == 0
    assert current(tmp_path) == "gen_000001"
    committed = 800
    while True:  # a build that got through before it was frozen leaves nothing to kill: grow and retry
        store.commit(committed, committed + 800)
        committed += 800
        assert committed <= PAGES, "every build finished before it could be frozen"
        proc = subprocess.Popen(cli_argv("index", "--zarr", str(tmp_path)), stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            if "building generation" in line:
                break
        os.kill(proc.pid, signal.SIGSTOP)
        if current(tmp_path) == "gen_000001":
            proc.kill()
            proc.wait(timeout=60)
            proc.stderr.close()
            break
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.wait(timeout=300) == 0
    assert proc.returncode == -signal.SIGKILL
    indexed = SearchIndex.load(tmp_path)
    assert (indexed.generation, indexed.covered, indexed.committed) == (1, 800, committed)
    exact = SearchIndex.load(tmp_path, use_index=False)
    assert indexed.rows.tolist() == exact.rows.tolist()
    late = int(exact.rows[-1])
    assert indexed.like(late, 1)[0].row == late
    done = run_cli("index", "--zarr", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"index generation 2: {committed} committed rows")
    folder = index_dir(store.path)
    assert current(tmp_path) == "gen_000002" and [p.name for p in folder.glob("gen_*")] == ["gen_000002"]
    parts = read_meta(folder / "gen_000002").parts
    named = {s.file for part in (parts.pages, parts.panels, parts.text) for s in part.segments}
    assert {p.name for p in (folder / SEGMENTS).iterdir()} == named
    assert SearchIndex.load(tmp_path).covered == committed


def test_query_with_and_without_the_index(
    pipeline_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a pipeline store: `query` says which index it used; the top hits agree with exact search."""
    out = tmp_path / "out"
    shutil.copytree(pipeline_store, out, ignore=shutil.ignore_patterns("logs"))
    built = run_cli("index", "--zarr", str(out))
    assert built.returncode == 0, built.stderr
    exact = SearchIndex.load(out, use_index=False)
    page = str(exact.page_ids[int(exact.rows[3])])
    word = next(w for w in exact.page_text(exact.rows[3:4])[0].split() if len(w) > 3)

    def ask(*argv: str) -> dict:
        code = main(["query", "--zarr", str(out), *argv, "--json"])
        printed = capsys.readouterr()
        assert code == 0, printed.err
        return json.loads(printed.out)

    for mode in (("--like", page), ("--like", page, "--panels"), ("--keyword", word)):
        with_index, without = ask(*mode), ask(*mode, "--no-index")
        assert (with_index["index_generation"], with_index["indexed_rows"]) == (1, exact.committed)
        assert (without["index_generation"], without["indexed_rows"]) == (None, 0)
        assert with_index["results"][0]["page_id"] == without["results"][0]["page_id"]
        assert with_index["results"][0]["score"] == pytest.approx(without["results"][0]["score"], abs=2e-3)
        assert {r["page_id"] for r in with_index["results"][:3]} == {r["page_id"] for r in without["results"][:3]}
    assert ask("--keyword", word)["results"] == ask("--keyword", word, "--no-index")["results"]


def test_an_unreadable_index_is_searched_around(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A damaged index file, or an index of another store, is never used: exact search, with a warning."""
    store = Store(tmp_path, pages=400)
    store.commit(0, 400)
    build_index(tmp_path)
    exact = SearchIndex.load(tmp_path, use_index=False)
    row = int(exact.rows[0])
    (index_dir(store.path) / current(tmp_path) / "panels.faiss").write_bytes(b"not an index")
    damaged = SearchIndex.load(tmp_path)
    assert damaged.generation is None and "panels.faiss" not in str(damaged.ann)
    assert "cannot be read" in caplog.text and "searching exactly" in caplog.text
    assert damaged.like(row, 5) == exact.like(row, 5)
    shutil.rmtree(store.path)  # the same output folder, a new store of another model
    Store(tmp_path, pages=400, checkpoint=synthetic.CHECKPOINT_B).commit(0, 400)
    caplog.clear()
    assert SearchIndex.load(tmp_path).generation is None
    assert "index of another store" in caplog.text
    assert build_index(tmp_path).generation == 2  # built afresh, as the next generation
