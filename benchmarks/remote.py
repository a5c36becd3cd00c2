"""Remote inputs: does reading from object storage slow the system down? Local disk against S3.

    python -m benchmarks.remote [--pages 200] [--dataspecs 3000] [--rounds 2] [--run-args ARGS]
                                [--parts pipeline,planning] [--keep DIR] [--json]

Workers on rented machines read their inputs from S3, where each request waits tens of
milliseconds; the goals are a pipeline from S3 with 20 ms latency at >= 0.9 of local disk, and
planning at >= 1,000 DataSpecs/s. On one corpus, local and S3 cases alternating (best of each):
`comix-embed run` pages/s and the producer's planning rate (read_list + plan_pages) from local
disk, from S3 (moto on 127.0.0.1), and from S3 through tests/object_store.py's fault proxy
adding 20 ms per request. Moto and the proxy share the machine's cores: their CPU time is
reported beside the rates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "comix-bench"
LATENCY_S = 0.02
CASES = ("local", "s3", "s3_latency")
PIPELINE_GOAL = 0.9  # S3 with 20 ms latency against local disk
PLANNING_GOAL = 1000.0  # DataSpecs/s with 20 ms latency

# A child process: the fault proxy in front of moto, so that its threads do not share a GIL with
# the code measured. It prints its URL once it listens and stops when its stdin closes.
_PROXY = """
import sys
from tests.object_store import Faults, fault_proxy
with fault_proxy(sys.argv[1], Faults(latency_s=float(sys.argv[2]))) as url:
    print(url, flush=True)
    sys.stdin.read()
"""
_PLAN = "import sys; from benchmarks.remote import plan_child; plan_child(sys.argv[1], sys.argv[2])"


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ---- inputs ----


def prepare_inputs(work: Path, pages: int, dataspecs: int) -> tuple[Path, Path, Path]:
    """The sample corpus, a tiny checkpoint and the planning corpus (`dataspecs` DataSpecs that are
    copies of the corpus's under other keys), made once per work folder."""
    from comix_embed.tools.init_checkpoint import init_checkpoint
    from comix_embed.tools.sample.corpus import make_sample

    corpus, ckpt, plan = work / f"corpus-{pages}", work / "model-tiny.pt", work / f"plan-{dataspecs}"
    if not (corpus / "list.txt").exists():
        make_sample(corpus, pages=pages, seed=0)
    if not ckpt.exists():
        init_checkpoint(ckpt, size="tiny", seed=0)
    if not (plan / "list.txt").exists():
        specs = sorted(p.relative_to(corpus / "dataspecs").as_posix() for p in (corpus / "dataspecs").rglob("*.json"))
        lines = []
        for i in range(dataspecs):
            rel = f"dataspecs/c{i // len(specs):04d}/{specs[i % len(specs)]}"
            target = plan / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(corpus / "dataspecs" / specs[i % len(specs)], target)
            lines.append(rel)
        (plan / "list.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return corpus, ckpt, plan


def upload(server: Any, folder: Path, prefix: str, threads: int = 8) -> int:
    """Every file below `folder` as `<prefix><relative path>` in the bucket (made if missing)."""
    client = server.client()
    with suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]

    def put(path: Path) -> None:
        client.put_object(Bucket=BUCKET, Key=prefix + path.relative_to(folder).as_posix(), Body=path.read_bytes())

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, files))
    return len(files)


@contextmanager
def latency_proxy(upstream: str, latency_s: float) -> Iterator[tuple[str, int]]:
    """tests/object_store.py's fault proxy, adding `latency_s` to every request, in its own
    process; yields its URL and process id."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _PROXY, upstream, str(latency_s)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        url = proc.stdout.readline().strip()
        if not url:
            raise RuntimeError(f"the fault proxy did not start (exit status {proc.wait()})")
        yield url, proc.pid
    finally:
        from tests.object_store import stop_child

        stop_child(proc)


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far; 0 where /proc cannot tell."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def with_server_cpu(servers: dict[str, int | None], measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`measure()`, with the CPU seconds each server process (moto, proxy) and the measured child
    processes used meanwhile added to its figures."""
    before = {name: process_cpu_s(pid) for name, pid in servers.items()}
    children = children_cpu_s()
    figures = measure()
    for name, pid in servers.items():
        figures[f"{name}_cpu_s"] = round(process_cpu_s(pid) - before[name], 3)
    figures["measured_cpu_s"] = round(children_cpu_s() - children, 3)
    return figures


# ---- the pipeline ----


def measure_pipeline(
    list_location: str, image_root: str, ckpt: Path, work: Path, env: dict[str, str], batch: int, extra: list[str]
) -> dict[str, Any]:
    """`comix-embed run` on the list, its figures (RunStats) and the pages it says failed."""
    from benchmarks.throughput import timed_run  # torch and the model code: not in the planning child

    out = Path(tempfile.mkdtemp(prefix="pipeline-", dir=work))
    try:
        source = ["--list", list_location, "--image-root", image_root]
        figures, printed = timed_run(out, ckpt, batch, source, ["--device", "cpu", *extra], env)
        failed = re.search(r"; (\d+) failed", printed)
        figures["failed_pages"] = int(failed.group(1)) if failed else 0
        return figures
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---- planning ----


def plan_child(list_location: str, image_root: str) -> None:
    """In a child process (its environment says where S3 is): read the list and plan every page,
    as the producer does; prints the figures as JSON."""
    from comix_embed.common.inputs.listfile import read_list
    from comix_embed.common.inputs.paths import ImageResolver
    from comix_embed.producer.plan import plan_pages

    t0 = time.perf_counter()
    listed = read_list(list_location)
    planned = plan_pages(listed, ImageResolver([image_root]))
    seconds = time.perf_counter() - t0
    failed = [p.task.error for p in planned if p.task.error]
    print(
        json.dumps(
            {
                "dataspecs": len(planned),
                "seconds": round(seconds, 3),
                "dataspecs_per_s": round(len(planned) / seconds, 1),
                "failed": len(failed),
                "first_failure": failed[0] if failed else None,
            }
        )
    )


def measure_planning(list_location: str, image_root: str, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _PLAN, list_location, image_root],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"planning failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if figures["failed"]:
        raise RuntimeError(f"planning failed for {figures['failed']} DataSpecs, e.g. {figures['first_failure']}")
    return figures


# ---- the run ----


def per_unit_ms(run: dict[str, Any], count: int) -> dict[str, float]:
    """CPU milliseconds per page or DataSpec of each process that is not the system itself."""
    return {
        key.removesuffix("_cpu_s") + "_cpu_ms": round(1000 * run[key] / count, 2)
        for key in ("moto_cpu_s", "proxy_cpu_s", "measured_cpu_s")
        if run.get(key)
    }


def best(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return max(runs, key=lambda r: r[key])


def main(argv: list[str] | None = None) -> int:
    from tests.object_store import s3_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pages", type=int, default=200, help="pages of the sample corpus (pipeline)")
    parser.add_argument("--dataspecs", type=int, default=3000, help="DataSpecs in the planning list")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--run-args",
        default="",
        help="more options for `comix-embed run`, as --run-args='--workers 1 --torch-threads 1'",
    )
    parser.add_argument("--parts", default="pipeline,planning", help="what to measure: pipeline, planning or both")
    parser.add_argument("--rounds", type=int, default=2, help="each case measured this many times, alternating")
    parser.add_argument(
        "--in-flight",
        default="4,16,64",
        help="COMIX_REMOTE_READS_IN_FLIGHT values for planning on S3 with latency, once each ('' for none)",
    )
    parser.add_argument("--keep", type=Path, help="work folder to keep (corpus, checkpoint and DataSpecs reused)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="comix-remote-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus, ckpt, plan = prepare_inputs(work, args.pages, args.dataspecs)
        with s3_server() as server:
            t0 = time.perf_counter()
            uploaded = upload(server, corpus, "corpus/") + upload(server, plan, "plan/")
            log(f"uploaded {uploaded} objects to moto in {time.perf_counter() - t0:.1f} s")
            with latency_proxy(server.endpoint, LATENCY_S) as (proxy_url, proxy_pid):
                figures = measure_all(args, work, corpus, ckpt, plan, server, proxy_url, proxy_pid)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures))
    else:
        print(json.dumps(figures, indent=2))
    summarize(figures)
    return 0


def measure_all(
    args: argparse.Namespace,
    work: Path,
    corpus: Path,
    ckpt: Path,
    plan: Path,
    server: Any,
    proxy_url: str,
    proxy_pid: int,
) -> dict[str, Any]:
    """Both parts asked for (`--parts`), cases alternating within each round."""
    s3_root = f"s3://{BUCKET}/corpus/images/"
    envs = {"local": {}, "s3": server.env(), "s3_latency": server.env(proxy_url)}
    servers: dict[str, dict[str, int | None]] = {
        "local": {},
        "s3": {"moto": server.proc.pid},
        "s3_latency": {"moto": server.proc.pid, "proxy": proxy_pid},
    }
    s3_list, s3_plan = f"s3://{BUCKET}/corpus/list.txt", f"s3://{BUCKET}/plan/list.txt"
    sources = {"local": (str(corpus / "list.txt"), str(corpus / "images")), "s3": (s3_list, s3_root)}
    plan_sources = {"local": (str(plan / "list.txt"), str(corpus / "images")), "s3": (s3_plan, s3_root)}
    sources["s3_latency"], plan_sources["s3_latency"] = sources["s3"], plan_sources["s3"]
    parts = {p.strip() for p in args.parts.split(",")}
    log(f"pages: {args.pages}, DataSpecs to plan: {args.dataspecs}, S3 latency case: +{LATENCY_S * 1000:.0f} ms")
    load_before = os.getloadavg()[0]
    pipeline: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    planning: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    for r in range(args.rounds):
        for case in CASES if "pipeline" in parts else ():
            measure = partial(
                measure_pipeline, *sources[case], ckpt, work, envs[case], args.batch_size, shlex.split(args.run_args)
            )
            pipeline[case].append(with_server_cpu(servers[case], measure))
            log(f"round {r + 1} pipeline {case:<10} {pipeline[case][-1]['pages_per_s']:8.2f} pages/s")
        for case in CASES if "planning" in parts else ():
            planning[case].append(
                with_server_cpu(servers[case], partial(measure_planning, *plan_sources[case], envs[case]))
            )
            log(f"round {r + 1} planning {case:<10} {planning[case][-1]['dataspecs_per_s']:8.1f} DataSpecs/s")
    sweep: dict[str, float] = {}
    for width in [int(w) for w in args.in_flight.split(",") if w.strip()] if "planning" in parts else []:
        env = {**envs["s3_latency"], "COMIX_REMOTE_READS_IN_FLIGHT": str(width)}
        sweep[str(width)] = measure_planning(*plan_sources["s3_latency"], env)["dataspecs_per_s"]
        log(f"planning s3_latency, {width:>3} reads in flight: {sweep[str(width)]:8.1f} DataSpecs/s")
    figures: dict[str, Any] = {
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "s3_server": "moto (ThreadedMotoServer, one process) on 127.0.0.1; latency by the fault proxy, its own process",
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "latency_ms": LATENCY_S * 1000,
        "reads_in_flight": int(os.environ.get("COMIX_REMOTE_READS_IN_FLIGHT", "32")),
        "goals": {},
    }
    done = [pipeline_figures(args, pipeline)] if "pipeline" in parts else []
    done += [planning_figures(args, planning, sweep)] if "planning" in parts else []
    for part in done:
        figures["goals"].update(part.pop("goals"))
        figures.update(part)
    return figures


def pipeline_figures(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    top = {case: best(runs[case], "pages_per_s") for case in CASES}
    local = top["local"]["pages_per_s"]
    return {
        "pages": args.pages,
        "batch_size": args.batch_size,
        "workers": top["local"]["workers"],
        "run_args": args.run_args,
        "pipeline_pages_per_s": {case: top[case]["pages_per_s"] for case in CASES},
        "s3_vs_local": round(top["s3"]["pages_per_s"] / local, 3),
        "s3_latency_vs_local": round(top["s3_latency"]["pages_per_s"] / local, 3),
        "pipeline_rounds": {case: [r["pages_per_s"] for r in runs[case]] for case in CASES},
        "failed_pages": {case: top[case]["failed_pages"] for case in CASES},
        # CPU per page over the whole `run` (start-up and planning included) of moto, of the proxy
        # and of the `run` process tree (its workers, writer and Redis)
        "cpu_ms_per_page": {case: per_unit_ms(top[case], args.pages) for case in CASES},
        "goals": {
            "pipeline_s3_latency_vs_local_at_least_0.9": top["s3_latency"]["pages_per_s"] / local >= PIPELINE_GOAL
        },
    }


def planning_figures(
    args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]], sweep: dict[str, float]
) -> dict[str, Any]:
    top = {case: best(runs[case], "dataspecs_per_s") for case in CASES}
    per_dataspec = {case: per_unit_ms(top[case], args.dataspecs) for case in CASES}
    return {
        "dataspecs": args.dataspecs,
        "planning_dataspecs_per_s": {case: top[case]["dataspecs_per_s"] for case in CASES},
        "planning_s3_latency_by_reads_in_flight": sweep,
        "planning_rounds": {case: [r["dataspecs_per_s"] for r in runs[case]] for case in CASES},
        # CPU per DataSpec of moto, of the proxy and of the planning process
        "cpu_ms_per_dataspec": per_dataspec,
        # the planning rates at which moto (one process: one core at most, under its GIL) and the
        # planner (its reads through one boto3 client, likewise) would each be saturated
        "planning_ceilings_per_s": {
            case: {
                "moto": round(1000 / per_dataspec[case]["moto_cpu_ms"]),
                "planner": round(1000 / per_dataspec[case]["measured_cpu_ms"]),
            }
            for case in CASES[1:]
        },
        "moto_busy_during_planning": {
            case: round(top[case]["moto_cpu_s"] / top[case]["seconds"], 2) for case in CASES[1:]
        },
        "goals": {"planning_s3_latency_at_least_1000_per_s": top["s3_latency"]["dataspecs_per_s"] >= PLANNING_GOAL},
    }


def summarize(f: dict[str, Any]) -> None:
    log(f"\n{f['device']}; {f['s3_server']}")
    if "pipeline_pages_per_s" in f:
        p = f["pipeline_pages_per_s"]
        log(
            f"pipeline ({f['pages']} pages, {f['workers']} workers, batch {f['batch_size']}): local {p['local']:.1f}, "
            f"S3 {p['s3']:.1f}, S3 +{f['latency_ms']:.0f} ms {p['s3_latency']:.1f} pages/s; S3/local "
            f"{f['s3_vs_local']:.3f}, S3+latency/local {f['s3_latency_vs_local']:.3f} (goal >= {PIPELINE_GOAL})"
        )
    if "planning_dataspecs_per_s" in f:
        q = f["planning_dataspecs_per_s"]
        log(
            f"planning ({f['dataspecs']} DataSpecs): local {q['local']:.0f}, S3 {q['s3']:.0f}, "
            f"S3 +{f['latency_ms']:.0f} ms {q['s3_latency']:.0f} DataSpecs/s (goal >= {PLANNING_GOAL:.0f}); "
            "by reads in flight: "
            + ", ".join(f"{k}: {v:.0f}" for k, v in f["planning_s3_latency_by_reads_in_flight"].items())
        )
        log(
            "planning ceilings from CPU per DataSpec (moto / planner, DataSpecs/s): "
            + ", ".join(f"{k} {v['moto']} / {v['planner']}" for k, v in f["planning_ceilings_per_s"].items())
            + "; moto busy (CPU s / wall s): "
            + ", ".join(f"{k} {v}" for k, v in f["moto_busy_during_planning"].items())
        )
    log("goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in f["goals"].items()))


if __name__ == "__main__":
    sys.exit(main())
