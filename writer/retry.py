"""Committing a retry batch: failed rows overwritten in place, each batch under its own manifest.

The one change a committed row may undergo (common/store/retries.py). A retry commit overwrites only the
rows of its batch that are failed (status 2) at that moment; a row already embedded is left alone
and listed as skipped. Crash safety, whatever is killed when: before any row is written, the rows'
current values (every result array) are saved whole to `manifest/retry_inflight.json` (a
`RetryInflight`, fsynced with fsync on); then the rows are written; then the retry manifest; then
the saved copy is removed. A writer that starts and finds the saved copy without its batch's
manifest puts the rows back as they were: a killed retry never zeroes a committed row, unlike an
unfinished first commit, whose rows were never committed and are cleared. A redelivered retry batch
whose manifest exists changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import zarr

from comix_embed.common.durable import fsync_dir, write_json_atomic
from comix_embed.common.messages import decode_json
from comix_embed.common.store.audit_log import AuditRecord
from comix_embed.common.store.jobs import JobPage
from comix_embed.common.store.manifests import manifest_dir
from comix_embed.common.store.results import BatchResult
from comix_embed.common.store.retries import RETRY_INFLIGHT, RetryManifest, RetryRound, retry_manifest_file
from comix_embed.common.store.schema import RESULT_ARRAYS, STATUS_FAILED, STATUS_NAMES
from comix_embed.common.timestamps import utc_now
from comix_embed.writer import audit
from comix_embed.writer.rows import np_dtype, read_rows, scattered, write_rows

log = logging.getLogger(__name__)


class RetryInflight(msgspec.Struct, kw_only=True):
    """The rows a retry commit is about to overwrite, as they were: every result array's values
    of those rows (nested lists, in `rows` order)."""

    batch_id: int
    rows: list[int]
    arrays: dict[str, list[Any]]


def _inflight_path(store: Path) -> Path:
    return manifest_dir(store) / RETRY_INFLIGHT


def _save(store: Path, batch_id: int, rows: list[int], values: dict[str, np.ndarray], fsync: bool) -> None:
    saved = {name: np.asarray(v).tolist() for name, v in values.items()}
    write_json_atomic(_inflight_path(store), RetryInflight(batch_id=batch_id, rows=rows, arrays=saved), fsync)


def _drop_saved(store: Path, fsync: bool) -> None:
    path = _inflight_path(store)
    if path.exists():
        path.unlink()
        if fsync:
            fsync_dir(path.parent)


def recover(store: Path, arrays: dict[str, zarr.Array], committed: set[int], fsync: bool) -> int | None:
    """Put back the rows a killed retry commit was overwriting (its manifest missing); the batch
    id whose rows were put back, else None."""
    path = _inflight_path(store)
    if not path.exists():
        return None
    # written whole (renamed into place): never torn
    saved = decode_json(path.read_bytes(), RetryInflight, str(path))
    batch_id, rows = saved.batch_id, saved.rows
    restored = None
    if batch_id not in committed:
        values = {name: np.array(saved.arrays[name], dtype=np_dtype(RESULT_ARRAYS[name][1])) for name in RESULT_ARRAYS}
        write_rows(arrays, scattered(rows, values))
        restored = batch_id
        log.info(
            "retry batch %d was being written when a writer stopped: rows %s put back as they were", batch_id, rows
        )
    _drop_saved(store, fsync)
    return restored


def commit_retry(
    store: Path,
    arrays: dict[str, zarr.Array],
    rnd: RetryRound,
    result: BatchResult,
    data: dict[str, np.ndarray],
    page_of: Callable[[int], JobPage],
    fsync: bool,
    fence: Callable[[], int] | None = None,
    check: Callable[[list[int], list[str], dict[str, np.ndarray]], None] | None = None,
) -> tuple[RetryManifest, list[AuditRecord]]:
    """Overwrite the batch's rows that are failed now with `data` (the result's prepared arrays,
    in the round's row order); the manifest written and the audit records of the rows written.

    `fence` (the writer lease's check) gives the token the manifest records, and raises, before
    the manifest, when the writer lease has passed to another writer. `check` (`--write-check`) reads
    the written rows back (rows, page ids, values); when it raises, the rows are put back."""
    rows = rnd.batch_rows(result.batch_id)
    now = read_rows(arrays, rows, ["status"])["status"]
    keep = [i for i, s in enumerate(now.tolist()) if s == STATUS_FAILED]
    written = [rows[i] for i in keep]
    skipped = [rows[i] for i in range(len(rows)) if i not in set(keep)]
    new = {name: np.asarray(v)[keep] for name, v in data.items()}
    page_ids = [result.page_ids[i] for i in keep]
    if written:
        _save(store, result.batch_id, written, read_rows(arrays, written), fsync)
        try:
            write_rows(arrays, scattered(written, new))
            if check is not None:
                check(written, page_ids, new)
        except BaseException:
            recover(store, arrays, set(), fsync)  # what was written goes now, not at restart
            raise
    statuses = [STATUS_NAMES.get(int(s), str(int(s))) for s in new["status"].tolist()]
    token = fence() if fence is not None else None
    manifest = make_retry_manifest(result.batch_id, rnd.job_id, written, page_ids, statuses, skipped, token)
    write_json_atomic(retry_manifest_file(store, result.batch_id), manifest, fsync)
    _drop_saved(store, fsync)
    records = []
    for k, row in enumerate(written):
        one = {name: v[k : k + 1] for name, v in new.items()}
        records += audit.page_records(
            result.batch_id, rnd.job_id, row, [page_ids[k]], [page_of(row).manifest_path], one, retry=True
        )
    if skipped:
        log.info("retry batch %d: rows %s are no longer failed and were left alone", result.batch_id, skipped)
    return manifest, records


def make_retry_manifest(
    batch_id: int,
    job: str,
    rows: list[int],
    page_ids: list[str],
    statuses: list[str],
    skipped: list[int],
    token: int | None = None,
) -> RetryManifest:
    """`rows` were overwritten with `statuses` (names, per row); `skipped` were no longer failed.

    `token` is the writer lease's fencing token, as in a batch's manifest."""
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return RetryManifest(
        batch_id=batch_id,
        job=job,
        timestamp=utc_now(),
        rows=list(rows),
        page_ids=list(page_ids),
        row_statuses=list(statuses),
        skipped_rows=list(skipped),
        statuses=counts,
        token=token,
    )
