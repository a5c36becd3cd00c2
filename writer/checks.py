"""The users' checks, under the names they know: `--verify-batches` and `--write-check`.

`verify_batch` looks at a batch before it is written (the embeddings exist, the panels are the
ones the page should have, the text is JSON); `write_check` reads the committed rows back from
disk and compares them exactly with what was sent. Both apply to retry batches too (their rows
need not be contiguous). Either failing stops the run: the message
names the batch, the page and its row, so that the page can be looked at.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import zarr

from comix_embed.common.errors import CommandError
from comix_embed.common.store.jobs import JobPage
from comix_embed.common.store.results import BatchResult
from comix_embed.common.store.schema import RESULT_ARRAYS, STATUS_FULL_PAGE, STATUS_OK
from comix_embed.writer.rows import read_rows

EMBEDDED = (STATUS_OK, STATUS_FULL_PAGE)


class CheckFailed(CommandError):
    """A batch failed --verify-batches or --write-check; the run must stop (exit status 1)."""


def expected_shape(name: str, rows: int, d: int, p: int) -> tuple[int, ...]:
    sizes = {"d": d, "P": p, "4": 4}
    return (rows, *(sizes[dim] for dim in RESULT_ARRAYS[name][0]))


def shape_problems(arrays: dict[str, np.ndarray], rows: int, d: int, p: int) -> list[str]:
    """What is wrong with a batch's arrays (names, shapes, dtypes); empty when all is right."""
    problems = []
    missing = sorted(set(RESULT_ARRAYS) - set(arrays))
    extra = sorted(set(arrays) - set(RESULT_ARRAYS))
    if missing:
        problems.append(f"missing arrays {missing}")
    if extra:
        problems.append(f"unknown arrays {extra}")
    for name, (_, dtype) in RESULT_ARRAYS.items():
        if name not in arrays:
            continue
        arr = arrays[name]
        want = expected_shape(name, rows, d, p)
        if arr.shape != want:
            problems.append(f"{name} has shape {arr.shape}, expected {want}")
        kind_ok = arr.dtype.kind in "OUT" if dtype == "str" else arr.dtype == np.dtype(dtype)
        if not kind_ok:
            problems.append(f"{name} has dtype {arr.dtype}, expected {dtype}")
    return problems


def verify_batch(result: BatchResult, page_of: Callable[[int], JobPage], d: int, p: int) -> None:
    """--verify-batches: raise CheckFailed at the first page that is not as it should be
    (`page_of`: the registered page of a row, for the panels it should have)."""
    problems = shape_problems(result.arrays, len(result.page_ids), d, p)
    if problems:
        raise CheckFailed(f"--verify-batches: batch {result.batch_id}: {'; '.join(problems)}")
    a = result.arrays
    for i, (page_id, row) in enumerate(zip(result.page_ids, result.row_list())):
        status = int(a["status"][i])

        def fail(why: str, page_id: str = page_id, row: int = row) -> None:
            raise CheckFailed(f"--verify-batches: batch {result.batch_id}, page {page_id} (row {row}): {why}")

        if status not in EMBEDDED:
            continue
        l2 = float(np.linalg.norm(a["page_embeddings"][i].astype(np.float64)))
        if not l2 > 0 or not np.isfinite(l2):
            fail(f"page embedding L2 norm is {l2}")
        mask = np.asarray(a["panel_mask"][i], dtype=bool)
        expected = 1 if status == STATUS_FULL_PAGE else page_of(row).panel_count
        if expected >= 0 and int(mask.sum()) != expected:
            fail(f"panel_mask sum is {int(mask.sum())}, the page has {expected} panels")
        for slot in np.flatnonzero(mask):
            _json_object(a["text_content"][i][slot], f"text_content of panel {slot}", fail)
        _json_object(a["page_text"][i], "page_text", fail)


def write_check(
    arrays: dict[str, zarr.Array], batch_id: int, rows: list[int], page_ids: list[str], written: dict[str, np.ndarray]
) -> None:
    """--write-check: read the (sorted) rows back from disk; any difference raises CheckFailed."""
    got = read_rows(arrays, rows, written)
    for name, want in written.items():
        for i, row in enumerate(rows):
            if not _same(got[name][i], want[i]):
                raise CheckFailed(
                    f"--write-check: batch {batch_id}, page {page_ids[i]} (row {row}): "
                    f"{name} read back from disk differs from what was written"
                )


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    got, want = np.asarray(got), np.asarray(want)
    if want.dtype.kind in "OUT" or got.dtype.kind in "OUT":
        return [str(x) for x in got.reshape(-1)] == [str(x) for x in want.reshape(-1)]
    # bytes, not values: exact, and NaN compares equal only to the very same NaN
    return got.shape == want.shape and got.dtype == want.dtype and got.tobytes() == want.tobytes()


def _json_object(text: Any, what: str, fail: Any) -> None:
    try:
        value = json.loads(str(text))
    except ValueError as exc:
        fail(f"{what} is not valid JSON ({exc})")
        return
    if not isinstance(value, dict):
        fail(f"{what} is JSON but not an object")
