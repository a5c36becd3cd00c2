"""Snapshots at the users' scale: is `comix-embed snapshot` as fast as a plain copy, and is the next one small?

    python -m benchmarks.snapshot [--pages 300000] [--d 384] [--rounds 2] [--keep DIR] [--json]

Why: users back up and share a store that grows for days; `comix-embed snapshot` must cost about
what `cp -r` of the output folder costs the first time (its goal: at least half cp's speed, that
is at most twice cp's seconds, although it reads every byte for its SHA-256 and fsyncs every file
it writes), and afterwards send what changed only (the goal: a snapshot after 10 % more pages
sends at most 15 % of the bytes of the first).

How, in one run, side by side:
- a store of N pages grown by the real writer (`StoreWriter`, fsync off, results of batches of
  256 made by tests/synthetic.py, committed in groups of 8 batches), as tests/test_snapshot.py
  grows its stores;
- `cp -r OUTPUT_DIR COPY` (a process, timed) and the first snapshot to a local folder
  (`take_snapshot`), alternating `--rounds` times, best of each kept; `sync` (not timed) before
  each, so that neither pays for the other's dirty pages. The store fits in memory, so both read
  it from the page cache (the share cached before each is reported); cp's copy may still be in
  the page cache when it exits, the snapshot's is on disk (it fsyncs every file):
  `cp_then_sync_s` is cp followed by `sync -f` on its copy, for comparison;
- the first snapshot to S3: moto in server mode (tests/object_store.py), its own process on the
  same two cores (its CPU time is reported);
- the store grown by 10 % (a second, incremental job), then the next snapshot to the same local
  folder and to the same S3 prefix: seconds and bytes sent, and which files the bytes were.

Where the time goes, measured apart in the same run: listing the snapshot's files
(`snapshot_files`), reading and hashing every file with the snapshot's threads and nothing
written, SHA-256 in memory on one thread, and the seconds spent in the destination's `write` and
`reuse` summed over the sending threads. Notes go to stderr, the figures to stdout. The load
average is reported at the start (other sessions' work), before the copies and at the end: the
later ones count this run's own threads (16 senders waiting on the disk or on moto).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.scale import check_disk
from comix_embed.common import config
from comix_embed.common.inputs.locations import parse_url
from comix_embed.tools.snapshot.command import SENDERS, SnapshotContents, take_snapshot
from comix_embed.tools.snapshot.destination import Destination, LocalDestination, S3Destination
from comix_embed.tools.snapshot.source import SourceFile, snapshot_files
from comix_embed.writer.commit import StoreWriter
from tests import synthetic

BATCH_SIZE = 256
GROUP = 8  # batches per commit
GROWTH = 0.10  # the second job: 10 % more pages
BUCKET = "comix-snapshots"
PREFIX = "bench/"
LOCAL_GOAL = 0.5  # cp_seconds / snapshot_seconds, at least
INCREMENTAL_GOAL = 0.15  # bytes sent by the incremental snapshot / by the first, at most


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- what the run needs ---


def bytes_per_page(d: int) -> int:
    """A page's share of the store: page and 12 panel embeddings uncompressed (13 * 4 * d), the
    other arrays, its manifest line, job file and audit line (about 2 KB, measured)."""
    return 13 * 4 * d + 2000


def disk_needed(pages: int, d: int) -> int:
    """Bytes the run holds at its peak, with a 25 % margin: the live store after growth (S), one
    cp copy at a time (S), the local snapshots (one round kept, S, and the incremental's new
    files), and moto's spooled objects (those over its 5 MB buffer, the panel embeddings' shards:
    the first snapshot's and the server-side copies of the incremental one, about 2 S)."""
    store = int(pages * (1 + GROWTH)) * bytes_per_page(d)
    return int(store * (1 + 1 + 1.2 + 2) * 1.25)


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))


# --- the store ---


def grow(out: Path, pages: int, name: str, incremental: bool, seed: int, d: int) -> float:
    """A job of `pages` synthetic pages committed by the real writer; its seconds (planning included)."""
    t0 = time.perf_counter()
    job, _ = synthetic.plan(
        out, synthetic.make_pages(pages, prefix=name, seed=seed), BATCH_SIZE, incremental, name + ".txt"
    )
    note(f"{name}: job of {pages} pages planned in {time.perf_counter() - t0:.1f} s")
    model = synthetic.model_info(d=d)
    batches = job.batches()
    step = max(1, len(batches) // 10)
    with StoreWriter(out, fsync=False) as writer:
        for i in range(0, len(batches), GROUP):
            writer.commit([synthetic.make_result(job, b, model, seed=seed) for b, _, _ in batches[i : i + GROUP]])
            done = min(i + GROUP, len(batches))
            if done // step != i // step or done == len(batches):
                rows = batches[done - 1][2] - job.start_row
                note(f"{name}: {rows}/{pages} pages committed, {time.perf_counter() - t0:.0f} s")
    return time.perf_counter() - t0


def tree(root: Path) -> tuple[int, int]:
    """(bytes, files) below `root`, apparent sizes."""
    total = files = 0
    for folder, _, names in os.walk(root):
        for name in names:
            total += os.lstat(os.path.join(folder, name)).st_size
            files += 1
    return total, files


def cached_share(root: Path) -> float | None:
    """The share of `root`'s bytes in the page cache now (util-linux `fincore`), None without it."""
    if shutil.which("fincore") is None:
        return None
    paths = [os.path.join(f, n) for f, _, names in os.walk(root) for n in names]
    resident = size = 0
    for start in range(0, len(paths), 500):
        done = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE", *paths[start : start + 500]],
            capture_output=True,
            text=True,
        )
        for line in done.stdout.splitlines():
            res, sz = line.split()[:2]
            resident, size = resident + int(res), size + int(sz)
    return round(min(1.0, resident / size), 3) if size else None  # pages of small files round it up


# --- what is measured ---


@dataclass
class TimedDestination:
    """A destination whose `write` and `reuse` calls are timed, seconds summed over the threads."""

    inner: LocalDestination | S3Destination
    write_s: float = 0.0
    reuse_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __str__(self) -> str:
        return str(self.inner)

    def read(self, rel: str) -> bytes | None:
        return self.inner.read(rel)

    def write(self, rel: str, data: bytes) -> None:
        t0 = time.perf_counter()
        self.inner.write(rel, data)
        with self._lock:
            self.write_s += time.perf_counter() - t0

    def reuse(self, old: str, rel: str) -> None:
        t0 = time.perf_counter()
        self.inner.reuse(old, rel)
        with self._lock:
            self.reuse_s += time.perf_counter() - t0

    def snapshot_ids(self) -> list[str]:
        return self.inner.snapshot_ids()

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.inner.delete_snapshot(snapshot_id)

    def publish(self, rel: str, data: bytes) -> None:
        self.inner.publish(rel, data)


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process, threads included (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshot(
    output_dir: Path, dest: Destination, server_pid: int | None = None
) -> tuple[SnapshotContents, dict[str, Any]]:
    """One timed `take_snapshot`: its contents and figures (seconds, bytes and files sent and
    reused, CPU of this process and of the S3 server, the destination's summed call seconds)."""
    os.sync()
    server_cpu = cpu_of(server_pid) if server_pid is not None else 0.0
    cpu = cpu_self()
    t0 = time.perf_counter()
    contents, sent = take_snapshot(output_dir, dest)
    seconds = time.perf_counter() - t0
    figures: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "bytes_sent": sent.bytes_sent,
        "bytes_reused": sent.bytes_reused,
        "files_sent": sent.files_sent,
        "files_reused": sent.files_reused,
        "mb_per_s": round((sent.bytes_sent + sent.bytes_reused) / seconds / 1e6, 1),
        "cpu_s": round(cpu_self() - cpu, 2),
    }
    if server_pid is not None:
        figures["server_cpu_s"] = round(cpu_of(server_pid) - server_cpu, 2)
    if isinstance(dest, TimedDestination):
        figures["write_thread_s"] = round(dest.write_s, 2)
        figures["reuse_thread_s"] = round(dest.reuse_s, 2)
    return contents, figures


def timed_cp(source: Path, copy: Path) -> dict[str, float]:
    """`cp -r` as a process, then `sync -f` on the copy (timed apart)."""
    os.sync()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(source), str(copy)], check=True)
    cp_s = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["sync", "-f", str(copy)], check=True)
    return {
        "seconds": round(cp_s, 2),
        "then_sync_s": round(time.perf_counter() - t0, 2),
        "cpu_s": round(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime, 2),
    }


def listing_s(output_dir: Path) -> tuple[float, list[SourceFile]]:
    t0 = time.perf_counter()
    _, files = snapshot_files(output_dir)
    return time.perf_counter() - t0, files


def read_hash_s(files: list[SourceFile]) -> float:
    """Every file read and hashed as the snapshot does (SENDERS threads), nothing written."""

    def one(file: SourceFile) -> str:
        return hashlib.sha256(file.read()).hexdigest()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(SENDERS) as pool:
        list(pool.map(one, files))
    return time.perf_counter() - t0


def sha256_mb_per_s() -> float:
    """SHA-256 on one thread over 64 MB in memory."""
    data = os.urandom(1 << 26)
    t0 = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return round(len(data) / (time.perf_counter() - t0) / 1e6, 1)


def sent_by_part(first: SnapshotContents, second: SnapshotContents) -> dict[str, int]:
    """The bytes the second snapshot sent (files whose SHA-256 the first does not hold), by part:
    an array's name, the manifests, the jobs, the audit log, the metadata."""
    known = {record.sha256 for record in first.files.values()}
    parts: dict[str, int] = {}
    for rel, record in second.files.items():
        if record.sha256 in known:
            continue
        bits = rel.split("/")
        if bits[0] != config.STORE_NAME:
            part = bits[0]
        elif bits[-1] == "zarr.json" and (len(bits) == 2 or bits[1] != config.MANIFEST_GROUP):
            part = "metadata"
        else:
            part = bits[1]
        parts[part] = parts.get(part, 0) + record.size
    return dict(sorted(parts.items(), key=lambda kv: -kv[1]))


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """These environment variables set in this process (the snapshot's S3 client reads them)."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return min(rounds, key=lambda r: float(r["seconds"]))


# --- the whole run ---


def run(work: Path, pages: int, d: int, rounds: int) -> dict[str, Any]:
    from tests.object_store import s3_server

    live = work / "live"
    live.mkdir(parents=True)
    check_disk(work, disk_needed(pages, d))
    figures: dict[str, Any] = {
        "device": f"CPU ({os.cpu_count()} cores, {platform.machine()}), {mem_available() / 2**30:.1f} GiB available",
        "pages": pages,
        "d": d,
        "load_start": load(),
    }
    figures["grow_s"] = round(grow(live, pages, "first", False, 1, d), 1)
    figures["grow_pages_per_s"] = round(pages / figures["grow_s"])
    store_bytes, store_files = tree(live / config.STORE_NAME)
    figures["store_bytes"], figures["store_files"] = store_bytes, store_files
    figures["output_dir_bytes"] = tree(live)[0]
    note(f"store: {store_bytes / 1e9:.2f} GB in {store_files} files; {mem_available() / 1e9:.1f} GB memory available")

    # the first snapshot to a local folder against cp -r, alternating
    figures["load_before_copies"] = load()
    cps: list[dict[str, Any]] = []
    locals_: list[dict[str, Any]] = []
    first: SnapshotContents | None = None
    local_dest = work / "local0"
    for r in range(rounds):
        copy = work / "cp"
        cached = cached_share(live)
        cps.append({**timed_cp(live, copy), "cached_before": cached})
        cps[-1]["bytes"] = tree(copy)[0]
        shutil.rmtree(copy)
        note(f"round {r + 1}: cp -r {cps[-1]}")
        if r:  # only the last round's snapshot is kept, for the incremental one
            shutil.rmtree(local_dest)
            local_dest = work / f"local{r}"
        cached = cached_share(live)
        timed = TimedDestination(LocalDestination(local_dest))
        first, result = snapshot(live, timed)
        locals_.append({**result, "cached_before": cached})
        note(f"round {r + 1}: local snapshot {locals_[-1]}")
    assert first is not None
    cp, local = best(cps), best(locals_)
    figures["cp"] = {"seconds": cp["seconds"], "bytes": cp["bytes"], "rounds": [c["seconds"] for c in cps]}
    figures["cp"]["then_sync_s"] = cp["then_sync_s"]
    figures["cp"]["cpu_s"] = cp["cpu_s"]
    figures["cp"]["cached_before"] = [c["cached_before"] for c in cps]
    figures["local_first"] = {**local, "rounds": [s["seconds"] for s in locals_]}
    figures["local_first"]["cached_before"] = [s["cached_before"] for s in locals_]
    figures["local_vs_cp"] = round(cp["seconds"] / local["seconds"], 3)
    figures["local_vs_cp_then_sync"] = round(cp["then_sync_s"] / local["seconds"], 3)

    # where the local snapshot's time goes
    list_s, files = listing_s(live)
    figures["breakdown"] = {
        "list_s": round(list_s, 2),
        "files": len(files),
        "read_hash_s": round(read_hash_s(files), 2),
        "sha256_mb_per_s_one_thread": sha256_mb_per_s(),
        "senders": SENDERS,
    }
    note(f"breakdown: {figures['breakdown']}")

    moto_tmp = work / "moto-tmp"  # moto spools objects over 5 MB to temporary files: here, removed with the run
    moto_tmp.mkdir()
    with environment({"TMPDIR": str(moto_tmp)}), s3_server() as server:
        server.client().create_bucket(Bucket=BUCKET)
        with environment(server.env()):
            s3_dest = TimedDestination(S3Destination(parse_url(f"s3://{BUCKET}/{PREFIX}")))
            first_s3, figures["s3_first"] = snapshot(live, s3_dest, server.proc.pid)
            note(f"S3 first snapshot: {figures['s3_first']}")

            added = max(1, round(pages * GROWTH))
            figures["pages_added"] = added
            figures["grow_more_s"] = round(grow(live, added, "second", True, 2, d), 1)

            figures["load_before_incremental"] = load()
            second, figures["local_incremental"] = snapshot(live, TimedDestination(LocalDestination(local_dest)))
            note(f"local incremental snapshot: {figures['local_incremental']}")
            s3_dest = TimedDestination(S3Destination(parse_url(f"s3://{BUCKET}/{PREFIX}")))
            second_s3, figures["s3_incremental"] = snapshot(live, s3_dest, server.proc.pid)
            note(f"S3 incremental snapshot: {figures['s3_incremental']}")
    assert second.committed_rows == second_s3.committed_rows == pages + added
    assert first.committed_rows == first_s3.committed_rows == pages
    for where, a, b in (("local", first, second), ("s3", first_s3, second_s3)):
        ratio = figures[f"{where}_incremental"]["bytes_sent"] / figures[f"{where}_first"]["bytes_sent"]
        figures[f"{where}_incremental_ratio"] = round(ratio, 4)
        figures[f"{where}_incremental"]["sent_by_part"] = sent_by_part(a, b)
    figures["load_end"] = load()
    figures["goals"] = {
        f"local_vs_cp >= {LOCAL_GOAL}": figures["local_vs_cp"] >= LOCAL_GOAL,
        f"local_incremental_ratio <= {INCREMENTAL_GOAL}": figures["local_incremental_ratio"] <= INCREMENTAL_GOAL,
        f"s3_incremental_ratio <= {INCREMENTAL_GOAL}": figures["s3_incremental_ratio"] <= INCREMENTAL_GOAL,
    }
    return figures


def summary(f: dict[str, Any]) -> str:
    def line(name: str, x: dict[str, Any]) -> str:
        return (
            f"  {name:22s} {x['seconds']:8.2f} s  sent {x['bytes_sent'] / 1e9:7.3f} GB in {x['files_sent']:6d} files, "
            f"reused {x['bytes_reused'] / 1e9:7.3f} GB in {x['files_reused']:6d} files, CPU {x['cpu_s']:.1f} s"
            + (f" (+ server {x['server_cpu_s']:.1f} s)" if "server_cpu_s" in x else "")
        )

    b = f["breakdown"]
    return "\n".join(
        [
            f"{f['device']}; load average {f['load_start']} at start, {f['load_end']} at the end",
            f"store: {f['pages']} pages (d = {f['d']}), {f['store_bytes'] / 1e9:.2f} GB in {f['store_files']} files, "
            f"grown in {f['grow_s']} s ({f['grow_pages_per_s']} pages/s); then {f['pages_added']} more in {f['grow_more_s']} s",
            f"  {'cp -r':22s} {f['cp']['seconds']:8.2f} s  ({f['cp']['bytes'] / 1e9:.3f} GB; rounds {f['cp']['rounds']}; "
            f"with sync -f after: {f['cp']['then_sync_s']} s)",
            line("local, first", f["local_first"]) + f"; rounds {f['local_first']['rounds']}",
            line("S3 (moto), first", f["s3_first"]),
            line("local, +10 %", f["local_incremental"]),
            line("S3 (moto), +10 %", f["s3_incremental"]),
            f"local first / cp -r: cp_seconds / snapshot_seconds = {f['local_vs_cp']} (goal >= {LOCAL_GOAL}); "
            f"against cp then sync: {f['local_vs_cp_then_sync']}",
            f"incremental bytes / first's: local {f['local_incremental_ratio']}, S3 {f['s3_incremental_ratio']} "
            f"(goal <= {INCREMENTAL_GOAL}); sent by part (local): "
            + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in list(f["local_incremental"]["sent_by_part"].items())[:6]),
            f"where the time goes: listing {b['list_s']} s ({b['files']} files), reading and hashing every file "
            f"{b['read_hash_s']} s ({b['senders']} threads), SHA-256 {b['sha256_mb_per_s_one_thread']} MB/s on one "
            f"thread; local first snapshot's writes {f['local_first']['write_thread_s']} thread-s",
            "goals: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in f["goals"].items()),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pages", type=int, default=300_000, help="pages of the first job (default 300,000)")
    parser.add_argument("--d", type=int, default=384, help="embedding width (default 384, the real one)")
    parser.add_argument("--rounds", type=int, default=2, help="cp and first local snapshot, alternating (best kept)")
    parser.add_argument("--keep", type=Path, help="run in this (new or empty) folder and keep what it made")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.pages < 100 or args.d < 1 or args.rounds < 1:
        parser.error("--pages must be at least 100, --d and --rounds at least 1")
    t0 = time.perf_counter()
    if args.keep is not None:
        if args.keep.exists() and any(args.keep.iterdir()):
            parser.error(f"--keep {args.keep} is not empty: the benchmark grows a new store")
        args.keep.mkdir(parents=True, exist_ok=True)
        figures = run(args.keep, args.pages, args.d, args.rounds)
    else:
        with tempfile.TemporaryDirectory(prefix="comix-snapshot-") as tmp:
            figures = run(Path(tmp), args.pages, args.d, args.rounds)
    figures["total_s"] = round(time.perf_counter() - t0, 1)
    note(summary(figures))
    note(f"whole run: {figures['total_s']} s")
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
