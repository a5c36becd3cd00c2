"""Build synthetic "v2 stores": combined_embeddings.zarr as the users' old generate_embeddings_zarr_v2.py wrote it.

The importer of old stores, its tests and its benchmark need such stores without the old generator (it needs
zarr-python 2, torch and a checkpoint). The layout is the one that generator left: Zarr format 2 written by
xarray's ``to_zarr`` (``.zgroup``/``.zarray``/``.zattrs``, ``.`` chunk keys, consolidated
``.zmetadata``), rows in list order, duplicates kept, and the sidecars ``inputs_used.jsonl`` and
``audit_mapping.jsonl`` next to the store. The quirks of the original are reproduced on purpose:

- ``panel_mask`` is stored as ``|i1`` with the attribute ``"dtype": "bool"`` (what xarray did with zarr 2;
  xarray with zarr 3 would store ``|b1``, so the arrays are made with zarr itself, not with ``to_zarr``);
- ``text_content`` holds the Python repr of each panel's text dict, silently cut to 512 characters;
- padding slots of ``panel_embeddings`` hold the same nonzero vector (the model embeds the black padding
  image too), and ``reading_order`` padding slots hold junk indices (its argmax was not masked);
- a page with zero panels has NaN ``page_embeddings`` and ``attention_weights`` (softmax over nothing);
- an unwritten row stays all zeros (not NaN), with an empty mask and empty texts;
- ``created_date`` holds a working directory, not a date;
- string coordinates have the fixed width of their longest value, and longer values written later
  (``--incremental``) were cut: ``manifest_width`` reproduces that.

Every value derives from ``(seed, row)`` through a counter-based hash, so a block of 1000 rows is computed
with whole-array numpy operations, any single row can be recomputed alone (``v2_values``), and the same
inputs give the same bytes.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.core.array_spec import ArrayConfigParams

STORE_NAME = "combined_embeddings.zarr"
MODEL_NAME = "CLOSURE-Lite-Simple"
MAX_PANELS = 12
COORD_DIM = 4
TEXT_WIDTH = 512
BLOCK_ROWS = 1000
# What the original recorded as created_date: str(Path().cwd()). A fixed directory keeps the bytes deterministic.
CREATED_DATE = "/home/comics/Comic-Analysis"
# xarray's "coordinates" attribute on every data variable: the non-index coordinates, sorted.
COORDINATES_ATTR = "issue manifest_path page_num series source volume"
DATA_VARS = (
    "panel_embeddings",
    "page_embeddings",
    "attention_weights",
    "reading_order",
    "panel_coordinates",
    "text_content",
    "panel_mask",
)
STRING_COORDS = ("page_id", "manifest_path", "source", "series", "volume", "issue", "page_num")

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


@dataclass
class V2Page:
    """One row as the generator would have written it."""

    manifest_path: str  # the raw list line (the DataSpec JSON's path), stored as is in manifest_path
    panels: int = 3  # 0 => "a page with zero panels" (NaN page embedding); otherwise 1..12
    written: bool = True  # False => a row the run never wrote: all zeros
    # per-panel text dicts {'dialogue': [...], 'narration': [...], 'sfx': [...]}, one per panel; None => generated
    texts: list[dict[str, Any]] | None = None


# ---------------------------------------------------------------------------------------------- hashing


def _mix_int(z: int) -> int:
    """splitmix64's finaliser on a Python int, for the per-stream keys."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _key(seed: int, stream: int) -> np.uint64:
    """A key per (seed, array): the arrays of one row are independent of each other."""
    return np.uint64(_mix_int((seed * _GOLDEN + stream * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & _MASK64))


def _bits(key: np.uint64, rows: np.ndarray, width: int) -> np.ndarray:
    """(len(rows), width) uint64 hashes of counter row*width+column: a row's values do not depend on its block."""
    z = (rows[:, None] * width + np.arange(width)).astype(np.uint64)
    z *= np.uint64(_GOLDEN)  # uint64 array arithmetic wraps silently, which is what a hash wants
    z += key
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def _top24(bits: np.ndarray) -> np.ndarray:
    """The top 24 bits: an integer below 2**24, exact in float32."""
    return bits >> np.uint64(40)


def _signed_unit(bits: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1), computed exactly (so a row alone and a row in a block agree bit for bit)."""
    u = _top24(bits).astype(np.float32)
    u *= np.float32(2.0**-23)
    u -= np.float32(1.0)
    return u


def _below(bits: np.ndarray, bound: np.ndarray | int) -> np.ndarray:
    """Integers in [0, bound), uniform enough, without float rounding."""
    return (_top24(bits) * np.asarray(bound, dtype=np.uint64)) >> np.uint64(24)


# ---------------------------------------------------------------------------------------------- texts

_DIALOGUE = (
    "NO ACTION.",
    "Get down!",
    "We have to find him before midnight.",
    "You call that a plan?",
    "I'm not leaving without her.",
    "WHAT WAS THAT?",
    "It's too quiet...",
    "Trust me. Just this once.",
    "The city never sleeps, kid.",
    "Okay, what's the worst that could happen?",
    'She said "wait", so we wait.',
    "Don't look down!",
)
_NARRATION = (
    "Meanwhile, across town...",
    "A character stands in the rain, looking up at a lit window.",
    "Two figures argue in a cramped kitchen; dishes are piled in the sink.",
    "The next morning.",
    "A wide shot of a city skyline at dusk, with searchlights crossing the clouds.",
    "Close-up of a hand gripping a torn photograph.",
    "Later, at the docks.",
    "A masked figure leaps between rooftops while a helicopter circles overhead.",
)
_SFX = ("BLAM!", "KRAKA-BOOM", "thwip", "SKREEE", "tap tap", "WHUMP")
# Long VLM scene descriptions were common in narration; some go past the 512-character cut.
_LONG_NARRATION = (
    "The panel shows a sprawling street market seen from above: awnings in faded reds and blues, crates of "
    "fruit stacked against brick walls, a crowd pressing toward a stage where a figure in a long coat raises "
    "both arms. In the foreground a child tugs at a vendor's sleeve and points at something off-panel, while "
    "two uniformed guards exchange a look that suggests they have noticed it too. Smoke curls from a chimney "
    "on the left, and the light suggests late afternoon, long shadows falling across the cobblestones toward "
    "the bottom right corner of the page, where the gutter separates this scene from the next."
)


def _generated_text(h: Sequence[int]) -> dict[str, list[str]]:
    """A plausible DataSpec text dict from four hash values (the DataSpec writers' three buckets, in order)."""
    h0, h1, h2, _ = h
    dialogue = [_DIALOGUE[(h0 >> (8 * i)) % len(_DIALOGUE)] for i in range(h0 % 3)]
    if h1 % 40 == 0:
        narration = [_LONG_NARRATION]
    elif h1 % 3 == 0:
        narration = []
    else:
        narration = [_NARRATION[(h1 >> 8) % len(_NARRATION)]]
    sfx = [_SFX[(h2 >> 8) % len(_SFX)]] if h2 % 4 == 0 else []
    return {"dialogue": dialogue, "narration": narration, "sfx": sfx}


def _panel_texts(row: int, page: V2Page, text_bits: np.ndarray) -> list[str]:
    """The 12 text_content strings of a written row: str(text dict), cut at 512, '' past the panels."""
    k = page.panels
    if page.texts is not None:
        if len(page.texts) != k:
            raise ValueError(f"row {row}: {len(page.texts)} texts for {k} panels")
        dicts: Sequence[Any] = page.texts
    else:
        dicts = [_generated_text(text_bits[j].tolist()) for j in range(k)]
    return [str(t)[:TEXT_WIDTH] for t in dicts] + [""] * (MAX_PANELS - k)


# ---------------------------------------------------------------------------------------------- values

# One hash stream per array, so that changing d changes only the embeddings.
_S_PAGE, _S_PANEL, _S_PAD, _S_ATTN, _S_ORDER, _S_COORDS, _S_TEXT = range(1, 8)
# Pixel boxes: x, y from 0, w, h from 1, each below its bound (pages are about 1000 x 1500 pixels).
_BOX_LOW = np.array([0, 0, 1, 1], dtype=np.uint64)
_BOX_SPAN = np.array([1000, 1400, 700, 900], dtype=np.uint64)


def _check(row: int, page: V2Page) -> None:
    if not 0 <= page.panels <= MAX_PANELS:
        raise ValueError(f"row {row}: panels must be 0..{MAX_PANELS}, not {page.panels}")


def _block_values(start: int, pages: Sequence[V2Page], d: int, seed: int) -> dict[str, np.ndarray]:
    """The data variables of rows start..start+len(pages), whole-block numpy except the text strings.

    Every element depends only on (seed, row, slot), never on the block, which is why ``v2_values`` can call
    this for one row and get the bytes the block writer wrote.
    """
    m = len(pages)
    rows = np.arange(start, start + m, dtype=np.int64)
    for i, page in enumerate(pages):
        _check(start + i, page)
    k = np.array([p.panels for p in pages], dtype=np.int64)
    written = np.array([p.written for p in pages], dtype=bool)
    slots = np.arange(MAX_PANELS)
    mask = (slots < k[:, None]) & written[:, None]  # (m, 12): the dataset's panel_mask
    empty = written & (k == 0)  # "a page with zero panels": NaN page embedding and attention
    blank = ~written | empty  # rows whose per-panel arrays are all zero

    page_emb = _signed_unit(_bits(_key(seed, _S_PAGE), rows, d))
    page_emb[empty] = np.nan
    page_emb[~written] = 0.0

    panel_emb = _signed_unit(_bits(_key(seed, _S_PANEL), rows, MAX_PANELS * d)).reshape(m, MAX_PANELS, d)
    # The padding slots: the fused embedding of a black image, empty text and zero composition, the same every time.
    pad = _signed_unit(_bits(_key(seed, _S_PAD), np.zeros(1, dtype=np.int64), d))[0] * np.float32(0.25)
    panel_emb[~mask] = pad
    panel_emb[blank] = 0.0

    # Attention: like the model's masked softmax, exactly 0 on padding and summing to 1 (to float32 rounding).
    raw = (_top24(_bits(_key(seed, _S_ATTN), rows, MAX_PANELS)).astype(np.float64) + 2.0**22) * mask
    total = raw[:, 0].copy()
    for j in range(1, MAX_PANELS):  # a fixed summation order: the same sum for a row alone and in a block
        total += raw[:, j]
    attention = (raw / np.where(total > 0, total, 1.0)[:, None]).astype(np.float32)
    attention[empty] = np.nan

    # reading_order: the argmax next-panel index as float; below k on valid slots, any of 0..11 on padding.
    bound = np.where(slots < k[:, None], k[:, None], MAX_PANELS)
    order = _below(_bits(_key(seed, _S_ORDER), rows, MAX_PANELS), bound).astype(np.float32)
    order[blank] = 0.0

    box_bits = _bits(_key(seed, _S_COORDS), rows, MAX_PANELS * COORD_DIM).reshape(m, MAX_PANELS, COORD_DIM)
    coords = (_below(box_bits, _BOX_SPAN) + _BOX_LOW).astype(np.float32)
    coords[~mask] = 0.0

    texts = np.zeros((m, MAX_PANELS), dtype=f"<U{TEXT_WIDTH}")
    text_bits = _bits(_key(seed, _S_TEXT), rows, MAX_PANELS * 4).reshape(m, MAX_PANELS, 4)
    for i, page in enumerate(pages):
        if page.written and page.panels > 0:
            texts[i] = _panel_texts(start + i, page, text_bits[i])

    return {
        "page_embeddings": page_emb,
        "panel_embeddings": panel_emb,
        "attention_weights": attention,
        "reading_order": order,
        "panel_coordinates": coords,
        "panel_mask": mask,
        "text_content": texts,
    }


def v2_values(row: int, page: V2Page, d: int = 384, seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of one row exactly as written (deterministic from seed and row), for tests to compare after import.

    Keys: page_embeddings (d,), panel_embeddings (12,d), attention_weights (12,), reading_order (12,),
    panel_coordinates (12,4), panel_mask (12,) bool, text_content (12,) str (already repr'd and cut at 512).
    """
    return {name: values[0] for name, values in _block_values(row, [page], d, seed).items()}


# ---------------------------------------------------------------------------------------------- coordinates


def _source(line: str) -> str:
    """The original's source inference from the list line."""
    return "calibre" if "calibre" in line.lower() else "amazon"


_VOLUME_RE = re.compile(r"(v\d+|\(\d{4}-\d{4}\)|\d{4})")
_VOLUME_SUFFIX_RE = re.compile(r"\s+(v\d+|\(\d{4}-\d{4}\)|\d{4})")
_ISSUE_RE = re.compile(r"(\d{3})")
_PAGE_RE = re.compile(r"p(\d{3})")


def _standardized(line: str, source: str) -> tuple[str, str, str, str]:
    """series, volume, issue, page_num as v2 derived them (standardize_path, then split its id on '_').

    Splitting the id on '_' is lossy on purpose: a volume like "(2016-2018)" or a series with digits
    comes out as the original stored it, not as a careful parser would.
    """
    parts = Path(line).parts
    if len(parts) < 2:
        std_id = f"{source}_unknown_unknown_000_p000"
    else:
        series_dir, filename = parts[-2], parts[-1]
        cleaned = re.sub(r"[^\w\s]", "", _VOLUME_SUFFIX_RE.sub("", series_dir))
        series = re.sub(r"\s+", "_", cleaned.strip()).lower()
        volume_match = _VOLUME_RE.search(series_dir)
        issue_match = _ISSUE_RE.search(filename)
        page_match = _PAGE_RE.search(filename)
        volume = volume_match.group(1) if volume_match else "unknown"
        issue = issue_match.group(1) if issue_match else "000"
        page_num = f"p{page_match.group(1)}" if page_match else "p000"
        std_id = f"{source}_{series}_{volume}_{issue}_{page_num}"
    pieces = std_id.split("_")
    return "_".join(pieces[1:-3]), pieces[-3], pieces[-2], pieces[-1]


def _row_coords(line: str) -> tuple[str, str, str, str, str, str, str]:
    """The seven string coordinates of a row, in STRING_COORDS order."""
    source = _source(line)
    return (os.path.normcase(os.path.normpath(line)), line, source, *_standardized(line, source))


# ---------------------------------------------------------------------------------------------- writing


def _blosc_zstd() -> numcodecs.Blosc:
    """The generator's compressor for the data variables."""
    return numcodecs.Blosc(cname="zstd", clevel=6, shuffle=numcodecs.Blosc.BITSHUFFLE)


def _blosc_default() -> numcodecs.Blosc:
    """zarr's default compressor for format 2, which the coordinates got."""
    return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)


def _rows(pages: Sequence[V2Page] | Callable[[int], V2Page], n: int) -> Iterator[tuple[int, list[V2Page]]]:
    """(start, pages) per block of BLOCK_ROWS rows."""
    for start in range(0, n, BLOCK_ROWS):
        stop = min(n, start + BLOCK_ROWS)
        if callable(pages):
            yield start, [pages(i) for i in range(start, stop)]
        else:
            yield start, list(pages[start:stop])


def _first_pass(
    output_dir: Path, pages: Sequence[V2Page] | Callable[[int], V2Page], n: int, manifest_width: int | None
) -> dict[str, int]:
    """Write inputs_used.jsonl (the original wrote it first) and find each string coordinate's fixed width.

    The widths must be known before the arrays exist, and a streamed 1.2M-row build cannot keep the strings,
    so the rows are read twice.
    """
    widths = dict.fromkeys(STRING_COORDS, 1)  # numpy gives an array of empty strings the width 1
    with open(output_dir / "inputs_used.jsonl", "w", encoding="utf-8") as inputs:
        for start, block in _rows(pages, n):
            lines = []
            for i, page in enumerate(block):
                values = _row_coords(page.manifest_path)
                for name, value in zip(STRING_COORDS, values):
                    widths[name] = max(widths[name], len(value))
                record = {"index": start + i, "path": page.manifest_path, "source": values[2]}
                lines.append(json.dumps(record) + "\n")
            inputs.writelines(lines)
    if manifest_width is not None:
        widths["page_id"] = widths["manifest_path"] = manifest_width
    return widths


def _create_arrays(group: zarr.Group, n: int, d: int, widths: dict[str, int]) -> dict[str, zarr.Array]:
    """The skeleton's arrays, with the metadata xarray's to_zarr gave them under zarr 2."""
    # zarr 3 skips chunks equal to the fill value; zarr 2.18 (the original) wrote every chunk.
    config: ArrayConfigParams = {"write_empty_chunks": True}
    arrays: dict[str, zarr.Array] = {}

    def data_var(
        name: str,
        dims: tuple[str, ...],
        shape: tuple[int, ...],
        dtype: str,
        fill: Any,
        extra: dict[str, Any] | None = None,
    ) -> None:
        arrays[name] = group.create_array(
            name,
            shape=shape,
            chunks=(BLOCK_ROWS, *shape[1:]),
            dtype=dtype,
            compressors=_blosc_zstd(),
            filters=None,
            fill_value=fill,
            attributes={"coordinates": COORDINATES_ATTR, "_ARRAY_DIMENSIONS": list(dims), **(extra or {})},
            config=config,
        )

    def coord(name: str, dim: str, shape: tuple[int], dtype: str) -> zarr.Array:
        arrays[name] = group.create_array(
            name,
            shape=shape,
            dtype=dtype,
            compressors=_blosc_default(),
            filters=None,
            fill_value=None,
            attributes={"_ARRAY_DIMENSIONS": [dim]},
            config=config,
        )
        return arrays[name]

    for name in STRING_COORDS:  # filled block by block
        coord(name, "page_id", (n,), f"<U{widths[name]}")
    for name, size in (("panel_id", MAX_PANELS), ("embedding_dim", d), ("coord_dim", COORD_DIM)):
        coord(name, name, (size,), "<i8")[:] = np.arange(size, dtype=np.int64)

    nan = float("nan")
    data_var("panel_embeddings", ("page_id", "panel_id", "embedding_dim"), (n, MAX_PANELS, d), "<f4", nan)
    data_var("page_embeddings", ("page_id", "embedding_dim"), (n, d), "<f4", nan)
    data_var("attention_weights", ("page_id", "panel_id"), (n, MAX_PANELS), "<f4", nan)
    data_var("reading_order", ("page_id", "panel_id"), (n, MAX_PANELS), "<f4", nan)
    data_var("panel_coordinates", ("page_id", "panel_id", "coord_dim"), (n, MAX_PANELS, COORD_DIM), "<f4", nan)
    data_var("text_content", ("page_id", "panel_id"), (n, MAX_PANELS), f"<U{TEXT_WIDTH}", None)
    # xarray's bool encoding for zarr 2: int8 on disk, "dtype": "bool" to decode it back.
    data_var("panel_mask", ("page_id", "panel_id"), (n, MAX_PANELS), "|i1", None, {"dtype": "bool"})
    return arrays


def write_v2_store(
    output_dir: Path,
    pages: list[V2Page] | Callable[[int], V2Page],
    n: int | None = None,
    *,
    d: int = 384,
    seed: int = 0,
    manifest_width: int | None = None,
    progress: bool = False,
) -> Path:
    """Write the store (and sidecars) and return the path of combined_embeddings.zarr.

    `pages` as a callable with `n` streams (row -> V2Page) for the benchmark; it is called twice per row (once
    to size the string coordinates, once to write), so it must be deterministic. `manifest_width` forces the
    fixed width of manifest_path and page_id columns (longer strings are cut, as the original cut rows
    added in --incremental mode) — used to test cut paths. An existing store there is replaced.
    """
    output_dir = Path(output_dir)
    if callable(pages):
        if n is None:
            raise ValueError("n is required when pages is a callable")
    elif n is None:
        n = len(pages)
    elif n > len(pages):
        raise ValueError(f"n={n} but only {len(pages)} pages")
    if n < 1:
        raise ValueError("a v2 store has at least one row")
    output_dir.mkdir(parents=True, exist_ok=True)
    store_path = output_dir / STORE_NAME

    widths = _first_pass(output_dir, pages, n, manifest_width)
    attrs: dict[str, Any] = {
        "model_name": MODEL_NAME,
        "embedding_dim": d,
        "max_panels": MAX_PANELS,
        "created_date": CREATED_DATE,
        "amazon_pages": n,
    }
    group = zarr.open_group(str(store_path), mode="w", zarr_format=2, attributes=attrs)
    arrays = _create_arrays(group, n, d, widths)

    began = time.monotonic()
    # zarr's writes (mostly Blosc and copies, which release the GIL) of one block run in threads while the
    # next block is generated; waiting for them before queuing the next keeps at most two blocks in memory.
    with (
        open(output_dir / "audit_mapping.jsonl", "w", encoding="utf-8") as audit,
        ThreadPoolExecutor(max_workers=len(DATA_VARS) + len(STRING_COORDS)) as pool,
    ):
        pending: list[Future[None]] = []
        for start, block in _rows(pages, n):
            stop = start + len(block)
            columns = list(zip(*(_row_coords(p.manifest_path) for p in block)))
            values = {
                name: np.array(column, dtype=f"<U{widths[name]}")  # numpy cuts longer strings
                for name, column in zip(STRING_COORDS, columns)
            }
            values.update(_block_values(start, block, d, seed))
            values["panel_mask"] = values["panel_mask"].view(np.int8)
            for future in pending:
                future.result()
            pending = [pool.submit(arrays[name].__setitem__, slice(start, stop), values[name]) for name in values]
            audit.writelines(
                json.dumps(
                    {
                        "json_file": os.path.basename(page.manifest_path),
                        "json_path": page.manifest_path,
                        "status": "written",
                        "page_index": start + i,
                        "page_id": str(values["page_id"][i]),
                    }
                )
                + "\n"
                for i, page in enumerate(block)
                if page.written
            )
            if progress:
                rate = stop / max(time.monotonic() - began, 1e-9)
                print(f"\rv2 store: {stop}/{n} rows, {rate:,.0f} rows/s", end="", file=sys.stderr, flush=True)
        for future in pending:
            future.result()
    if progress:
        print(file=sys.stderr)
    zarr.consolidate_metadata(str(store_path), zarr_format=2)
    return store_path


# ---------------------------------------------------------------------------------------------- self-check


def _demo_page(row: int) -> V2Page:
    """A streamed page: about 7 panels, 2% with zero panels, 1% unwritten, calibre and amazon paths."""
    h = _mix_int((row * _GOLDEN + 12345) & _MASK64)
    library = "CalibreComics_analysis" if h & 1 else "amazon_analysis"
    series = f"Series {row // 4000:04d} v{(row // 1000) % 7 + 1:02d}"
    line = f"/data/{library}/{series}/{series} {(row // 40) % 1000:03d} - p{row % 40 + 1:03d}.json"
    panels = 0 if (h >> 8) % 50 == 0 else 1 + (h >> 16) % MAX_PANELS
    return V2Page(line, panels=panels, written=(h >> 32) % 100 != 0)


def _self_check(directory: Path) -> None:
    """Build 2,500 mixed rows twice, check the bytes match, read back with xarray and compare every row."""
    import warnings

    import xarray as xr

    long_text = {"dialogue": ["x" * 600], "narration": [], "sfx": []}
    pages = [
        V2Page(f"/data/amazon/Hero v{i % 3 + 1:02d}/Hero {i % 97:03d} - p{i % 40:03d}.json", [0, 1, 5, 12][i % 4])
        for i in range(2500)
    ]
    pages[7] = V2Page(pages[7].manifest_path, panels=4, written=False)
    pages[1001] = V2Page("/data/calibre/Long (2016-2018)/Long 012 - p019.json", panels=2, texts=[long_text, {}])
    pages[1002] = pages[1003]  # a duplicate list line
    first = write_v2_store(directory / "a", pages, manifest_width=40)
    second = write_v2_store(directory / "b", pages, manifest_width=40)
    for path in sorted(p for p in (directory / "a").rglob("*") if p.is_file()):
        assert path.read_bytes() == (second.parent / path.relative_to(directory / "a")).read_bytes(), path
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(first)
        loaded = {name: ds[name].values for name in DATA_VARS}
    assert ds.indexes["page_id"].name == "page_id" and ds.sizes["page_id"] == len(pages)
    assert loaded["panel_mask"].dtype == bool and loaded["text_content"].dtype == np.dtype("<U512")
    assert len(loaded["text_content"][1001, 0]) == TEXT_WIDTH and loaded["text_content"][1001, 1] == "{}"
    assert str(ds["page_id"].values[1002]) == str(ds["page_id"].values[1003])
    assert all(len(str(v)) <= 40 for v in ds["manifest_path"].values)
    for row, page in enumerate(pages):
        for name, expected in v2_values(row, page).items():
            assert np.array_equal(loaded[name][row], expected, equal_nan=expected.dtype.kind == "f"), (row, name)
    # What the importer's tests rely on, beyond "same as v2_values".
    mask, attention, order = loaded["panel_mask"], loaded["attention_weights"], loaded["reading_order"]
    panels = np.array([p.panels if p.written else 0 for p in pages])
    assert (mask.sum(axis=1) == panels).all()
    for row, page in enumerate(pages):
        k = page.panels
        if not page.written:
            assert not any(loaded[name][row].any() for name in DATA_VARS), row
        elif k == 0:
            assert np.isnan(loaded["page_embeddings"][row]).all() and np.isnan(attention[row]).all(), row
        else:
            assert abs(float(attention[row].sum()) - 1.0) < 1e-5 and not attention[row, k:].any(), row
            assert (order[row, :k] < k).all() and (order[row] == order[row].astype(int)).all(), row
            padding = loaded["panel_embeddings"][row, k:]
            assert (padding == loaded["panel_embeddings"][2, 11]).all() and (k == MAX_PANELS or padding.any()), row
            assert (loaded["panel_coordinates"][row, :k, 2:] >= 1).all() and not loaded["panel_coordinates"][
                row, k:
            ].any()
            assert all(t.startswith("{'dialogue': [") for t in loaded["text_content"][row, :k]) or row == 1001, row
    print(f"self-check passed: {len(pages)} rows in {first}")


def _rate(directory: Path, n: int) -> None:
    """Stream n demo pages and print the rate."""
    began = time.monotonic()
    write_v2_store(directory, _demo_page, n, progress=True)
    seconds = time.monotonic() - began
    print(f"{n} pages in {seconds:.1f} s: {n / seconds:,.0f} pages/s")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        _self_check(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "rate":
        _rate(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit("usage: python -m tests.v2_store check DIR | python -m tests.v2_store rate DIR N")
