"""The audit check: the writer's audit log against the store's rows.

The writer writes each row's record once, after the batch's manifest, and never commits a batch
twice, so: a record naming a row no manifest covers, or whose page id, status, page L2 or mask
sum differ from the store, is a FAIL (the L2 is what makes a row changed after its commit
visible); a covered row without a record is a WARN (a writer killed between a manifest and its
audit lines loses those lines; the manifest is the truth); several records for one row (a batch
committed again after its manifest was lost) are a WARN and the last one is compared. A retry
(`--retry-failed`) adds a record marked `retry` for each row it overwrote: that one is the last,
and no WARN.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from comix_embed.common import config
from comix_embed.common.messages import MalformedMessage
from comix_embed.common.store.audit_log import AuditRecord
from comix_embed.common.store.schema import STATUS_NAMES
from comix_embed.tools.diagnose.facts import RowFacts
from comix_embed.tools.diagnose.load import Store
from comix_embed.tools.diagnose.report import Check, listed

L2_TOLERANCE = 1e-6  # the audit log rounds L2 to 6 decimals


def check_audit(s: Store, facts: RowFacts | None) -> Check:
    check = Check("audit")
    path = s.output_dir / config.AUDIT_LOG_NAME
    covered = s.covered_rows()
    if not path.is_file():
        if covered.any():
            check.warns.append(f"no audit log at {path}")
        return check
    records, unreadable = read_audit(path)
    if unreadable:
        check.warns.append(f"{unreadable} audit lines are not JSON records (torn by a crash)")
    stray = sorted(r for r in records if not (0 <= r < s.rows and covered[r]))
    if stray:
        check.fails.append(f"the audit log says rows {listed(stray)} were committed but no manifest covers them")
    # a retry's record follows the first commit's: the row changed through a retry manifest
    repeated = sorted(r for r, recs in records.items() if sum(1 for rec in recs if not rec.retry) > 1)
    if repeated:
        check.warns.append(
            f"rows {listed(repeated)} have several audit records (batch committed again); the last is compared"
        )
    if facts is not None:
        check.fails += audit_mismatches(s, facts, records)
    missing = [int(r) for r in np.flatnonzero(covered) if int(r) not in records]
    if missing:
        check.warns.append(
            f"committed rows {listed(missing)} have no audit record (lost by a writer killed after their manifest)"
        )
    if not check.fails and not check.warns:
        check.notes.append(
            f"{len(records)} records, one per committed row, same page, status, L2 and mask sum as the store"
        )
    return check


def read_audit(path: Path) -> tuple[dict[int, list[AuditRecord]], int]:
    """Audit records by row, and how many lines could not be read."""
    records: dict[int, list[AuditRecord]] = defaultdict(list)
    unreadable = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = AuditRecord.decode(line)
            except MalformedMessage:
                unreadable += 1
                continue
            records[record.row].append(record)
    return dict(records), unreadable


def audit_mismatches(s: Store, facts: RowFacts, records: dict[int, list[AuditRecord]]) -> list[str]:
    """Rows whose last audit record disagrees with the store."""
    scanned = set(facts.rows.tolist())
    rows = np.array(sorted(r for r in records if r in scanned), dtype=np.int64)
    problems: dict[str, list[int]] = defaultdict(list)
    for row, pos in zip(rows.tolist(), facts.at(rows).tolist()):
        rec = records[row][-1]
        if rec.page_id != str(s.page_ids[row]):
            problems["page id"].append(row)
        if rec.status != STATUS_NAMES.get(int(s.status[row]), str(int(s.status[row]))):
            problems["status"].append(row)
        if not abs(rec.emb_l2 - facts.l2[pos]) <= L2_TOLERANCE:
            problems["page embedding L2"].append(row)
        if rec.mask_sum != int(facts.mask_sum[pos]):
            problems["mask sum"].append(row)
    return [
        f"{what} differs from the audit record in rows {listed(bad)} (changed after commit?)"
        for what, bad in problems.items()
    ]
