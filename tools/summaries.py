"""`comix-embed summaries`: per-page norms and text of the committed rows, at once.

The users' old `print_page_summaries.py` printed `idx page_l2 panel_mean_l2 text_preview` for the
first rows of the store whether or not they were written, so on a shuffled, half-written store it
showed zeros and people waited for a "flush" that never came. This tool reads the committed part
only (up to `committed_rows`), says how many rows that is out of how many are registered, and gives
each row's status, so a zero is never ambiguous: a failed page shows its error instead of text, and
a row not yet committed is never printed. A row that `--retry-failed` embedded again (or that failed
again) has a `*` after its status, and the header counts the retries.

Only the rows printed are read (the slice is taken before anything is loaded), so the command
answers at once whatever the size of the store.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from comix_embed.common import config
from comix_embed.common.errors import EXIT_OK, UsageError
from comix_embed.common.store.attributes import StoreAttributes
from comix_embed.common.store.manifests import load_committed
from comix_embed.common.store.reading import read_attrs, resolve_store
from comix_embed.common.store.retries import retried_rows, scan_retry_manifests
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_NAMES, STATUS_PENDING

SHOWN_STATUS = {STATUS_PENDING: "pending", **STATUS_NAMES}
_SUMMARY_VARS = ("page_embeddings", "panel_embeddings", "panel_mask", "status", "error", "page_text")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zarr", required=True, help="the store (.zarr) or the output folder holding it")
    parser.add_argument(
        "--max-pages",
        "--max_pages",
        dest="max_pages",
        type=int,
        default=16,
        help="print at most this many committed rows, from row 0 (default 16)",
    )
    parser.add_argument(
        "--text-len",
        "--text_len",
        dest="text_len",
        type=int,
        default=128,
        help="cut text previews and errors to this many characters (default 128)",
    )
    parser.add_argument("--compact", action="store_true", help="one line per row, no column titles")


def text_preview(page_text: str, limit: int) -> str:
    """The page's text as one line: dialogue, narration and sfx strings joined, cut to `limit`."""
    try:
        value = json.loads(page_text) if page_text else {}
    except ValueError:
        return clip(page_text, limit)  # not JSON: show it as stored rather than hide it
    if not isinstance(value, dict):
        return clip(str(value), limit)
    parts = [str(s) for key in config.TEXT_KEYS for s in value.get(key) or []]
    return clip(config.TEXT_JOINER.join(parts), limit) if parts else "(no text)"


def clip(text: str, limit: int) -> str:
    """One line of at most `limit` characters; a cut is marked with an ellipsis."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    return flat[: max(limit - 1, 0)].rstrip() + "…" if limit > 0 else ""


def row_norms(page_emb: np.ndarray, panel_emb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(page L2, mean L2 over valid panels) per row; 0 where a row has no valid panel."""
    page_l2 = np.linalg.norm(page_emb.astype(np.float64), axis=-1)
    panel_l2 = np.linalg.norm(panel_emb.astype(np.float64), axis=-1)
    mask = mask.astype(bool)
    counts = mask.sum(axis=1)
    sums = np.where(mask, panel_l2, 0.0).sum(axis=1)
    panel_mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return page_l2, panel_mean


def out_of_order_note(store: Path) -> str:
    """Batches with a manifest past the committed prefix: written, not yet readable.

    Read from the checkpoint and the few manifests past it (cheap on any store).
    """
    committed, _ = load_committed(store)
    later = sorted(committed.beyond)
    if not later:
        return ""
    rows = sum(end - start for start, end, _ in committed.beyond.values())
    shown = ", ".join(str(i) for i in later[:8]) + (", ..." if len(later) > 8 else "")
    which = f"batch {shown}" if len(later) == 1 else f"batches {shown}"
    return f"; {which} ({rows} rows) committed out of order, readable once batch {committed.batches} is committed"


def header_line(store: Path, attrs: dict[str, Any], committed: int, retried: dict[int, str]) -> str:
    registered = StoreAttributes.of(attrs).registered_rows if "registered_rows" in attrs else committed
    state = "all committed" if committed == registered else f"{registered - committed} not committed yet"
    line = f"{store}: {committed} of {registered} registered rows committed ({state}){out_of_order_note(store)}"
    if retried:
        embedded = sum(1 for st in retried.values() if st != "failed")
        line += f"; {len(retried)} failed rows retried (*), {embedded} now embedded"
    return line


def load_rows(store: Path, count: int) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
    """The first `count` committed rows of the arrays a summary needs, read and nothing more.

    Read through zarr, not xarray: opening the store in xarray builds the `page_id` index over
    every row (seconds at a million pages), for rows this command never shows.
    """
    import zarr

    attrs = read_attrs(store)
    committed = StoreAttributes.of(attrs).committed_rows
    group = zarr.open_group(store, mode="r", use_consolidated=False)
    rows = min(count, committed)
    arrays = {}
    for name in (*_SUMMARY_VARS, "page_id"):
        arr = group[name]
        if not isinstance(arr, zarr.Array):
            raise UsageError(f"{store}: {name} is a group, not an array: not a comix-embed store")
        arrays[name] = np.asarray(arr[:rows])
    return arrays, attrs, committed


def format_rows(
    arrays: dict[str, np.ndarray], text_len: int, retried: dict[int, str]
) -> list[tuple[int, float, float, str, str, str]]:
    """(idx, page_l2, panel_mean_l2, status, preview, page_id) per row, in row order; a retried
    row's status ends in `*`."""
    page_l2, panel_mean = row_norms(arrays["page_embeddings"], arrays["panel_embeddings"], arrays["panel_mask"])
    rows = []
    for i in range(len(page_l2)):
        status = int(arrays["status"][i])
        if status == STATUS_FAILED:
            preview = clip(f"error: {arrays['error'][i]}", text_len)
        else:
            preview = text_preview(str(arrays["page_text"][i]), text_len)
        name = SHOWN_STATUS.get(status, str(status)) + ("*" if i in retried else "")
        rows.append((i, float(page_l2[i]), float(panel_mean[i]), name, preview, str(arrays["page_id"][i])))
    return rows


def print_summary(store: Path, max_pages: int, text_len: int, compact: bool, out: TextIO) -> None:
    arrays, attrs, committed = load_rows(store, max_pages)
    retried = retried_rows(scan_retry_manifests(store)[0])
    rows = format_rows(arrays, text_len, retried)
    out.write(header_line(store, attrs, committed, retried) + "\n")
    if not compact:
        shown = f"rows 0-{len(rows) - 1}" if rows else "no rows"
        model = f"{attrs.get('model_name')} ({attrs.get('encoder_mode')}, d={attrs.get('embedding_dim')})"
        out.write(f"model {model}; showing {shown}\n")
        out.write(f"{'idx':>6}  {'page_l2':>9}  {'panel_mean_l2':>13}  {'status':<9}  text_preview\n")
        out.write(f"{'-' * 6}  {'-' * 9}  {'-' * 13}  {'-' * 9}  {'-' * 12}\n")
    for idx, page_l2, panel_mean, status, preview, page_id in rows:
        if compact:
            out.write(f"{idx} {page_l2:.6f} {panel_mean:.6f} {status} {preview}\n")
        else:
            out.write(f"{idx:>6}  {page_l2:>9.6f}  {panel_mean:>13.6f}  {status:<9}  {preview}\n")
            out.write(f"{'':>8}{page_id}\n")
    if not compact and committed > len(rows):
        out.write(f"... {committed - len(rows)} more committed rows (--max-pages)\n")


def run(args: argparse.Namespace) -> int:
    if args.max_pages < 0 or args.text_len < 0:
        raise UsageError("--max-pages and --text-len must be 0 or more")
    print_summary(resolve_store(args.zarr), args.max_pages, args.text_len, args.compact, sys.stdout)
    return EXIT_OK
