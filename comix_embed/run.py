"""`comix-embed run`: the whole system on one machine, in one command.

Starts a private Redis (unless `--broker` names one), the writer and the workers as child
processes (their logs under `<output_dir>/logs/`), registers the list as a job bound to the
model, sends what every unfinished job of the store owes, shows a progress bar, re-sends whatever
the broker lost, and stops everything when `committed_rows` covers every registered row, also on
Ctrl-C or on a failure. Run again after a crash, it resumes: only the batches without a manifest
are embedded, of this list's job and of any earlier one.

With `--retry-failed` it embeds again the store's failed pages instead (`retry_run.py`).

Exit status (common/errors.py lists them all): 0 every page ok; 3 done, some pages failed (each
recorded in the store and the audit log; a batch lost COMIX_MAX_ATTEMPTS times is committed as
failed pages); 2 bad usage or configuration; 4 the store's disk is full (the writer's error is
printed; run again once there is room); 130 interrupted by Ctrl-C (committed batches are kept);
1 anything else (a child process failed, or a batch's results were refused COMIX_MAX_ATTEMPTS
times: the reason is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from tqdm import tqdm

from comix_embed.common import config
from comix_embed.common.broker import batch_lease, deliveries, keys
from comix_embed.common.broker.connection import connect
from comix_embed.common.broker.results_stream import results_key
from comix_embed.common.child import cli_argv
from comix_embed.common.errors import EXIT_DISK_FULL, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PAGES_FAILED
from comix_embed.common.inputs.paths import ImageResolver
from comix_embed.common.inputs.reading import check_remote_roots
from comix_embed.common.messages import ModelIdentity, encode_json
from comix_embed.common.model.checkpoint import load_model
from comix_embed.common.model.identity import make_identity, model_key, queue_name
from comix_embed.common.model.tokenizer import load_tokenizer
from comix_embed.common.store.jobs import Job, load_jobs
from comix_embed.common.store.manifests import load_committed, recent_manifests, store_owed
from comix_embed.common.store.reading import read_committed_rows
from comix_embed.common.store.retries import failed_now
from comix_embed.common.store.schema import store_path
from comix_embed.consumers.settings import ready_key
from comix_embed.consumers.worker import add_arguments as add_worker_arguments
from comix_embed.consumers.worker import worker_command
from comix_embed.private_redis import PrivateRedis
from comix_embed.producer.enqueue import EnqueueReport, add_source_arguments, plan, send_owed

log = logging.getLogger("comix.run")
RECONCILE_EVERY_S = 10.0


class RunStats(msgspec.Struct, kw_only=True):
    """`--stats-json`: the figures of a run (the pages it embedded, from the workers' readiness to
    the last commit), for the benchmarks to read."""

    pages: int
    seconds: float
    pages_per_s: float
    workers: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    worker = argparse.ArgumentParser(add_help=False)
    add_worker_arguments(worker)
    for action in worker._actions:  # the worker's model options, minus those `run` sets itself
        if action.dest not in (
            "help",
            "broker",
            "image_root",
            "endpoint_url",
            "anonymous",
            "name",
            "loglevel",
            "gpu_claim_dir",
            "checked",
            "model_key",
        ):
            parser._add_action(action)
    parser.add_argument("--workers", type=int, help="worker processes (default: one per GPU, else one per core)")
    parser.add_argument("--verify-batches", "--verify_batches", dest="verify_batches", action="store_true")
    parser.add_argument("--write-check", "--write_check", dest="write_check", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="one [PAGE] line per committed page")
    parser.add_argument(
        "--stats-json", type=Path, help="write the run's figures (pages, seconds, pages/s) to this file"
    )


def _die_with_parent() -> None:
    """Children get SIGTERM if `run` itself is killed, so no process is left behind."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Children:
    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, show_stdout: bool = False) -> None:
        """Start a child; its log goes to `<log_dir>/<name>.log` (stdout to the terminal if `show_stdout`)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            argv,
            stdout=None if show_stdout else out,
            stderr=out,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        out.close()

    def failed(self) -> list[str]:
        return [
            f"{n} (exit {p.returncode}, see {self.log_dir / (n + '.log')})"
            for n, p in self.procs.items()
            if p.poll() not in (None, 0)
        ]

    def alive(self, prefix: str) -> int:
        return sum(1 for n, p in self.procs.items() if n.startswith(prefix) and p.poll() is None)

    def stop(self, prefix: str, timeout: float, sig: dict[str, int]) -> None:
        """A signal to each process group (by name prefix), then SIGKILL what is left after `timeout`."""
        chosen = {n: p for n, p in self.procs.items() if n.startswith(prefix)}
        for name, p in chosen.items():
            if p.poll() is None:
                os.killpg(p.pid, next(s for k, s in sig.items() if name.startswith(k)))
        deadline = time.monotonic() + timeout
        for p in chosen.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # pool processes included
            p.wait()


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _identify(args: argparse.Namespace) -> ModelIdentity:
    """Load the checkpoint and tokenizer once (clear errors now, not in every worker): the
    identity the job is bound to; `plan` refuses it when the store or a job has another."""
    loaded = load_model(args.checkpoint, trust=args.trust_checkpoint)
    tokenizer = load_tokenizer(args.tokenizer, args.checkpoint)
    return make_identity(
        loaded.sha256, loaded.config.d, args.encoder_mode, tokenizer.identity, tokenizer.legacy_identity
    )


def _worker_plan(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    """(device, extra environment) per worker process: one per GPU, else one per core."""
    if args.device == "auto" and _gpu_count():
        gpus = _gpu_count()
        return [("cuda:0", {"CUDA_VISIBLE_DEVICES": str(i % gpus)}) for i in range(args.workers or gpus)]
    if args.device.startswith("cuda"):
        return [(args.device, {})] * (args.workers or 1)
    return [("cpu", {})] * (args.workers or max(1, os.cpu_count() or 1))


def wait_for_workers(client, names: list[str], children: Children, timeout: float = 600) -> None:
    """Until every worker's pool process has loaded its model, so timing starts with real work."""
    keys = [ready_key(n) for n in names]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if children.failed() or not children.alive("worker") or all(client.exists(k) for k in keys):
            return  # a failure is reported by the main loop
        time.sleep(0.2)
    log.warning("not every worker was ready within %.0f s; going on", timeout)


def _committed_pages(output_dir: Path) -> int:
    """Pages of every batch that has a manifest (cheap: the checkpoint and the few manifests past it)."""
    return load_committed(store_path(output_dir))[0].pages()


def _owed(jobs: list[Job], output_dir: Path) -> set[int]:
    return {b for batches in store_owed(store_path(output_dir), jobs).values() for b in batches}


def lost_work(client, store: str, identity: ModelIdentity) -> bool:
    """Nothing queued, nothing held, no result waiting: anything still owed was lost."""
    return (
        deliveries.queued(client, queue_name(identity)) == 0
        and not batch_lease.batch_leases(client, store)
        and client.xlen(results_key(store)) == 0
    )


def _refused(client, store: str, jobs: list[Job], output_dir: Path) -> str:
    """Why `run` must stop: batches still owed whose results were refused COMIX_MAX_ATTEMPTS times."""
    if not client.exists(keys.REFUSALS.format(store=store)):
        return ""
    refused = deliveries.refused_out(client, store, _owed(jobs, output_dir))
    return "; ".join(
        f"the results of batch {b} were refused {config.MAX_ATTEMPTS} times: {why}" for b, why in refused.items()
    )


def _last_commit(output_dir: Path) -> float:
    """When the newest manifest was written (wall-clock seconds)."""
    return recent_manifests(store_path(output_dir), 1)[-1][0]


def _failed_pages(output_dir: Path) -> int:
    path = store_path(output_dir)
    return failed_now(path, load_committed(path)[0].status_count("failed"))[0]


def _registered_rows(jobs: list[Job]) -> int:
    return max((j.end_row for j in jobs), default=0)


def _covered(output_dir: Path, rows: int) -> bool:
    """Done means `committed_rows` covers every registered row, of every job."""
    path = store_path(output_dir)
    return path.exists() and read_committed_rows(path) >= rows


def run(args: argparse.Namespace) -> int:
    identity = _identify(args)
    check_remote_roots(ImageResolver(args.image_root).roots)  # before anything starts: wrong credentials, no bucket
    if args.retry_failed:
        from comix_embed.retry_run import run_retry  # it uses this module's pieces

        return run_retry(args, identity)
    _job, report = plan(args, identity)
    for line in report.lines():
        print(line, flush=True)
    jobs = load_jobs(args.output_dir)
    if _covered(args.output_dir, _registered_rows(jobs)):
        print(f"every job of {store_path(args.output_dir)} is already committed", flush=True)
        return EXIT_PAGES_FAILED if _failed_pages(args.output_dir) else EXIT_OK
    return with_system(args, lambda children: _run_jobs(args, identity, report, children))


def with_system(args: argparse.Namespace, work: Callable[[Children], int]) -> int:
    """Run `work` with a broker (a private Redis unless `--broker` names one) and the children it
    starts; everything is stopped afterwards, also on Ctrl-C."""
    redis_server = None if args.broker else PrivateRedis().start()
    if redis_server is not None:
        args.broker = redis_server.url
        print(f"broker: private Redis on 127.0.0.1:{redis_server.port} ({redis_server.binary})", flush=True)
    # children read the broker from the environment, never from a command line that every user
    # of the machine can see (its URL may hold a password)
    os.environ[config.BROKER_URL.name] = args.broker
    children = Children(args.output_dir / "logs")
    try:
        return work(children)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: stopping workers and writer (committed batches are kept; run again to resume)", flush=True
        )
        return EXIT_INTERRUPTED
    finally:
        # workers: a cold shutdown, which gives back what they hold (sent again, ahead of new
        # batches, to the next run's workers); the writer: a clean stop after the commit at hand
        children.stop("", timeout=30, sig={"worker": signal.SIGQUIT, "writer": signal.SIGTERM})
        if redis_server is not None:
            redis_server.stop()


def stop(children: Children, problem: str) -> int:
    """Say why `run` stops and return its exit status: a writer stopped by a full disk has said
    where and how much room it needs (4), anything else is `problem` (1)."""
    if children.procs["writer"].poll() == EXIT_DISK_FULL:
        said = (children.log_dir / "writer.log").read_text(errors="replace").splitlines()
        print(next((x for x in reversed(said) if x.startswith("error:")), problem), file=sys.stderr, flush=True)
        return EXIT_DISK_FULL
    print(f"stopping: {problem}", file=sys.stderr, flush=True)
    return EXIT_FAILED


def start_children(args: argparse.Namespace, children: Children, identity: ModelIdentity) -> list[str]:
    """The writer and the workers; returns the workers' node names."""
    writer_argv = cli_argv("writer", "--output-dir", str(args.output_dir))
    writer_argv += [
        flag
        for flag, on in (
            ("--verify-batches", args.verify_batches),
            ("--write-check", args.write_check),
            ("--verbose", args.verbose),
        )
        if on
    ]
    children.start("writer", writer_argv, show_stdout=args.verbose)  # [PAGE] lines to the terminal
    plan_ = _worker_plan(args)
    per_worker = max(1, (os.cpu_count() or 1) // len(plan_))  # CPU threads, so workers do not oversubscribe
    host = socket.gethostname()
    names = [f"comix-run{i}-{os.getpid()}@{host}" for i in range(len(plan_))]
    for i, (device, env) in enumerate(plan_):
        wargs = argparse.Namespace(**vars(args), loglevel="INFO", model_key=model_key(identity))
        if device == "cpu":
            wargs.torch_threads = args.torch_threads or per_worker
            wargs.decode_threads = args.decode_threads or per_worker
        children.start(f"worker-{i}", worker_command(wargs, device, names[i]) + ["--checked"], env)
    print(f"{len(plan_)} worker(s) on {plan_[0][0]}, logs in {children.log_dir}", flush=True)
    return names


def _run_jobs(args: argparse.Namespace, identity: ModelIdentity, report: EnqueueReport, children: Children) -> int:
    client = connect(args.broker)
    store = report.store
    assert store is not None
    jobs = load_jobs(args.output_dir)
    refused = _refused(client, store, jobs, args.output_dir)
    if refused:  # before anything starts: a batch refused that often needs a look, not another run
        print(f"stopping: {refused}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    names = start_children(args, children, identity)
    wait_for_workers(client, names, children)
    started = time.time()
    send_owed(args, report, skip_recent=False)
    for line in report.sent_lines():
        print(line, flush=True)
    rows = _registered_rows(jobs)
    total = sum(j.page_count for j in jobs)
    bar = tqdm(total=total, unit="page", desc="committed", smoothing=0.1, dynamic_ncols=True)
    done = already_done = _committed_pages(args.output_dir)
    bar.update(done)
    last_change = time.monotonic()
    while not _covered(args.output_dir, rows):
        time.sleep(0.2)
        problem = "; ".join(children.failed()) or (
            "" if children.alive("worker") else f"every worker exited (see {children.log_dir})"
        )
        problem = problem or _refused(client, store, jobs, args.output_dir)
        if problem:
            bar.close()
            return stop(children, problem)
        now_done = _committed_pages(args.output_dir)
        if now_done != done:
            bar.update(now_done - done)
            done, last_change = now_done, time.monotonic()
        elif time.monotonic() - last_change > RECONCILE_EVERY_S and lost_work(client, store, identity):
            before = report.batches_sent
            send_owed(args, report, skip_recent=False)
            log.warning("re-sent %d batches the broker no longer held", report.batches_sent - before)
            last_change = time.monotonic()
    bar.update(_committed_pages(args.output_dir) - done)
    bar.close()
    seconds = _last_commit(args.output_dir) - started
    pending = total - already_done
    if args.stats_json:
        stats = RunStats(
            pages=pending, seconds=round(seconds, 3), pages_per_s=round(pending / seconds, 3), workers=len(names)
        )
        args.stats_json.write_bytes(encode_json(stats))
    print(
        f"{pending} pages embedded and committed in {seconds:.1f} s ({pending / seconds:.2f} pages/s, workers ready)",
        flush=True,
    )
    failed_pages = _failed_pages(args.output_dir)
    print(
        f"done: {total} pages committed to {store_path(args.output_dir)} ({rows} rows readable in order)"
        + (
            f"; {failed_pages} failed (reasons in the store's `error` array and {args.output_dir / config.AUDIT_LOG_NAME})"
            if failed_pages
            else ""
        ),
        flush=True,
    )
    return EXIT_PAGES_FAILED if failed_pages else EXIT_OK
