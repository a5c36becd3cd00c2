"""Which S3 client reads inputs fastest: boto3 (as common/inputs/s3.py uses it), obstore, s3fs.

    python -m benchmarks.object_clients [--objects 300] [--rounds 3] [--in-flight 32]
                                        [--s3fs-site DIR] [--json]

Why: the library that reads inputs is chosen on these figures. The same objects (page-sized,
about 1 MB of incompressible bytes, and DataSpec-sized, 2 KB) are read from one moto S3 server
through tests/object_store.py's fault proxy adding 20 ms to every request, with the same number of
reads in flight, by each client in a fresh child process; clients alternate, best round of each kept.
Each figure comes with the client's CPU time per object: on the workers' cores, a client's CPU
is taken from decoding. s3fs pins an older botocore than boto3's, so it cannot share the
project's environment: install it aside (`pip install --target DIR s3fs`) and pass --s3fs-site DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.remote import ROOT, latency_proxy, process_cpu_s

BUCKET = "comix-clients"
LATENCY_S = 0.02
CLIENTS = ("boto3", "obstore", "obstore_async", "s3fs")
SIZES = {"page": (800_000, 1_200_000), "dataspec": (1_500, 2_500)}  # bytes, uniform between
DEFAULT_S3FS_SITE = Path(tempfile.gettempdir()) / "comix-s3fs-site"
_CHILD = "import sys; from benchmarks.object_clients import child; child(*sys.argv[1:])"


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ---- in the child: one client, one set of objects ----


def _boto3(keys: list[str], in_flight: int) -> Callable[[], int]:
    """The project's own reader (common/inputs/s3.py): one boto3 client, max_pool_connections =
    COMIX_REMOTE_READS_IN_FLIGHT (set by the parent), from a thread pool."""
    from comix_embed.common.inputs import s3
    from comix_embed.common.inputs.locations import RemoteURL

    urls = [RemoteURL("s3", BUCKET, key) for key in keys]
    s3.get(urls[0])  # the client made and one connection opened before timing

    def fetch() -> int:
        with ThreadPoolExecutor(in_flight) as pool:
            return sum(len(data) for data in pool.map(s3.get, urls))

    return fetch


def _obstore_store() -> Any:
    from obstore.store import S3Store

    return S3Store(
        BUCKET,
        endpoint=os.environ["AWS_ENDPOINT_URL_S3"],
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region="us-east-1",
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )


def _obstore(keys: list[str], in_flight: int) -> Callable[[], int]:
    """obstore's blocking `get` (the GIL released while it waits) from a thread pool."""
    import obstore

    store = _obstore_store()
    obstore.get(store, keys[0]).bytes()

    def one(key: str) -> int:
        return len(bytes(obstore.get(store, key).bytes()))

    def fetch() -> int:
        with ThreadPoolExecutor(in_flight) as pool:
            return sum(pool.map(one, keys))

    return fetch


def _obstore_async(keys: list[str], in_flight: int) -> Callable[[], int]:
    """obstore's async `get_async` on one event loop, a semaphore bounding the reads in flight."""
    import obstore

    store = _obstore_store()
    obstore.get(store, keys[0]).bytes()

    async def all_keys() -> int:
        gate = asyncio.Semaphore(in_flight)

        async def one(key: str) -> int:
            async with gate:
                answer = await obstore.get_async(store, key)
                return len(bytes(await answer.bytes_async()))

        return sum(await asyncio.gather(*(one(key) for key in keys)))

    return lambda: asyncio.run(all_keys())


def _s3fs(keys: list[str], in_flight: int) -> Callable[[], int]:
    """s3fs's `cat` of the whole list, `batch_size` reads in flight on its own event loop, one GET each."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=os.environ["AWS_ACCESS_KEY_ID"],
        secret=os.environ["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"],
        client_kwargs={"region_name": "us-east-1"},
        config_kwargs={"max_pool_connections": in_flight, "retries": {"total_max_attempts": 1}},
        skip_instance_cache=True,
        use_listings_cache=False,
        max_concurrency=1,  # else a HEAD before every GET, to choose between one read and ranged parts
    )
    paths = [f"{BUCKET}/{key}" for key in keys]
    fs.cat_file(paths[0])

    def fetch() -> int:
        return sum(len(data) for data in fs.cat(paths, batch_size=in_flight, on_error="raise").values())

    return fetch


READERS: dict[str, Callable[[list[str], int], Callable[[], int]]] = {
    "boto3": _boto3,
    "obstore": _obstore,
    "obstore_async": _obstore_async,
    "s3fs": _s3fs,
}


def child(client: str, kind: str, count: str, in_flight: str) -> None:
    """Read `count` objects of `kind` with `client`; print the figures (or why it could not) as JSON."""
    keys = [f"{kind}/{i:05d}" for i in range(int(count))]
    try:
        fetch = READERS[client](keys, int(in_flight))
    except ImportError as exc:
        hint = " (pip install --target DIR s3fs; pass --s3fs-site DIR)" if client == "s3fs" else ""
        print(json.dumps({"unavailable": f"{type(exc).__name__}: {exc}{hint}"}))
        return
    cpu0, t0 = time.process_time(), time.perf_counter()
    total = fetch()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    versions = {}
    for module in ("boto3", "botocore", "obstore", "s3fs", "aiobotocore"):
        found = sys.modules.get(module)
        if found is not None:
            versions[module] = getattr(found, "__version__", "?")
    print(
        json.dumps(
            {
                "objects": len(keys),
                "bytes": total,
                "seconds": round(seconds, 4),
                "objects_per_s": round(len(keys) / seconds, 1),
                "mb_per_s": round(total / seconds / 1e6, 2),
                "client_cpu_ms_per_object": round(1000 * cpu / len(keys), 3),
                "versions": versions,
            }
        )
    )


# ---- in the parent ----


def why_not(run: dict[str, Any]) -> str:
    """Why a run has no figures ("" when it has): the library is missing, or the child failed."""
    return str(run.get("unavailable") or run.get("failed") or "")


def make_objects(server: Any, count: int) -> dict[str, int]:
    """`count` objects of each kind, incompressible bytes of sizes spread like pages and DataSpecs."""
    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    rng = random.Random(0)
    jobs = [(f"{kind}/{i:05d}", rng.randint(*SIZES[kind])) for kind in SIZES for i in range(count)]

    def put(job: tuple[str, int]) -> None:
        client.put_object(Bucket=BUCKET, Key=job[0], Body=os.urandom(job[1]))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, jobs))
    return {kind: sum(size for key, size in jobs if key.startswith(kind + "/")) for kind in SIZES}


def measure(
    client: str, kind: str, count: int, in_flight: int, env: dict[str, str], servers: dict[str, int], s3fs_site: Path
) -> dict[str, Any]:
    run_env = {**os.environ, **env, "COMIX_REMOTE_READS_IN_FLIGHT": str(in_flight)}
    if client == "s3fs" and s3fs_site.is_dir():
        run_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(s3fs_site), os.environ.get("PYTHONPATH")]))
    before = {name: process_cpu_s(pid) for name, pid in servers.items()}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, client, kind, str(count), str(in_flight)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=run_env,
    )
    printed = proc.stdout.strip().splitlines()
    if not printed or not printed[-1].startswith("{"):
        said = proc.stderr.strip().splitlines()
        return {"failed": f"exit status {proc.returncode}: {said[-1] if said else ''}"}
    figures: dict[str, Any] = json.loads(printed[-1])
    if proc.returncode != 0:  # after its reads, which count: say so beside the figures
        figures["exit_status"] = proc.returncode
    for name, pid in servers.items():
        # whole child, set-up included: a bound on what the servers spent on these reads
        figures[f"{name}_cpu_ms_per_object"] = round(1000 * (process_cpu_s(pid) - before[name]) / count, 3)
    return figures


def main(argv: list[str] | None = None) -> int:
    from tests.object_store import s3_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--objects", type=int, default=300, help="objects of each kind (page, DataSpec)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"among {', '.join(CLIENTS)}")
    parser.add_argument(
        "--s3fs-site", type=Path, default=DEFAULT_S3FS_SITE, help="folder where s3fs was installed with pip --target"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    clients = [c for c in args.clients.split(",") if c]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {c: {kind: [] for kind in SIZES} for c in clients}
    with s3_server() as server:
        sizes = make_objects(server, args.objects)
        load_before = os.getloadavg()[0]
        with latency_proxy(server.endpoint, LATENCY_S) as (proxy_url, proxy_pid):
            env = server.env(proxy_url)
            servers = {"moto": server.proc.pid, "proxy": proxy_pid}
            for r in range(args.rounds):
                for client in clients:
                    for kind in SIZES:
                        run = measure(client, kind, args.objects, args.in_flight, env, servers, args.s3fs_site)
                        runs[client][kind].append(run)
                        said = why_not(run) or f"{run['objects_per_s']:8.1f} objects/s {run['mb_per_s']:7.1f} MB/s"
                        if run.get("exit_status"):
                            said += f" (then exit status {run['exit_status']})"
                        log(f"round {r + 1} {client:<14} {kind:<9} {said}")
    results: dict[str, Any] = {}
    for client in clients:
        results[client] = {}
        for kind in SIZES:
            done = [run for run in runs[client][kind] if not why_not(run)]
            if not done:
                results[client][kind] = {"unavailable": why_not(runs[client][kind][-1])}
                continue
            top = max(done, key=lambda run: run["objects_per_s"])
            results[client][kind] = {
                key: top[key]
                for key in (
                    "objects_per_s",
                    "mb_per_s",
                    "client_cpu_ms_per_object",
                    "moto_cpu_ms_per_object",
                    "proxy_cpu_ms_per_object",
                    "versions",
                )
            }
            # what one core could read if this client's work were all it did (moto's own cost aside)
            results[client][kind]["objects_per_client_cpu_s"] = round(1000 / max(top["client_cpu_ms_per_object"], 1e-3))
            results[client][kind]["rounds"] = [run["objects_per_s"] for run in done]
            crashed = [run["exit_status"] for run in done if run.get("exit_status")]
            if crashed:
                results[client][kind]["exited_abnormally_after_its_reads"] = crashed
    figures = {
        "device": f"CPU ({os.cpu_count()} cores)",
        "s3_server": "moto (ThreadedMotoServer, one process) on 127.0.0.1, through the fault proxy (its own process)",
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "latency_ms": LATENCY_S * 1000,
        "in_flight": args.in_flight,
        "objects": args.objects,
        "mean_bytes": {kind: round(total / args.objects) for kind, total in sizes.items()},
        "rounds": args.rounds,
        "clients": results,
    }
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))
    for kind in SIZES:
        log(
            f"{kind} objects ({figures['mean_bytes'][kind]} bytes): "
            + "; ".join(
                f"{c} {r[kind]['objects_per_s']:.0f}/s, {r[kind]['mb_per_s']:.1f} MB/s, "
                f"{r[kind]['client_cpu_ms_per_object']:.2f} ms CPU each"
                if "unavailable" not in r[kind]
                else f"{c} unavailable"
                for c, r in results.items()
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
