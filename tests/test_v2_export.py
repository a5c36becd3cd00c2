"""`snapshot --format 2`: our store copied into the v2 layout, read by zarr-python 2.18 and xarray as the users' environment has them.

The copy is read in a separate virtual environment with zarr 2.18 and xarray 2025.6.1 (what the
users' generator needs), made once per machine and kept in the test cache. The script run there
does what their query script does: open with `xr.open_zarr(path)`, filter with `where`, select
a page, search text, rank by cosine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from comix_embed.common.store.schema import store_path
from comix_embed.writer.commit import StoreWriter
from tests import synthetic
from tests.cli import run_cli

ZARR2_PACKAGES = ("zarr==2.18.7", "xarray==2025.6.1")
THEIR_SCRIPT = r"""
import json, sys, warnings
import numpy as np, xarray as xr, zarr
warnings.simplefilter("error")
ds = xr.open_zarr(sys.argv[1])
out = {"zarr": zarr.__version__, "dims": dict(ds.sizes), "attrs": {k: str(v) for k, v in ds.attrs.items()}}
out["dtypes"] = {k: str(v.dtype) for k, v in ds.variables.items()}
kept = ds.where(ds["series"] == "Lost Frontier", drop=True)
out["filtered"] = [str(v) for v in kept["page_id"].values]
row = ds.sel(page_id=sys.argv[2])
n = int(row["panel_mask"].values.sum())
out["details"] = {"panels": n, "text": str(row["text_content"].values[0]), "series": str(row["series"].values)}
texts = ds["text_content"].values
out["text_hits"] = [str(ds["page_id"].values[i]) for i in range(texts.shape[0]) if "line 12.0" in texts[i, 0].lower()]
emb = ds["page_embeddings"].values
q = emb[list(ds["page_id"].values).index(sys.argv[2])]
sims = emb @ q / (np.linalg.norm(emb, axis=1) * np.linalg.norm(q) + 1e-8)
out["similar"] = str(ds["page_id"].values[int(np.argmax(sims))])
covers = ds.where(ds["panel_mask"].isel(panel_id=0, drop=True), drop=True)
out["covers"] = int(covers.sizes["page_id"])
out["first_rows"] = emb[:3].tolist()
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def zarr2_python() -> Path:
    """The Python of a virtual environment with zarr 2.18 and xarray 2025.6.1, made once per machine."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "comix-embed-tests" / "zarr2-venv"
    python = cache / "bin" / "python"
    marker = cache / "installed.txt"
    if not marker.is_file() or marker.read_text() != " ".join(ZARR2_PACKAGES):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(cache)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *ZARR2_PACKAGES], check=True, timeout=900)
        marker.write_text(" ".join(ZARR2_PACKAGES))
    return python


def test_a_format_2_copy_opens_under_zarr_2_18_with_their_operations(zarr2_python: Path, tmp_path: Path) -> None:
    pages = synthetic.make_pages(40)
    for i, page in enumerate(pages):
        page.series = "Night Harbor" if i % 4 else "Lost Frontier"
    job, _ = synthetic.plan(tmp_path / "out", pages, 16)
    model = synthetic.model_info(d=24)
    with StoreWriter(tmp_path / "out", fsync=False) as writer:
        writer.commit([synthetic.make_result(job, b, model) for b, _, _ in job.batches()])

    done = run_cli(
        "snapshot", "--zarr", str(tmp_path / "out"), "--to", str(tmp_path / "v2"), "--format", "2", "--no-progress"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "format-2 copy of 40 committed rows" in done.stdout
    copy = tmp_path / "v2" / "combined_embeddings.zarr"
    assert json.loads((copy / ".zgroup").read_text()) == {"zarr_format": 2}
    mask_meta = json.loads((copy / "panel_mask" / ".zarray").read_text())
    assert mask_meta["dtype"] == "|i1" and json.loads((copy / "panel_mask" / ".zattrs").read_text())["dtype"] == "bool"

    query = pages[12].page_id
    read = subprocess.run(
        [str(zarr2_python), "-c", THEIR_SCRIPT, str(copy), query], capture_output=True, text=True, timeout=300
    )
    assert read.returncode == 0, read.stderr
    seen = json.loads(read.stdout)
    assert seen["zarr"].startswith("2.18")
    assert seen["dims"] == {"page_id": 40, "panel_id": 12, "embedding_dim": 24, "coord_dim": 4}
    assert seen["attrs"]["model_name"] == "CLOSURE-Lite-Simple" and seen["attrs"]["max_panels"] == "12"
    dtypes = seen["dtypes"]
    assert dtypes["page_embeddings"] == "float32" and dtypes["panel_mask"] == "bool"
    assert dtypes["reading_order"] == "float32" and dtypes["text_content"].startswith("<U")
    assert seen["filtered"] == [p.page_id for p in pages if p.series == "Lost Frontier"]
    ours = store_path(tmp_path / "out")
    mine = xr.open_zarr(ours)
    panels = int(mine["panel_mask"].sel(page_id=query).values.sum())
    assert seen["details"]["panels"] == panels and seen["details"]["series"] == pages[12].series
    assert seen["details"]["text"] == str(json.loads(str(mine["text_content"].sel(page_id=query).values[0])))
    assert seen["text_hits"] == [query] and seen["similar"] == query
    assert seen["covers"] == int(mine["panel_mask"].values[:, 0].sum())
    np.testing.assert_array_equal(np.asarray(seen["first_rows"], dtype=np.float32), mine["page_embeddings"].values[:3])
