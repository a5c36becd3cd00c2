"""The users' own query script (`query_embeddings_zarr.py`) on a store of ours: its five commands' xarray operations.

Their script opens a store with `xr.open_zarr(path)` and no arguments, then runs, per command:
`similar` (`.sel(page_id=...)`, cosine through torch's normalize, mm and topk), `details` (one
row's panels), `text` (a case-insensitive substring over `text_content`), `filter`
(`ds.where(ds[key] == value, drop=True)`) and `covers` (`where` the first panel slot is valid,
`drop=True`). These are the same operations, written here from its documented behaviour, run
on a real store the writer made, under the zarr and xarray we install.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from comix_embed.common.store.schema import store_path
from comix_embed.writer.commit import StoreWriter
from tests import synthetic


def _store(tmp_path: Path) -> tuple[Path, list]:
    pages = synthetic.make_pages(60)
    for i, page in enumerate(pages):  # two series, as a filter needs
        page.series = "Night Harbor" if i % 3 else "Lost Frontier"
    job, _ = synthetic.plan(tmp_path, pages, 16)
    model = synthetic.model_info(d=32)
    with StoreWriter(tmp_path, fsync=False) as writer:
        writer.commit([synthetic.make_result(job, b, model) for b, _, _ in job.batches()])
    return store_path(tmp_path), pages


def _open(path: Path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # their way of opening gives no warning (consolidated metadata)
        return xr.open_zarr(path)


def test_their_five_commands_work_on_our_store(tmp_path: Path) -> None:
    path, pages = _store(tmp_path)
    ds = _open(path)

    # similar: one page against all, cosine, top 5; itself first
    query_id = pages[7].page_id
    q = torch.from_numpy(ds["page_embeddings"].sel(page_id=query_id).values[None, :])
    everything = torch.from_numpy(ds["page_embeddings"].values)
    sims = torch.mm(torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(everything, dim=1).T)[0]
    top = torch.topk(sims, 5)
    ranked = [str(ds["page_id"].values[i]) for i in top.indices.tolist()]
    assert ranked[0] == query_id
    assert [str(ds["series"].values[i]) for i in top.indices.tolist()][0] == pages[7].series

    # details: one row's panels, as many as its mask says
    row = ds.sel(page_id=query_id)
    n = int(row["panel_mask"].values.sum())
    assert n >= 1
    details = [
        {
            "panel_idx": j,
            "coordinates": row["panel_coordinates"].values[j].tolist(),
            "text": str(row["text_content"].values[j]),
            "attention_weight": float(row["attention_weights"].values[j]),
            "reading_order": float(row["reading_order"].values[j]),
        }
        for j in range(n)
    ]
    assert json.loads(details[0]["text"])["dialogue"] == ["line 7.0 é"]
    assert str(row["series"].values) == pages[7].series and str(row["source"].values) == "synthetic"

    # text: a case-insensitive substring over every panel's text
    texts = ds["text_content"].values
    hits = [
        (i, j)
        for i in range(texts.shape[0])
        for j in range(texts.shape[1])
        if "LINE 12.0".lower() in texts[i, j].lower()
    ]
    assert [str(ds["page_id"].values[i]) for i, _ in hits] == [pages[12].page_id]
    assert int(ds["text_content"].str.contains("line 12.0").sum()) == 1  # xarray's own string accessor

    # filter: where(..., drop=True) by each of their keys
    for key, value in (("series", "Lost Frontier"), ("source", "synthetic"), ("volume", "vol00"), ("issue", "1")):
        kept = ds.where(ds[key] == value, drop=True)
        want = [p.page_id for p in pages if getattr(p, key) == value]
        assert [str(v) for v in kept["page_id"].values] == want, key
        assert kept["page_embeddings"].dtype == np.float32
    kept = ds.where(ds["series"].isin(["Lost Frontier"]), drop=True)
    assert kept.sizes["page_id"] == 20

    # covers: an embedding against the pages whose first panel slot is valid
    covers = ds.where(ds["panel_mask"].isel(panel_id=0, drop=True), drop=True)
    valid = ds["panel_mask"].values[:, 0]
    assert covers.sizes["page_id"] == int(valid.sum()) > 0
    query = torch.from_numpy(ds["page_embeddings"].values[valid][:1])
    cover_sims = torch.mm(
        torch.nn.functional.normalize(query, dim=1),
        torch.nn.functional.normalize(torch.from_numpy(covers["page_embeddings"].values.astype(np.float32)), dim=1).T,
    )[0]
    assert int(torch.argmax(cover_sims)) == 0


def test_their_filters_work_on_a_store_made_before_strings_were_coordinates(tmp_path: Path) -> None:
    """A store written before every string array was listed as a coordinate gets the list when its
    next job is registered; xarray then no longer has to fill StringDType data variables."""
    path, pages = _store(tmp_path)
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["coordinates"] = "manifest_path source series volume issue page_num"
    del meta["consolidated_metadata"]
    meta_path.write_text(json.dumps(meta))
    more = synthetic.make_pages(10, prefix="later")
    job, _ = synthetic.plan(tmp_path, more, 16, incremental=True, name="list2.txt")
    with StoreWriter(tmp_path, fsync=False) as writer:
        writer.commit([synthetic.make_result(job, b, synthetic.model_info(d=32)) for b, _, _ in job.batches()])
    ds = _open(path)
    assert ds.sizes["page_id"] == 70
    assert ds.where(ds["series"] == "later", drop=True).sizes["page_id"] == 10
