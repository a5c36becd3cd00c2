"""The retries check: each retry manifest (`--retry-failed`) against its round and the store.

A retry manifest must parse and agree with itself; its batch must belong to a retry round and
its rows (written and skipped) be that batch's rows; each row it wrote must be covered by a
batch manifest and hold the page it names; each retried row must hold, in the store, the status
its latest retry gave it. A saved copy of rows (`retry_inflight.json`) without its manifest is a
retry killed mid-write: a WARN, its rows are put back at the writer's next start.
"""

from __future__ import annotations

from comix_embed.common.store.manifests import manifest_dir
from comix_embed.common.store.retries import RETRY_BASE, RETRY_INFLIGHT, load_rounds, retried_rows
from comix_embed.common.store.schema import STATUS_NAMES
from comix_embed.tools.diagnose.load import Store
from comix_embed.tools.diagnose.report import Check, listed


def check_retries(s: Store) -> Check:
    check = Check("retries")
    check.fails += s.bad_retries
    rounds = {b: r for r in load_rounds(s.output_dir) for b in r.batch_ids()}
    covered = s.covered_rows()
    for batch_id, m in sorted(s.retries.items()):
        rnd = rounds.get(batch_id)
        name = f"retry batch {batch_id} (retry_{batch_id - RETRY_BASE:06d}.json)"
        if rnd is None:
            check.fails.append(f"{name} belongs to no retry round")
            continue
        if sorted(m.rows + m.skipped_rows) != rnd.batch_rows(batch_id):
            check.fails.append(f"{name}: rows {m.rows + m.skipped_rows}, {rnd.job_id} says {rnd.batch_rows(batch_id)}")
            continue
        outside = [r for r in m.rows if not (0 <= r < s.rows and covered[r])]
        if outside:
            check.fails.append(f"{name} overwrote rows {listed(outside)} that no batch manifest covers")
            continue
        wrong = [r for r, p in zip(m.rows, m.page_ids) if str(s.page_ids[r]) != p]
        if wrong:
            check.fails.append(f"{name}: page_id of rows {listed(wrong)} differs from the retry manifest")
    final = retried_rows(s.retries)
    differ = [r for r, st in sorted(final.items()) if r < s.rows and STATUS_NAMES.get(int(s.status[r])) != st]
    if differ:
        check.fails.append(f"rows {listed(differ)} do not hold the status their latest retry gave them")
    saved = manifest_dir(s.path) / RETRY_INFLIGHT
    if saved.exists():
        problem = f"{saved.name}: a retry was writing rows when its writer stopped"
        if s.writer_running:
            check.notes.append(problem + " (being written)")
        else:
            check.warns.append(problem + "; the writer's next start puts those rows back as they were")
    if s.retries and not check.fails:
        embedded = sum(1 for st in final.values() if st != "failed")
        check.notes.append(
            f"{len(s.retries)} retry manifests; {len(final)} failed rows retried: {embedded} now embedded, "
            f"{len(final) - embedded} still failed"
        )
    elif not s.retries and not check.fails:
        check.notes.append("no retry")
    return check
