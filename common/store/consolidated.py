"""The copy of every array's metadata in the root `zarr.json`, kept current by whoever grows or cuts the arrays.

`xarray.open_zarr(path)` with no arguments (as the users' scripts open a store) looks for
consolidated metadata first and warns, then reads every array's own `zarr.json`, when there is
none. The copy is the children's metadata as they are on disk, rewritten after every change of
shape (a job registered, a snapshot cut), in the same atomic write of the root `zarr.json` as the
row counts: a reader of the copy sees shapes and `committed_rows` of one moment. The copy is for
readers of other tools: ours (the writer, `summaries`, `diagnose`, the search layer, `serve`) open
the arrays without it (`use_consolidated=False`), so none acts on a shape the copy has not caught
up with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

# The key of the root `zarr.json` that holds the copy (zarr-python 3's inline form).
KEY = "consolidated_metadata"


def consolidated(path: str | os.PathLike[str], replacing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The inline consolidated metadata of the store at `path`, from its children's `zarr.json` files;
    the children named in `replacing` as given there instead (a snapshot's arrays, cut)."""
    given = replacing or {}
    return {"kind": "inline", "must_understand": False, "metadata": {**_children(Path(path), set(given)), **given}}


def _children(folder: Path, skip: Collection[str] = ()) -> dict[str, Any]:
    """The metadata of every child node of `folder` but those named in `skip` (given, not read)."""
    out: dict[str, Any] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        meta_path = Path(entry.path) / "zarr.json"
        if entry.name in skip or not entry.is_dir() or entry.name.startswith(".") or not meta_path.is_file():
            continue
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
        if meta.get("node_type") == "group":
            meta[KEY] = {"kind": "inline", "must_understand": False, "metadata": _children(Path(entry.path))}
        out[entry.name] = meta
    return out
