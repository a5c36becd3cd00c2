"""The values and panel-masks checks: what the scanned rows hold agrees with their status.

- values: over every row a manifest covers (and the committed prefix): no NaN or Inf in the
  float arrays; ok and full_page rows have a non-zero page embedding (the users' search drops
  rows with L2 <= 1e-6); failed rows hold zeros in every float array and an error; committed rows
  have a status. Rows past the manifests that hold a status are reported (a writer writing
  them, or a killed one whose next start clears them).
- panel-masks: valid slots are the leading ones; for ok and full_page rows the mask sum equals
  the panel count of the job file (1 for a full_page row).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from comix_embed.common.store.schema import STATUS_FAILED, STATUS_FULL_PAGE, STATUS_NAMES, STATUS_OK
from comix_embed.tools.diagnose.facts import SCAN_ARRAYS, RowFacts
from comix_embed.tools.diagnose.load import Store
from comix_embed.tools.diagnose.report import LISTED, Check, listed

EMBEDDED = (STATUS_OK, STATUS_FULL_PAGE)
ZERO_L2 = 1e-6  # the users' search tools keep rows with L2 above this


def check_values(s: Store, facts: RowFacts | None) -> Check:
    check = Check("values")
    if facts is None:
        check.fails.append(f"not checked: the store lacks some of {', '.join(SCAN_ARRAYS)}")
        return check
    status = s.status[facts.rows]
    for name, flags in facts.nonfinite.items():
        if flags.any():
            check.fails.append(f"NaN or Inf in {name} of rows {listed(facts.rows[flags])}")
    embedded = np.isin(status, EMBEDDED)
    failed = status == STATUS_FAILED
    flagged = [
        (embedded & (facts.l2 <= ZERO_L2), f"ok/full_page rows with a zero page embedding (L2 <= {ZERO_L2})"),
        (failed & facts.float_nonzero, "failed rows with non-zero floats"),
        (failed & ~facts.has_error, "failed rows without an error"),
        (
            (facts.rows < s.committed) & ~np.isin(status, (*EMBEDDED, STATUS_FAILED)),
            "committed rows with no status (never written)",
        ),
    ]
    for rows_flag, what in flagged:
        if rows_flag.any():
            check.fails.append(f"{what}: rows {listed(facts.rows[rows_flag])}")
    stray = np.flatnonzero(~s.covered_rows() & (s.status != 0) & (np.arange(s.rows) >= s.committed))
    if len(stray):
        problem = (
            f"rows {listed(stray)} hold data but no manifest covers them "
            "(being written, or left by a killed writer whose next start clears them)"
        )
        (check.notes if s.writer_running else check.warns).append(problem)
    if not check.fails:
        counts = Counter(STATUS_NAMES.get(int(v), str(int(v))) for v in status)
        check.notes.insert(
            0,
            f"{len(facts.rows)} rows checked ({dict(counts)}): no NaN/Inf, embedded rows non-zero, failed rows zero with an error",
        )
    return check


def check_masks(s: Store, facts: RowFacts | None) -> Check:
    check = Check("panel-masks")
    if facts is None:
        check.fails.append("not checked: arrays missing")
        return check
    status = s.status[facts.rows]
    embedded = np.isin(status, EMBEDDED)
    scattered = embedded & ~facts.mask_leading
    if scattered.any():
        check.fails.append(f"valid slots are not the leading ones in rows {listed(facts.rows[scattered])}")
    expected = expected_panels(s)[facts.rows]
    expected = np.where(status == STATUS_FULL_PAGE, 1, expected)
    known = embedded & (expected >= 0)
    wrong = known & (facts.mask_sum != expected)
    for i in np.flatnonzero(wrong)[:LISTED]:
        check.fails.append(
            f"row {facts.rows[i]}: panel_mask sum {facts.mask_sum[i]}, the job file says {expected[i]} panels"
        )
    if wrong.sum() > LISTED:
        check.fails.append(f"{int(wrong.sum()) - LISTED} more rows whose mask sum differs")
    unknown = embedded & ~known
    if unknown.any():
        check.warns.append(f"no panel count known for rows {listed(facts.rows[unknown])} (no job file)")
    if not check.fails:
        check.notes.insert(
            0, f"mask sums of {int(known.sum())} embedded rows equal their pages' panel counts, valid slots leading"
        )
    return check


def expected_panels(s: Store) -> np.ndarray:
    """Per row, the panel count its job file recorded (-1 when unknown)."""
    counts = np.full(s.rows, -1, dtype=np.int64)
    for job in s.jobs:
        end = min(job.end_row, s.rows)
        if job.start_row < end:
            counts[job.start_row : end] = [p.panel_count for p in job.page_slice(job.start_row, end)]
    return counts
