"""Retry rounds: failed rows (status 2) planned for embedding again, and their retry manifests.

`--retry-failed` is the one change a committed row may undergo
(docs/store.md, "Retry rounds and retry manifests"): a failed row is embedded again and becomes ok
or full_page, or stays failed with its new reason. The producer plans a round,
`<output_dir>/jobs/retry_NNNNNN.json` (with its task payloads beside it, as a job keeps them),
naming the failed rows it retries, in batches of arbitrary rows. Retry batch ids form their own
series from RETRY_BASE, so that they never clash with a job's batch ids, in the store's manifests or
in the broker's delivery records. The writer acknowledges each retry batch with
`manifest/retry_NNNNNN.json` (NNNNNN: the id past RETRY_BASE), listing each row it overwrote with
its new status; a row that was no longer failed when the batch came is listed as skipped and left
alone. Every role reads rounds and retry manifests here; only the producer writes rounds, only the
writer retry manifests.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comix_embed.common.errors import UsageError
from comix_embed.common.messages import MalformedMessage, ModelIdentity, decode_json
from comix_embed.common.store.jobs import Job, jobs_dir
from comix_embed.common.store.manifests import manifest_dir

RETRY_BASE = 1_000_000_000  # first retry batch id: far past any job's batch ids
RETRY_FORMAT = 1
RETRY_MANIFEST = re.compile(r"^retry_(\d{6,})\.json$")
RETRY_INFLIGHT = "retry_inflight.json"  # the rows a retry commit is overwriting, as they were
_ROUND_FILE = re.compile(r"^retry_(\d{6})\.json$")


@dataclass
class RetryRound:
    """One `--retry-failed`: batches of failed rows (any rows, in row order), ids from `first_batch`."""

    job_id: str  # retry_NNNNNN: what its task payloads and results carry as their job
    number: int
    created: str
    first_batch: int
    rows: list[list[int]] = field(default_factory=list)  # per batch
    page_ids: list[list[str]] = field(default_factory=list)  # per batch, the rows' pages
    model: ModelIdentity | None = None
    format: int = RETRY_FORMAT

    def batch_count(self) -> int:
        return len(self.rows)

    def batch_ids(self) -> list[int]:
        return [self.first_batch + k for k in range(len(self.rows))]

    def batch_rows(self, batch_id: int) -> list[int]:
        """Rows of one of this round's batches; KeyError when the batch is not this round's."""
        k = batch_id - self.first_batch
        if not 0 <= k < len(self.rows):
            raise KeyError(f"batch {batch_id} is not part of {self.job_id}")
        return self.rows[k]

    def pages(self) -> int:
        return sum(len(r) for r in self.rows)


def is_retry_batch(batch_id: int) -> bool:
    return batch_id >= RETRY_BASE


def round_path(output_dir: str | os.PathLike[str], number: int) -> Path:
    return jobs_dir(output_dir) / f"retry_{number:06d}.json"


def load_rounds(output_dir: str | os.PathLike[str]) -> list[RetryRound]:
    """Every retry round of the output folder, in order."""
    folder = jobs_dir(output_dir)
    if not folder.is_dir():
        return []
    rounds = []
    for entry in sorted(folder.iterdir()):
        if _ROUND_FILE.match(entry.name):
            try:
                rounds.append(decode_json(entry.read_bytes(), RetryRound, f"retry round {entry}"))
            except MalformedMessage as exc:
                raise UsageError(str(exc)) from None
    return sorted(rounds, key=lambda r: r.number)


def round_of(output_dir: str | os.PathLike[str], batch_id: int) -> RetryRound | None:
    return next((r for r in load_rounds(output_dir) if batch_id in r.batch_ids()), None)


def batch_rows(owner: Job | RetryRound, batch_id: int) -> list[int]:
    """The rows of a job's or a round's batch."""
    if isinstance(owner, RetryRound):
        return owner.batch_rows(batch_id)
    return list(range(*owner.batch(batch_id)))


# --- retry manifests ---


def retry_manifest_file(store: str | os.PathLike[str], batch_id: int) -> Path:
    return manifest_dir(store) / f"retry_{batch_id - RETRY_BASE:06d}.json"


def retry_manifest_ids(store: str | os.PathLike[str]) -> set[int]:
    """Retry batch ids that have a manifest, from the file names alone."""
    folder = manifest_dir(store)
    if not folder.is_dir():
        return set()
    return {RETRY_BASE + int(m.group(1)) for name in os.listdir(folder) if (m := RETRY_MANIFEST.match(name))}


def scan_retry_manifests(store: str | os.PathLike[str]) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """Valid retry manifests by batch id, and what is wrong with the others; reads only."""
    found: dict[int, dict[str, Any]] = {}
    bad: list[str] = []
    folder = manifest_dir(store)
    for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
        match = RETRY_MANIFEST.match(name)
        if not match:
            continue
        try:
            with open(folder / name, encoding="utf-8") as fh:
                m = json.load(fh)
            ok = (
                m["batch_id"] == RETRY_BASE + int(match.group(1))
                and len(m["rows"]) == len(m["page_ids"]) == len(m["row_statuses"])
                and all(isinstance(r, int) for r in m["rows"] + m["skipped_rows"])
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            bad.append(f"{name} is unreadable ({type(exc).__name__}: {exc})")
            continue
        if not ok:
            bad.append(f"{name} contradicts itself (batch_id, rows, page_ids, row_statuses)")
            continue
        found[m["batch_id"]] = m
    return found, bad


def retried_rows(manifests: dict[int, dict[str, Any]]) -> dict[int, str]:
    """Each row a retry overwrote, with the status name its latest retry gave it."""
    out: dict[int, str] = {}
    for _, m in sorted(manifests.items()):
        out.update(zip(m["rows"], m["row_statuses"]))
    return out


def failed_now(store: str | os.PathLike[str], failed_in_batches: int) -> tuple[int, dict[int, str]]:
    """Pages failed now: those the batch manifests count as failed (`failed_in_batches`), less
    those a retry embedded since; and the retried rows with their latest status."""
    retried = retried_rows(scan_retry_manifests(store)[0])
    embedded_again = sum(1 for st in retried.values() if st != "failed")
    return failed_in_batches - embedded_again, retried


def owed_retries(output_dir: str | os.PathLike[str], store: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Each round's batches without a retry manifest."""
    done = retry_manifest_ids(store)
    return {r.job_id: [b for b in r.batch_ids() if b not in done] for r in load_rounds(output_dir)}
