"""The layout and zarr-vs-xarray checks: the arrays against the schema, and as xarray sees them.

- layout: every array of the schema, its shape, dtype and dimension names; the dimension
  coordinates; committed_rows <= registered_rows <= the arrays' rows, equal to the registered rows
  (a store made before arrays held exactly the registered rows is warned about).
- consolidated copy: the root `zarr.json`'s copy of every array's metadata (what `xarray.open_zarr`
  reads first) is that of the arrays, shapes included; a store without one is warned about.
- origin: a store imported from a generate_embeddings_zarr_v2 store says so, and fails while the
  import is not finished.
- zarr-vs-xarray: the store opened with `zarr.open_group(mode="r")` and with
  `xarray.open_zarr(consolidated=False)` has the same variables, shapes and dtypes, and exactly
  the same committed `page_embeddings`, `status` and `page_id` values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from comix_embed.common import config
from comix_embed.common.messages import convert
from comix_embed.common.store import consolidated
from comix_embed.common.store.schema import row_arrays
from comix_embed.common.store.v2 import GENERATOR, IMPORT_ATTRIBUTE, V2Import
from comix_embed.tools.diagnose.facts import COMPARED, RowFacts, dtype_label
from comix_embed.tools.diagnose.load import Store
from comix_embed.tools.diagnose.report import Check, listed


def check_layout(s: Store) -> Check:
    check = Check("layout")
    d, p = int(s.attrs.get("embedding_dim", 0)), int(s.attrs.get("max_panels", 0))
    lengths = set()
    for name, spec in row_arrays().items():
        if name not in s.arrays:
            check.fails.append(f"array {name} is missing")
            continue
        arr = s.arrays[name]
        lengths.add(arr.shape[0])
        check.fails += array_problems(name, arr, spec.shape(arr.shape[0], d, p), spec.dtype, ("page_id", *spec.dims))
    if len(lengths) > 1:
        problem = f"page_id arrays have different lengths {sorted(lengths)} (grown one after another)"
        (check.warns if s.writer_running else check.fails).append(problem)
    for name, size in (("panel_id", p), ("embedding_dim", d), ("coord_dim", 4)):
        if name not in s.arrays or not np.array_equal(s.read(name), np.arange(size)):
            check.fails.append(f"dimension coordinate {name} is not 0..{size - 1}")
    if not 0 <= s.committed <= s.registered <= s.array_rows:
        check.fails.append(
            f"committed_rows {s.committed} <= registered_rows {s.registered} <= array rows {s.array_rows} does not hold"
        )
    elif s.registered < s.array_rows:
        check.warns.append(
            f"the arrays hold {s.array_rows} rows for {s.registered} registered: xarray shows "
            f"{s.array_rows - s.registered} blank pages past them (a store made before arrays held exactly the "
            "registered rows, or a job being registered)"
        )
    if s.attrs.get("schema_version") != config.SCHEMA_VERSION:
        check.warns.append(f"schema_version {s.attrs.get('schema_version')!r}, this tool knows {config.SCHEMA_VERSION}")
    (check.warns if s.writer_running else check.fails).extend(_consolidated_problems(s))
    if not check.fails:
        check.notes.append(
            f"{len(row_arrays())} page arrays of {s.array_rows} rows, d={d}, {p} panel slots, dtypes and shapes as specified"
        )
    return check


def _consolidated_problems(s: Store) -> list[str]:
    copy = s.root_meta.get(consolidated.KEY)
    if not isinstance(copy, dict):
        return [
            "no consolidated metadata in the root zarr.json: xarray.open_zarr(path) warns (the writer adds it "
            "when it registers the next job)"
        ]
    metadata = copy.get("metadata", {})
    problems = []
    for name, arr in s.arrays.items():
        shape = (metadata.get(name) or {}).get("shape")
        if shape is None or tuple(shape) != tuple(arr.shape):
            problems.append(f"consolidated metadata gives {name} the shape {shape}, the array has {list(arr.shape)}")
    return problems[:5]


def check_origin(s: Store) -> Check:
    check = Check("origin")
    raw = s.attrs.get(IMPORT_ATTRIBUTE)
    if raw is None:
        check.notes.append("made by comix-embed")
        return check
    record = convert(raw, V2Import, f"attribute {IMPORT_ATTRIBUTE}")
    if not record.finished:
        check.fails.append(
            f"an import from {record.path} is not finished ({record.counted_rows} of {record.rows} rows): "
            "run `comix-embed import-v2` again to finish it"
        )
        return check
    checkpoint = "vouched for, not verified" if record.checkpoint == "vouched" else "none (read-only for embedding)"
    check.notes.append(
        f"imported from {GENERATOR} store {record.path} ({record.rows} rows, {record.duplicates} repeated left out); "
        f"checkpoint {checkpoint}; its rows have statuses derived from their embeddings and manifests made by the import"
    )
    return check


def array_problems(name: str, arr: zarr.Array, shape: tuple[int, ...], dtype: str, dims: tuple[str, ...]) -> list[str]:
    problems = []
    if tuple(arr.shape) != shape:
        problems.append(f"{name} has shape {tuple(arr.shape)}, expected {shape}")
    if dtype_label(arr.dtype) != dtype:
        problems.append(f"{name} has dtype {arr.dtype}, expected {dtype}")
    # zarr v2 metadata has no dimension names: such an array has none
    names = getattr(arr.metadata, "dimension_names", None)
    if tuple(names or ()) != dims:
        problems.append(f"{name} has dimension names {names}, expected {dims}")
    return problems


def check_xarray(s: Store, ds: Any, error: str, facts: RowFacts | None) -> Check:
    check = Check("zarr-vs-xarray")
    if ds is None:
        check.fails.append(f"xarray.open_zarr(consolidated=False) fails: {error}")
        return check
    ours = set(s.arrays)
    theirs = set(ds.variables)
    if ours != theirs:
        check.fails.append(f"variables only in zarr: {sorted(ours - theirs)}, only in xarray: {sorted(theirs - ours)}")
    for name in sorted(ours & theirs):
        arr, var = s.arrays[name], ds.variables[name]
        if tuple(arr.shape) != tuple(var.shape) or dtype_label(arr.dtype) != dtype_label(var.dtype):
            check.fails.append(f"{name}: zarr {tuple(arr.shape)} {arr.dtype}, xarray {tuple(var.shape)} {var.dtype}")
    for name, rows in (facts.xarray_diff if facts else {}).items():
        if rows:
            check.fails.append(f"{name} differs between zarr and xarray in rows {listed(rows)}")
    if not check.fails:
        check.notes.append(
            f"{len(ours)} variables, same shapes and dtypes; "
            f"committed {', '.join(COMPARED)} identical ({min(s.committed, s.rows)} rows)"
        )
    return check
