"""`comix-embed run --retry-failed`: embed the store's failed pages again, on this machine.

Plans (or resumes) a retry round (producer/retry.py), starts the broker, the writer and the
workers as `run` does, sends the round, and waits until every retry batch has its manifest,
re-sending what the broker lost. Exit status: 0 when every retried page is now embedded (ok or
full_page), and with "no failed pages" when there was none; 3 when some still fail (their new
reasons in the store's `error` array and the audit log); 1 when a child process failed or a
retry batch's results were refused COMIX_MAX_ATTEMPTS times; 2, 4 and 130 as for `run`.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter

from tqdm import tqdm

from comix_embed.common import config
from comix_embed.common.broker import deliveries
from comix_embed.common.broker.connection import connect
from comix_embed.common.broker.results_stream import store_id
from comix_embed.common.errors import EXIT_OK, EXIT_PAGES_FAILED
from comix_embed.common.messages import ModelIdentity
from comix_embed.common.store.jobs import load_jobs
from comix_embed.common.store.manifests import store_owed
from comix_embed.common.store.retries import retry_manifest_ids, scan_retry_manifests
from comix_embed.common.store.schema import store_path
from comix_embed.producer import retry
from comix_embed.producer.enqueue import bind_model
from comix_embed.run import (
    RECONCILE_EVERY_S,
    Children,
    lost_work,
    start_children,
    stop,
    wait_for_workers,
    with_system,
)

log = logging.getLogger("comix.run")


def run_retry(args: argparse.Namespace, identity: ModelIdentity) -> int:
    jobs = load_jobs(args.output_dir)
    plan = retry.prepare(args, bind_model(args, jobs, identity))
    owed = sum(len(b) for b in store_owed(store_path(args.output_dir), jobs).values())
    if owed:
        print(f"note: the store's jobs still owe {owed} batches: run without --retry-failed to finish them", flush=True)
    if plan is None:
        print(f"{retry.NO_FAILED} in {store_path(args.output_dir)}", flush=True)
        return EXIT_OK
    for line in plan.lines():
        print(line, flush=True)
    return with_system(args, lambda children: _retry_round(args, identity, plan, children))


def _owed(args: argparse.Namespace, plan: retry.RetryPlan) -> set[int]:
    return set(plan.round.batch_ids()) - retry_manifest_ids(store_path(args.output_dir))


def _retry_round(args: argparse.Namespace, identity: ModelIdentity, plan: retry.RetryPlan, children: Children) -> int:
    client = connect(args.broker)
    store = store_id(args.output_dir)
    assert store is not None
    names = start_children(args, children, identity)
    wait_for_workers(client, names, children)
    retry.send(args, plan)
    total = plan.round.batch_count()
    bar = tqdm(total=total, unit="batch", desc="retried", dynamic_ncols=True)
    owed = _owed(args, plan)
    bar.update(total - len(owed))
    last_change = time.monotonic()
    while owed:
        time.sleep(0.2)
        problem = "; ".join(children.failed()) or (
            "" if children.alive("worker") else f"every worker exited (see {children.log_dir})"
        )
        refused = deliveries.refused_out(client, store, owed)
        problem = problem or "; ".join(
            f"the results of retry batch {b} were refused: {why}" for b, why in refused.items()
        )
        if problem:
            bar.close()
            return stop(children, problem)
        now_owed = _owed(args, plan)
        if now_owed != owed:
            bar.update(len(owed) - len(now_owed))
            owed, last_change = now_owed, time.monotonic()
        elif time.monotonic() - last_change > RECONCILE_EVERY_S and lost_work(client, store, identity):
            plan.owed, plan.resumed = sorted(owed), True
            log.warning("re-sent %d retry batches the broker no longer held", retry.send(args, plan))
            last_change = time.monotonic()
    bar.close()
    return _outcome(args, plan)


def _outcome(args: argparse.Namespace, plan: retry.RetryPlan) -> int:
    """What the round's manifests say: pages now embedded, pages still failed."""
    found, _ = scan_retry_manifests(store_path(args.output_dir))
    mine = [found[b] for b in plan.round.batch_ids() if b in found]
    counts = Counter(s for m in mine for s in m.row_statuses)
    skipped = sum(len(m.skipped_rows) for m in mine)
    embedded = counts["ok"] + counts["full_page"]
    line = (
        f"retried {plan.round.pages()} failed pages ({plan.round.job_id}): {embedded} now embedded "
        f"(ok {counts['ok']}, full_page {counts['full_page']}), {counts['failed']} still failed"
    )
    if skipped:
        line += f", {skipped} already embedded by an earlier retry (left alone)"
    if counts["failed"]:
        line += f" (reasons in the store's `error` array and {args.output_dir / config.AUDIT_LOG_NAME})"
    print(line, flush=True)
    return EXIT_PAGES_FAILED if counts["failed"] else EXIT_OK
