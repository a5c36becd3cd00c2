"""The users' earlier stores, made by generate_embeddings_zarr_v2: how to tell one, and what an import of one records.

Such a store is a Zarr format 2 group (`.zgroup`), written by xarray, with `page_embeddings` among
its arrays and the root attribute `model_name`; it has no per-row status, no checkpoint identity
and no manifests (docs/store.md, "Stores made by generate_embeddings_zarr_v2"). Nothing here
writes to one: the read commands read it through a converted copy, and `comix-embed import-v2`
converts it into a store of ours, which records where it came from in `IMPORT_ATTRIBUTE`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec

from comix_embed.common import config

GENERATOR = "generate_embeddings_zarr_v2"
# The root attribute of a store of ours made by `import-v2` (the `V2Import` record).
IMPORT_ATTRIBUTE = "imported_from_v2"
# What an imported store records as its checkpoint when none was vouched for: new pages need one.
NO_CHECKPOINT = "none: imported from generate_embeddings_zarr_v2 without --checkpoint"


class V2Import(msgspec.Struct, kw_only=True):
    """Where an imported store came from, and what the import found (root attribute `imported_from_v2`)."""

    path: str  # the v2 store, as given
    fingerprint: str  # of its metadata and chunk files when the import began (`fingerprint`)
    rows: int  # rows of the v2 store
    checkpoint: str  # "vouched" (the user named the checkpoint with --checkpoint, not verified) or "none"
    finished: bool = False  # False while the import is under way: the store is not whole yet
    duplicates: int = 0  # rows repeating an earlier row's page id: left out
    cut_paths: int = 0  # rows whose manifest_path the generator cut at its column width: failed
    cut_texts: int = 0  # panels whose text the generator cut at 512 characters: kept, marked
    nan_pages: int = 0  # rows whose page embedding is NaN: failed
    unwritten: int = 0  # rows of zeros, never written by the generator: failed
    counted_rows: int = 0  # the counts above cover rows [0, counted_rows) of the import


def find_v2_store(path: str | os.PathLike[str]) -> Path | None:
    """The v2 store at `path` or in the output folder `path`, or None when there is none."""
    given = Path(path)
    for candidate in (given, given / config.STORE_NAME):
        if is_v2_store(candidate):
            return candidate
    return None


def is_v2_store(path: Path) -> bool:
    """A Zarr format 2 group with a `page_embeddings` array: what the v2 generator writes."""
    try:
        group = json.loads((path / ".zgroup").read_bytes())
    except (OSError, ValueError):
        return False
    return (
        isinstance(group, dict) and group.get("zarr_format") == 2 and (path / "page_embeddings" / ".zarray").is_file()
    )


def describe(path: Path) -> str:
    """What lies at `path`, for an error that says why it is not a store we read."""
    if not path.exists():
        return "nothing: no such file or folder"
    if not path.is_dir():
        return "a file, not a folder"
    if (path / ".zarray").is_file() or _node_type(path) == "array":
        return "a single Zarr array, not a group of arrays"
    if (path / ".zgroup").is_file():
        arrays = sorted(p.name for p in path.iterdir() if (p / ".zarray").is_file())
        return f"a Zarr format 2 group without page_embeddings (its arrays: {', '.join(arrays) or 'none'})"
    if _node_type(path) == "group":
        return "a Zarr format 3 group without comix-embed's root attributes"
    names = sorted(p.name for p in path.iterdir())[:8]
    return f"a folder with neither zarr.json nor .zgroup (it holds: {', '.join(names) or 'nothing'})"


def _node_type(path: Path) -> str | None:
    try:
        meta = json.loads((path / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return None
    return meta.get("node_type") if isinstance(meta, dict) else None
