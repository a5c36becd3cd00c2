"""`comix-embed status`: where a store's jobs stand, from the store and from the broker.

Committed and failed pages come from the manifests (the truth); queued and in-flight batches from
Redis (a view that may lag or be empty after a broker restart: `enqueue` again re-sends what is
owed). The rate is measured over the most recent manifests, so it reflects the run now going.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import redis

from comix_embed.common import config
from comix_embed.common.celery_app import configure
from comix_embed.common.errors import UsageError
from comix_embed.common.jobs import load_jobs
from comix_embed.common.manifests import MANIFEST_PATTERN, manifest_dir, scan_manifests
from comix_embed.common.results_channel import connect, results_key, store_id
from comix_embed.common.store import read_attrs, store_path

RATE_WINDOW = 50  # most recent manifests the rate is measured over


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, required=True)
    parser.add_argument("--broker", help="broker URL (default $COMIX_BROKER_URL, else redis://127.0.0.1:6379/0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _rate(folder: Path, sizes: dict[int, int]) -> float | None:
    """Pages per second over the last manifests, from their files' modification times."""
    stamps = []
    for entry in os.scandir(folder):
        if match := MANIFEST_PATTERN.match(entry.name):
            stamps.append((entry.stat().st_mtime, sizes.get(int(match.group(1)), 0)))
    stamps.sort()
    recent = stamps[-RATE_WINDOW:]
    if len(recent) < 2 or recent[-1][0] - recent[0][0] <= 0:
        return None
    return sum(n for _, n in recent[1:]) / (recent[-1][0] - recent[0][0])


def _broker_view(url: str, store: str | None) -> dict:
    client = connect(url)
    try:
        return {
            "queued_batches": int(client.llen(config.EMBED_QUEUE)),
            "in_flight_batches": int(client.hlen("unacked")),
            "awaiting_writer_batches": int(client.xlen(results_key(store))) if store else 0,
        }
    except redis.RedisError as exc:
        return {"broker_error": f"{config.masked_url(url)}: {exc}"}


def collect(output_dir: Path, broker: str | None) -> dict:
    jobs = load_jobs(output_dir)
    if not jobs:
        raise UsageError(f"no job in {output_dir / config.JOBS_DIR_NAME}: nothing was enqueued there")
    path = store_path(output_dir)
    found, _ = scan_manifests(path)
    registered = sum(len(j.pages) for j in jobs)
    batch_pages = {b: end - start for j in jobs for b, start, end in j.batches()}
    done = sum(batch_pages.get(b, 0) for b in found)
    failed = sum(m.get("statuses", {}).get("failed", 0) for m in found.values())
    rate = _rate(manifest_dir(path), batch_pages) if found else None
    state = {
        "store": str(path),
        "jobs": [j.job_id for j in jobs],
        "registered_pages": registered,
        "committed_rows": int(read_attrs(path).get("committed_rows", 0)) if path.exists() else 0,
        "pages_with_manifest": done,
        "failed_pages": failed,
        "owed_batches": sum(1 for b in batch_pages if b not in found),
        "pages_per_s": round(rate, 2) if rate else None,
        "eta_s": round((registered - done) / rate) if rate and done < registered else None,
    }
    state.update(_broker_view(configure(broker).conf.broker_url, store_id(output_dir)))
    return state


def duration(seconds: float) -> str:
    """H:MM:SS, with days in front past 24 hours ("3d 04:05:06"): a million pages take days."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def _lines(s: dict) -> list[str]:
    out = [
        f"store: {s['store']} ({', '.join(s['jobs'])})",
        f"committed: {s['pages_with_manifest']} of {s['registered_pages']} pages "
        f"({s['committed_rows']} rows readable in order), failed: {s['failed_pages']}",
    ]
    if "broker_error" in s:
        out.append(f"broker: unreachable ({s['broker_error']})")
    else:
        out.append(
            f"broker: {s['queued_batches']} batches queued, {s['in_flight_batches']} in flight, "
            f"{s['awaiting_writer_batches']} waiting for the writer; {s['owed_batches']} batches owed"
        )
    if s["pages_per_s"]:
        eta = duration(s["eta_s"]) if s["eta_s"] else "done"
        out.append(f"rate: {s['pages_per_s']} pages/s, ETA {eta}")
    if (
        s["owed_batches"]
        and not s.get("queued_batches")
        and not s.get("in_flight_batches")
        and not s.get("awaiting_writer_batches")
    ):
        out.append("nothing is queued for the owed batches: run `comix-embed enqueue` again to re-send them")
    return out


def run(args: argparse.Namespace) -> int:
    state = collect(args.output_dir, args.broker)
    print(json.dumps(state) if args.json else "\n".join(_lines(state)))
    return 0
