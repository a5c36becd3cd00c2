"""The store's schema, readers, growth and the jobs that give pages their rows."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.store.attributes import StoreAttributes
from comix_embed.common.store.jobs import load_jobs
from comix_embed.common.store.reading import open_committed, read_attrs, read_committed_rows
from comix_embed.common.store.schema import PAGE_COLUMNS, RESULT_ARRAYS, STORE_COORDINATES, store_path
from comix_embed.producer.jobs import next_job_layout, plan_job, registered_page_ids
from comix_embed.writer.commit import StoreWriter
from tests import synthetic
from tests.typed import StoreArrays


def _commit(out: Path, job, batch_ids, d=16, model=None):
    model = model or synthetic.model_info(d=d)
    with StoreWriter(out, fsync=False) as writer:
        writer.commit([synthetic.make_result(job, b, model) for b in batch_ids])


def test_layout_and_plain_xarray_open_without_warning(tmp_path: Path) -> None:
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(40), 8)
    _commit(tmp_path, job, [0, 1, 3], d=384)
    path = store_path(tmp_path)
    # leftovers a live writer has at any instant: zarr's temporaries inside arrays, ours in manifest/
    (path / "page_embeddings" / "zarr.0123abcd.partial").write_text("{")
    (path / config.MANIFEST_GROUP / ".zarr.json.0123.tmp").write_text("{")
    with warnings.catch_warnings():  # opened as the users' scripts open a store: no arguments
        warnings.simplefilter("error")
        ds = xr.open_zarr(path)
        ds.load()
    assert dict(ds.sizes) == {"page_id": 40, "panel_id": 12, "embedding_dim": 384, "coord_dim": 4}
    assert ds.indexes["page_id"][5] == job.pages[5].page_id
    assert set(STORE_COORDINATES) | {"page_id", "panel_id", "embedding_dim", "coord_dim"} == set(ds.coords)
    assert ds["panel_id"].values.tolist() == list(range(12))
    assert ds["reading_order"].dtype == np.int16 and ds["status"].dtype == np.int8
    assert ds["panel_mask"].dtype == bool and ds["page_embeddings"].dtype == np.float32
    assert ds.attrs["committed_rows"] == 16 and ds.attrs["checkpoint_sha256"] == synthetic.CHECKPOINT_A
    for key in ("model_name", "embedding_dim", "max_panels", "encoder_mode", "tokenizer", "created", "schema_version"):
        assert key in ds.attrs
    # every string array is a coordinate: `Dataset.where` never fills one (it cannot fill StringDType)
    assert {"text_content", "page_text", "image_path", "error"} <= set(ds.coords)
    assert set(ds.data_vars) == {n for n, (_, t) in RESULT_ARRAYS.items() if t != "str"}
    # the root's copy of the arrays' metadata is the arrays' own (shapes included)
    root = json.loads((path / "zarr.json").read_text())
    copy = root["consolidated_metadata"]["metadata"]
    for name in ("page_embeddings", "page_id", "text_content"):
        assert copy[name] == json.loads((path / name / "zarr.json").read_text()), name
    group = StoreArrays(path)
    for name, arr in group.arrays():
        assert arr.dimension_names, name
        if name in ("page_embeddings", "panel_embeddings"):
            assert (arr.chunks[0], arr.shards and arr.shards[0]) == (config.CHUNK_ROWS, config.SHARD_ROWS), name
        elif name in PAGE_COLUMNS:
            assert arr.chunks[0] == config.PAGE_COLUMN_ROWS and arr.shards is None, name
        elif arr.dimension_names[0] == "page_id":
            assert arr.chunks[0] == config.SHARD_ROWS and arr.shards is None, name
        if arr.dtype == np.float32:
            assert arr.array.compressors == (), name  # shards: see common/store/schema.py's array_layout
    # one file per shard: 40 rows are one shard, one chunk per other array
    assert sorted(p.name for p in (path / "panel_embeddings" / "c").rglob("*") if p.is_file()) == ["0"]
    assert json.loads((path / "manifest" / "zarr.json").read_text())["node_type"] == "group"
    # uncommitted rows (batch 2 is owed; 3 is committed past the gap) hold zeros and status 0
    assert not ds["page_embeddings"][16:24].values.any() and not ds["status"][16:24].values.any()


def test_xarray_shows_exactly_the_registered_rows(tmp_path: Path) -> None:
    """A 24-page job's store opens with 24 rows and a unique page_id index, before
    any result, part-way and once committed; registering a second job grows it to 24 + 10."""
    pages = synthetic.make_pages(34)
    job, _ = synthetic.plan(tmp_path, pages[:24], 8)
    path = store_path(tmp_path)
    for batches, committed, written in (([1], 0, 8), ([0, 2], 24, 24)):
        _commit(tmp_path, job, batches)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = xr.open_zarr(path, consolidated=False)
        assert ds.sizes["page_id"] == 24 and ds.attrs["committed_rows"] == committed
        assert ds.indexes["page_id"].is_unique
        assert ds.indexes["page_id"].tolist() == [p.page_id for p in pages[:24]]
        assert int((ds["status"].values != 0).sum()) == written
    job2, _ = synthetic.plan(tmp_path, pages[24:], 8, incremental=True, name="list2.txt")
    _commit(tmp_path, job2, [b for b, _, _ in job2.batches()])
    ds = xr.open_zarr(path, consolidated=False)
    assert ds.sizes["page_id"] == 34 and ds.indexes["page_id"].is_unique and ds.attrs["committed_rows"] == 34
    assert ds.sel(page_id=pages[30].page_id)["status"].item() != 0


def test_jobs_that_cross_page_column_chunks_keep_every_page_id(tmp_path: Path, monkeypatch) -> None:
    """Registering a job that starts inside one page-column chunk and ends two chunks later
    writes every one of its page ids (seen at 50,000 pages: the rows past the first boundary
    were left blank). Chunks of 16 rows make the boundaries small."""
    monkeypatch.setattr(config, "PAGE_COLUMN_ROWS", 16)
    pages = synthetic.make_pages(60)
    job, _ = synthetic.plan(tmp_path, pages[:10], 8)
    _commit(tmp_path, job, [b for b, _, _ in job.batches()])
    job2, _ = synthetic.plan(tmp_path, pages[10:], 8, incremental=True, name="list2.txt")
    _commit(tmp_path, job2, [b for b, _, _ in job2.batches()])
    group = StoreArrays(store_path(tmp_path))
    assert group["page_id"].chunks == (16,)
    assert group["page_id"][:].tolist() == [p.page_id for p in pages]


def test_open_committed_gives_exactly_the_committed_rows(tmp_path: Path) -> None:
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(50), 8)
    model = synthetic.model_info()
    _commit(tmp_path, job, [4, 0, 1, 5])
    path = store_path(tmp_path)
    assert read_committed_rows(path) == 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = open_committed(path)
    assert ds.sizes["page_id"] == 16 and ds.attrs["committed_rows"] == 16
    want = synthetic.make_result(job, 1, model)
    page = job.pages[9]
    row = ds.sel(page_id=page.page_id)
    assert row["page_embeddings"].values.tobytes() == want.arrays["page_embeddings"][1].tobytes()
    assert row["text_content"].values.tolist() == want.arrays["text_content"][1].tolist()
    assert str(row["series"].values) == page.series and str(row["manifest_path"].values) == page.manifest_path


def test_failed_pages_hold_zeros(tmp_path: Path) -> None:
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(8), 8)
    result = synthetic.make_result(job, 0, synthetic.model_info())
    failed = 5  # row 5 fails in the synthetic data
    assert result.arrays["status"][failed] == 2
    result.arrays["page_embeddings"][failed] = 1.0  # a worker that left values behind
    result.arrays["panel_embeddings"][failed] = np.nan
    with StoreWriter(tmp_path, fsync=False) as writer:
        writer.commit([result])
    ds = open_committed(store_path(tmp_path))
    for name, (_, dtype) in RESULT_ARRAYS.items():
        if dtype == "float32":
            values = ds[name].values[failed]
            assert values.tobytes() == np.zeros_like(values).tobytes(), name
    assert ds["error"].values[failed] == "image not found"


def test_incremental_growth_keeps_arrays_equal(tmp_path: Path) -> None:
    model = synthetic.model_info()
    pages = synthetic.make_pages(config.SHARD_ROWS + 30)
    job1, _ = synthetic.plan(tmp_path, pages[:20], 8)
    _commit(tmp_path, job1, [b for b, _, _ in job1.batches()])
    job2, skipped = synthetic.plan(tmp_path, pages[10:], 64, incremental=True, name="list2.txt")
    assert [p.page_id for p, _ in skipped] == [p.page_id for p in pages[10:20]]
    assert {why for _, why in skipped} == {"already in the store"}
    assert (job2.start_row, job2.first_batch, job2.number) == (20, 3, 2)
    last = job2.batches()[-1]
    with StoreWriter(tmp_path, fsync=False) as writer:
        # the writer registers job 2 when its first result arrives
        writer.commit([synthetic.make_result(job2, b, model) for b in (3, 4, last[0])])
        assert writer.committed_rows == 20 + 128
    path = store_path(tmp_path)
    kept = StoreAttributes.of(read_attrs(path))
    assert kept.registered_rows == len(pages) and kept.job_ids() == ["job_000001", "job_000002"]
    assert [(j.start_row, j.end_row, j.first_batch) for j in kept.jobs] == [(0, 20, 0), (20, len(pages), 3)]
    group = StoreArrays(path)
    lengths = {arr.shape[0] for name, arr in group.arrays() if arr.dimension_names[0] == "page_id"}
    assert lengths == {len(pages)}
    assert group["page_id"][:].tolist() == [p.page_id for p in pages]


def test_jobs_layout_resume_and_refusals(tmp_path: Path) -> None:
    pages = synthetic.make_pages(21)
    with pytest.raises(UsageError, match="Incremental mode requested but Zarr not found"):
        synthetic.plan(tmp_path, pages, 8, incremental=True)
    job, skipped = synthetic.plan(tmp_path, pages, 8)
    assert skipped == [] and job.job_id == "job_000001" and job.created.endswith("Z")
    assert job.batches() == [(0, 0, 8), (1, 8, 16), (2, 16, 21)]
    again, _ = plan_job(tmp_path, tmp_path / "list.txt", pages, 16, incremental=False)
    assert (
        again is not None and again.all_pages() == job.pages and again == job
    )  # a re-run resumes its job (its pages read when asked)
    assert [j.job_id for j in load_jobs(tmp_path)] == ["job_000001"]
    assert next_job_layout(tmp_path) == (2, 21, 3)
    assert registered_page_ids(tmp_path) == {p.page_id for p in pages}
    other = synthetic.make_pages(5, prefix="other")
    with pytest.raises(UsageError, match="holds job_000001 from .*list.txt; pass --incremental to append"):
        synthetic.plan(tmp_path, other, 8, name="other.txt")
    job2, _ = synthetic.plan(tmp_path, other + other[:1], 4, incremental=True, name="other.txt")
    assert (job2.start_row, job2.first_batch, len(job2.pages)) == (21, 3, 5)
    assert job2.batches() == [(3, 21, 25), (4, 25, 26)]
    none, skipped = synthetic.plan_maybe(tmp_path, pages[:3], 4, incremental=True, name="third.txt")
    assert none is None and len(skipped) == 3
