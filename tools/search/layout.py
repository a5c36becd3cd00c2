"""The index folder beside a store: generation folders, the CURRENT pointer, vector segments.

    <output_dir>/index/
        CURRENT                 the name of the generation in use ("gen_000003"), replaced atomically
        gen_000003/meta.json    what the generation covers (an `IndexMeta`: rows, the store's identity, its parts)
        gen_000003/...          faiss indexes, position -> row (and slot) arrays, status snapshot
        segments/*.f16          float16 unit vectors (re-ranking), written once, shared by generations
        segments/text_*/        the page text's word index of the rows a build added (text.Postings)

A build writes a new generation folder completely (every file fsynced), then replaces CURRENT:
a build killed at any instant leaves CURRENT naming the previous, whole generation. What a killed
build left (a generation folder CURRENT does not name, segments no generation uses) is removed by
the next build. One build at a time: the builder holds `index/build.lock`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import numpy as np

from comix_embed.common import config
from comix_embed.common.durable import fsync_dir
from comix_embed.common.errors import UsageError
from comix_embed.common.messages import MalformedMessage, convert, decode_json, encode_json

CURRENT = "CURRENT"
SEGMENTS = "segments"
META = "meta.json"
FORMAT = 1


class IndexedStore(msgspec.Struct, frozen=True, kw_only=True):
    """The store's attributes that make it the same store: a store made afresh under the same path,
    or with another model, is another store, and an index of the old one is never used for it
    (None where the store has no such attribute)."""

    created: str | None = None
    checkpoint_sha256: str | None = None
    tokenizer: str | None = None
    encoder_mode: str | None = None
    embedding_dim: int | None = None
    max_panels: int | None = None


class Segment(msgspec.Struct, kw_only=True):
    """One file under `segments/` and how many entries it holds."""

    file: str
    count: int


class VectorPart(msgspec.Struct, kw_only=True):
    """One kind's vectors (pages or panels): its faiss index (flat, or IVF with `lists` lists
    trained on `trained_on` vectors), its entries (`live` of them not replaced since), and its
    float16 segments."""

    type: str
    lists: int
    trained_on: int
    entries: int
    live: int
    segments: list[Segment]


class TextPart(msgspec.Struct, kw_only=True):
    """The page text's word index, one segment per build that added rows."""

    segments: list[Segment]


class IndexParts(msgspec.Struct, kw_only=True):
    pages: VectorPart
    panels: VectorPart
    text: TextPart


class IndexMeta(msgspec.Struct, kw_only=True):
    """`gen_NNNNNN/meta.json`: what one generation covers (committed rows [0, `rows`) of the store
    named by `store`) and its parts."""

    format: int
    generation: int
    store: IndexedStore
    store_path: str
    rows: int
    built: str
    parts: IndexParts


def index_dir(store: Path) -> Path:
    """`<output_dir>/index` for a store named as the pipeline names it, else `<store>.index` beside it."""
    if store.name == config.STORE_NAME:
        return store.parent / config.INDEX_DIR_NAME
    return store.with_name(store.name.removesuffix(".zarr") + ".index")


def store_identity(attrs: Mapping[str, Any]) -> IndexedStore:
    return convert(attrs, IndexedStore, "the store's attributes")


def generation_name(number: int) -> str:
    return f"gen_{number:06d}"


def current_generation(folder: Path) -> Path | None:
    """The generation CURRENT names (None: no index yet)."""
    try:
        name = (folder / CURRENT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    path = folder / name
    if not (path / META).is_file():
        raise UsageError(f"{folder / CURRENT} names {name}, which has no {META}: remove {folder} and build again")
    return path


def generation_in_use(store: Path) -> int | None:
    """The number of the generation CURRENT names (None: no index); one small file read."""
    try:
        name = (index_dir(store) / CURRENT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return int(name.removeprefix("gen_"))


def read_meta(generation: Path) -> IndexMeta:
    """A generation's meta; UsageError for one of another format or one that does not decode."""
    return read_format(generation / META, IndexMeta, "index", FORMAT)


Versioned = TypeVar("Versioned", bound=msgspec.Struct)


def read_format(path: Path, kind: type[Versioned], what: str, version: int) -> Versioned:
    """A meta file beside a store (the index's, the map's) decoded as `kind`, whose `format` must be
    `version`; UsageError for one of another format or one that does not decode."""
    try:
        meta = decode_json(path.read_bytes(), kind, str(path))
    except MalformedMessage as exc:
        raise UsageError(str(exc)) from None
    found = getattr(meta, "format", None)
    if found != version:
        raise UsageError(f"{path}: {what} format {found!r}, this version reads {version}")
    return meta


def generation_number(generation: Path) -> int:
    return int(generation.name.removeprefix("gen_"))


@contextmanager
def build_lock(folder: Path, command: str = "index") -> Iterator[None]:
    """Held while building: a second `comix-embed COMMAND` on the same store is refused, not raced."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "build.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another `comix-embed {command}` is building {folder}; wait for it to finish") from None
        yield


def remove_leftovers(folder: Path, keep: Path | None) -> None:
    """Generation folders other than `keep`, and segments `keep` does not use (a killed build's)."""
    used = set(segment_files(read_meta(keep))) if keep is not None else set()
    for path in folder.glob("gen_*"):
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)
    for path in (folder / SEGMENTS).glob("*"):
        if path.name not in used:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def segment_files(meta: IndexMeta) -> list[str]:
    parts = meta.parts
    return [s.file for part in (parts.pages, parts.panels, parts.text) for s in part.segments]


def save_array(path: Path, array: np.ndarray) -> None:
    """An .npy file, fsynced."""
    with open(path, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def publish(folder: Path, generation: Path, meta: IndexMeta) -> None:
    """Write the generation's meta, make it durable, then point CURRENT at it (atomically)."""
    with open(generation / META, "wb") as fh:
        fh.write(msgspec.json.format(encode_json(meta), indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(generation)
    fsync_dir(folder / SEGMENTS)
    fsync_dir(folder)
    tmp = folder / f".{CURRENT}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(generation.name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / CURRENT)
    fsync_dir(folder)
