"""`comix-embed snapshot --format 2`: the committed rows written in the v2 layout, for environments with zarr-python 2.

The users' own environment (zarr 2.18, which their generator needs for `zarr.Blosc`) cannot open
a Zarr format 3 store. This writes the store's committed prefix as generate_embeddings_zarr_v2
wrote its stores (docs/store.md, "Stores made by generate_embeddings_zarr_v2"): Zarr format 2,
consolidated `.zmetadata`, the same variable names, dimensions and attributes, float32 arrays in
1000-row Blosc zstd chunks, `panel_mask` as int8 marked bool, `reading_order` as float,
`text_content` as the Python repr of each panel's text dict, fixed-width string coordinates (as
wide as their longest value: nothing is cut). It adds `status` (int8), which their tools ignore.

The copy is consistent: rows below `committed_rows` never change, except for retry rounds, so
the rows are read again when a retry manifest appeared while they were read. It is written under
a temporary name and renamed into place whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from tqdm import tqdm

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.store.reading import read_attrs, read_committed_rows
from comix_embed.common.store.retries import retry_manifest_ids
from comix_embed.common.timestamps import utc_now

CHUNK_ROWS = 1000  # the v2 generator's chunks along page_id
COLUMNS = ("page_id", "manifest_path", "source", "series", "volume", "issue", "page_num")
# float32 variables: (name, dims after page_id)
FLOATS = (
    ("page_embeddings", ("embedding_dim",)),
    ("panel_embeddings", ("panel_id", "embedding_dim")),
    ("attention_weights", ("panel_id",)),
    ("reading_order", ("panel_id",)),
    ("panel_coordinates", ("panel_id", "coord_dim")),
)
COORDINATES = "issue manifest_path page_num series source volume"
TRIES = 5


def export(store: Path, dest: Path, progress: bool = False) -> int:
    """Write the committed rows of `store` as a v2 store at `dest`/combined_embeddings.zarr; the rows written."""
    target = dest / config.STORE_NAME
    if target.exists():
        raise UsageError(f"{target} exists: a format-2 export goes to a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    for _ in range(TRIES):
        retries = retry_manifest_ids(store)
        rows = read_committed_rows(store)
        tmp = dest / f".{config.STORE_NAME}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        _write(store, tmp, rows, progress)
        if retry_manifest_ids(store) == retries:
            tmp.rename(target)
            return rows
    raise UsageError(f"{store}: retry rounds kept changing its rows while they were read ({TRIES} tries)")


def _write(store: Path, tmp: Path, n: int, progress: bool) -> None:
    source = dict(zarr.open_group(store, mode="r", use_consolidated=False).arrays())
    attrs = read_attrs(store)
    d, p = int(attrs["embedding_dim"]), int(attrs["max_panels"])
    group = zarr.open_group(tmp, mode="w", zarr_format=2)
    group.attrs.update(
        {
            "model_name": attrs.get("model_name", config.MODEL_NAME),
            "embedding_dim": d,
            "max_panels": p,
            "created_date": utc_now(),
            "exported_from": str(store),
            "checkpoint_sha256": attrs.get("checkpoint_sha256", ""),
            "encoder_mode": attrs.get("encoder_mode", "fused"),
        }
    )
    data = numcodecs.Blosc(cname="zstd", clevel=6, shuffle=numcodecs.Blosc.BITSHUFFLE)
    shapes = {"panel_id": p, "embedding_dim": d, "coord_dim": 4}
    for name, size in shapes.items():
        _array(group, name, np.arange(size, dtype=np.int64), (name,))
    # the fixed width is the widest repr's: a first pass, block by block, so that a million pages'
    # texts are never all in memory at once (the second pass makes each block's reprs again)
    text_width = max(
        (_width(_texts(source, start, n).reshape(-1).tolist()) for start in range(0, n, CHUNK_ROWS)), default=1
    )
    out: dict[str, zarr.Array] = {}
    for name, dims in FLOATS:
        out[name] = _empty(group, name, (n, *(shapes[x] for x in dims)), "<f4", ("page_id", *dims), data, np.nan)
    out["panel_mask"] = _empty(group, "panel_mask", (n, p), "|i1", ("page_id", "panel_id"), data, None)
    out["panel_mask"].attrs["dtype"] = "bool"
    out["text_content"] = _empty(group, "text_content", (n, p), f"<U{text_width}", ("page_id", "panel_id"), data, None)
    out["status"] = _empty(group, "status", (n,), "|i1", ("page_id",), data, None)
    bar = tqdm(total=n, desc="format 2", unit="page", disable=not progress)
    for start in range(0, n, CHUNK_ROWS):
        end = min(start + CHUNK_ROWS, n)
        for name, _ in FLOATS:
            values = np.asarray(source[name][start:end], dtype=np.float32)
            out[name][start:end] = values
        out["panel_mask"][start:end] = np.asarray(source["panel_mask"][start:end]).astype(np.int8)
        out["text_content"][start:end] = _texts(source, start, n).astype(f"<U{text_width}")
        out["status"][start:end] = np.asarray(source["status"][start:end]).astype(np.int8)
        bar.update(end - start)
    bar.close()
    for name in COLUMNS:
        strings = [str(v) for v in np.asarray(source[name][:n]).tolist()]
        _array(group, name, np.array(strings, dtype=f"<U{_width(strings)}"), ("page_id",))
    zarr.consolidate_metadata(tmp, zarr_format=2)


def _texts(source: dict[str, zarr.Array], start: int, n: int) -> np.ndarray:
    """One block's `text_content` as the v2 generator stored it: the Python repr of each panel's text dict."""
    cells = np.asarray(source["text_content"][start : min(start + CHUNK_ROWS, n)]).astype(object)
    return np.vectorize(_repr, otypes=[object])(cells) if cells.size else cells


def _repr(cell: Any) -> str:
    text = str(cell)
    if not text:
        return ""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return str(value)


def _width(values: list[str]) -> int:
    return max((len(v) for v in values), default=1) or 1


def _empty(
    group: zarr.Group, name: str, shape: tuple[int, ...], dtype: str, dims: tuple[str, ...], codec: Any, fill: Any
) -> zarr.Array:
    """A data variable, chunked and compressed as the v2 generator's."""
    return group.create_array(
        name,
        shape=shape,
        chunks=(CHUNK_ROWS, *shape[1:]),
        dtype=dtype,
        compressors=codec,
        fill_value=fill,
        attributes={"_ARRAY_DIMENSIONS": list(dims), "coordinates": COORDINATES},
    )


def _array(group: zarr.Group, name: str, values: np.ndarray, dims: tuple[str, ...]) -> None:
    """A coordinate written whole (zarr's default compressor, as xarray wrote them)."""
    attributes: dict[str, Any] = {"_ARRAY_DIMENSIONS": list(dims)}
    arr = group.create_array(name, shape=values.shape, dtype=values.dtype, fill_value=None, attributes=attributes)
    if values.size:
        arr[...] = values
