"""The manifests and manifest-rows checks: the batches' acknowledgements against the store.

- manifests: each manifest parses, agrees with itself and with its job file (rows, page ids);
  no two claim the same rows; their contiguous prefix covers exactly `committed_rows`. A missing
  manifest inside the prefix, or a `committed_rows` the manifests do not cover, is a FAIL.
  Manifests past a gap are normal while a job runs ("committed out of order, waiting for batch
  N"): reported, not an error.
- manifest-rows: each manifest's page ids are the store's rows, its status counts are the
  store's `status` values, once the rows a retry manifest changed (failed to its new status,
  common/store/retries.py) are counted as that retry left them; any other change is a FAIL.
"""

from __future__ import annotations

from collections import Counter

from comix_embed.common.store.manifests import BatchManifest, committed_prefix
from comix_embed.common.store.retries import retried_rows
from comix_embed.common.store.schema import STATUS_NAMES
from comix_embed.tools.diagnose.load import Store
from comix_embed.tools.diagnose.report import Check, listed, plural


def check_manifests(s: Store) -> Check:
    check = Check("manifests")
    check.fails += s.bad_manifests
    check.fails += manifest_job_problems(s)
    check.fails += overlap_problems(s.manifests)
    ranges = {b: m.rows() for b, m in s.manifests.items()}
    next_batch, rows = committed_prefix(ranges)
    if rows < s.committed:
        check.fails.append(
            f"committed_rows is {s.committed} but the manifests' contiguous prefix ends at row {rows}: "
            f"{gap_reason(s, next_batch, rows)}"
        )
    elif rows > s.committed:
        problem = (
            f"committed_rows {s.committed} lags the manifests' prefix ({rows} rows); a writer's next start repairs it"
        )
        (check.notes if s.writer_running else check.warns).append(problem)
    later = sorted(b for b in s.manifests if b > next_batch)
    if later and rows >= s.committed:
        spans = listed(f"{b} (rows {ranges[b][0]}-{ranges[b][1] - 1})" for b in later)
        which = plural(len(later), "batch", "batches")
        check.notes.append(f"{which} {spans} committed out of order, waiting for batch {next_batch}")
    first = "batch 0 covers" if next_batch == 1 else f"batches 0-{next_batch - 1} cover"
    prefix = f"{first} rows 0-{rows - 1}" if next_batch else "no batch 0"
    check.notes.insert(0, f"{len(s.manifests)} manifests; {prefix}")
    if s.committed < s.registered and not later:
        check.notes.append(f"rows {s.committed}-{s.registered - 1} not committed yet (next: batch {next_batch})")
    return check


def gap_reason(s: Store, batch_id: int, prefix_end: int) -> str:
    """Why the prefix of manifests stops at `batch_id`: its manifest is missing, or misplaced."""
    if batch_id in s.manifests:
        return f"batch {batch_id}'s manifest starts at row {s.manifests[batch_id].start_idx}, not {prefix_end}"
    found = s.batch_of(batch_id)
    where = f"rows {found[1][0]}-{found[1][1] - 1}" if found else "rows unknown: no job file has it"
    return f"batch {batch_id} ({where}) has no manifest"


def manifest_job_problems(s: Store) -> list[str]:
    """Each manifest against its job file: the batch's rows, job and page ids."""
    problems = []
    for batch_id, manifest in sorted(s.manifests.items()):
        found = s.batch_of(batch_id)
        if found is None:
            problems.append(f"batch {batch_id} belongs to no job file")
            continue
        job, expected = found
        if manifest.rows() != expected or manifest.job != job.job_id:
            problems.append(
                f"batch {batch_id} claims rows {manifest.rows()} of {manifest.job or None}, "
                f"its job file says {expected} of {job.job_id}"
            )
        elif manifest.page_ids != [p.page_id for p in job.page_slice(*expected)]:
            problems.append(
                f"batch {batch_id}'s page ids differ from {job.job_id}'s rows {expected[0]}-{expected[1] - 1}"
            )
    return problems


def overlap_problems(manifests: dict[int, BatchManifest]) -> list[str]:
    """Two manifests claiming the same rows."""
    spans = sorted((*m.rows(), b) for b, m in manifests.items())
    problems = []
    for (_s1, e1, b1), (s2, e2, b2) in zip(spans, spans[1:]):
        if s2 < e1:
            problems.append(f"batches {b1} and {b2} both claim rows {s2}-{min(e1, e2) - 1}")
    return problems


def check_manifest_rows(s: Store) -> Check:
    check = Check("manifest-rows")
    retried = retried_rows(s.retries)
    for batch_id, manifest in sorted(s.manifests.items()):
        start, end = manifest.rows()
        if end > s.rows:
            check.fails.append(f"batch {batch_id} claims rows up to {end - 1}, the store holds {s.rows}")
            continue
        stored = [str(x) for x in s.page_ids[start:end]]
        wrong = [start + i for i, (a, b) in enumerate(zip(stored, manifest.page_ids)) if a != b]
        if wrong:
            check.fails.append(f"batch {batch_id}: page_id of rows {listed(wrong)} differs from its manifest")
        counts = dict(Counter(STATUS_NAMES.get(int(v), str(int(v))) for v in s.status[start:end]))
        expected = Counter(manifest.statuses)
        changed = [r for r in range(start, end) if r in retried]
        for row in changed:
            expected["failed"] -= 1
            expected[retried[row]] += 1
        expected_counts = {k: v for k, v in expected.items() if v}
        if counts != expected_counts:
            after = f" after the retries of rows {listed(changed)} ({expected_counts})" if changed else ""
            check.fails.append(
                f"batch {batch_id}: statuses in the store {counts}, in its manifest {manifest.statuses}{after}"
            )
    if not check.fails:
        check.notes.append(f"page ids and status counts of {len(s.manifests)} manifests match the store's rows")
    return check
