"""The store's single writer: ordered, idempotent, crash-safe commits of batch results.

`commit(results)` takes results in any order, redeliveries included. It drops the batches that
have a manifest, checks the others against their job and the store's model (nothing is written
when one is wrong), records them in flight, writes their rows, then each manifest, then
`committed_rows`: docs/store.md, "The commit protocol", gives the steps and what fsync makes
durable when. Opening a `StoreWriter` takes the output folder's lock and recovers
(writer/recovery.py). A retry batch is committed apart (writer/retry.py). With a `fence`, the
writer lease (writer/lease.py), it checks the lease before each manifest and before
`committed_rows` and writes its token into each manifest. A full disk stops a commit as `DiskFull`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, TextIO

import numpy as np
import zarr

from comix_embed.common import config, failpoint
from comix_embed.common.errors import UsageError
from comix_embed.common.messages import ModelIdentity
from comix_embed.common.model.identity import check_same_model, identity_of, is_legacy_tokenizer, tokenizers_match
from comix_embed.common.store.attributes import StoreAttributes
from comix_embed.common.store.audit_log import AuditRecord
from comix_embed.common.store.jobs import Job, JobPage, load_jobs
from comix_embed.common.store.manifests import Committed, owed_batches
from comix_embed.common.store.reading import read_attrs
from comix_embed.common.store.results import BatchResult, failed_result
from comix_embed.common.store.retries import (
    RetryRound,
    batch_rows,
    is_retry_batch,
    owed_retries,
    retry_manifest_ids,
    round_of,
)
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_FULL_PAGE, STATUS_OK, store_path
from comix_embed.writer import audit, checks, manifests, recovery, retry, rows
from comix_embed.writer.diskfull import is_disk_full, needed_bytes, raise_disk_full
from comix_embed.writer.growth import create_store, open_row_arrays, register_job, write_attrs
from comix_embed.writer.lease import WriterLease
from comix_embed.writer.manifests import make_manifest
from comix_embed.writer.recovery import WriterLocked

__all__ = ["CommitOutcome", "InvalidResult", "StoreWriter", "WriterLocked"]

log = logging.getLogger(__name__)

_VALID_STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_FULL_PAGE)


class InvalidResult(UsageError):
    """A result that does not fit its job (rows, page ids, arrays): nothing of it is written."""


@dataclass
class CommitOutcome:
    """What `commit` did with one batch. `committed` is False for a redelivered batch."""

    batch_id: int
    job: str
    start: int
    end: int
    committed: bool
    statuses: dict[str, int] = field(default_factory=dict)


class StoreWriter:
    """The only object that writes `<output_dir>/combined_embeddings.zarr`. Use as a context manager."""

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        verify_batches: bool = False,
        write_check: bool = False,
        verbose: bool = False,
        fsync: bool = config.WRITER_FSYNC,
        out: TextIO | None = None,
        fence: WriterLease | None = None,
        lock: IO[str] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.path = store_path(self.output_dir)
        self.verify_batches = verify_batches
        self.write_check = write_check
        self.verbose = verbose
        self.fsync = fsync
        self.out = out if out is not None else sys.stdout
        self.fence = fence
        self._lock = lock  # the output folder's lock, when the caller took it first (writer/service.py)
        self._lock_fh: Any = None  # the one this writer took, and closes
        self._audit: audit.AuditLog | None = None
        self._jobs: dict[str, Job] = {}  # registered in the store
        self._committed = Committed()  # every batch that has a manifest
        self._retried: set[int] = set()  # retry batch ids that have a manifest
        self._attrs: dict[str, Any] = {}  # the root attributes as they are (the model's identity among them)
        self._kept = StoreAttributes()  # the writer's bookkeeping among them, decoded
        self._arrays: dict[str, zarr.Array] = {}

    # --- life cycle ---

    def __enter__(self) -> StoreWriter:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> StoreWriter:
        """Lock the output folder (unless the caller holds its lock), recover from any crash,
        register the jobs planned since."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self._lock is None and config.WRITER_FLOCK:
            self._lock_fh = recovery.lock(self.output_dir)
        elif self._lock is None:
            log.warning("COMIX_TEST_WRITER_FLOCK=0: the output folder is not locked (a test of the writer lease)")
        try:
            leftover = self.path.with_name(f".{self.path.name}.creating")
            if leftover.exists():
                shutil.rmtree(leftover)
            if self.path.exists():
                self._recover()
            if self.fence is not None:  # before anything of this token is written
                self.fence.committed = self._committed.ids
                self.fence.seal(self._committed.ids())
            if self.path.exists():
                self._register_pending()
                self._migrate_tokenizer([j.model for j in self._jobs.values() if j.model is not None])
            self._audit = audit.AuditLog(self.output_dir / config.AUDIT_LOG_NAME)
        except OSError as exc:
            self.close()
            if is_disk_full(exc):
                raise_disk_full(exc, self.output_dir, 0, "opening the store")
            raise
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._audit is not None:
            self._audit.close()
            self._audit = None
        if self._lock_fh is not None:
            self._lock_fh.close()  # releases the flock
            self._lock_fh = None

    # --- state ---

    @property
    def committed_rows(self) -> int:
        return self._kept.committed_rows

    def out_of_order(self) -> tuple[int, int]:
        """(batches committed past the readable prefix, the batch the prefix waits for): a count
        that stays small when a batch given back is taken first, and grows while one is missing."""
        return len(self._committed.beyond), self._committed.batches

    def jobs(self) -> list[Job]:
        """Jobs registered in the store, in order."""
        return sorted(self._jobs.values(), key=lambda j: j.number)

    def owed(self) -> dict[str, list[int]]:
        """Owed batches of every job planned in the output folder (registered or not yet), and of
        every retry round that still owes some."""
        owed = owed_batches(load_jobs(self.output_dir), self._committed)
        owed.update({k: v for k, v in owed_retries(self.output_dir, self.path).items() if v})
        return owed

    def is_committed(self, batch_id: int) -> bool:
        return batch_id in self._committed or batch_id in self._retried

    def __contains__(self, batch_id: object) -> bool:
        """`batch_id in writer`: whether the batch has a manifest (as `is_committed`)."""
        return isinstance(batch_id, int) and self.is_committed(batch_id)

    def job_of(self, batch_id: int) -> Job | RetryRound | None:
        """The job (or retry round) a batch belongs to; job files are read only for a batch of a
        job not registered yet."""
        if is_retry_batch(batch_id):
            return round_of(self.output_dir, batch_id)
        registered = [j for j in self._jobs.values() if j.holds_batch(batch_id)]
        if registered:
            return registered[0]
        planned = load_jobs(self.output_dir)
        return next((j for j in planned if j.holds_batch(batch_id)), None)

    def commit_failed(
        self, job: Job | RetryRound, batch_id: int, reasons: dict[int, str], default: str, images: list[str]
    ) -> bool:
        """Commit a batch that can never be embedded as failed rows, each with its reason (a row's
        own from `reasons`, else `default`): `committed_rows` moves past it (a retry batch's rows
        stay failed, with that reason). False if committed already."""
        its_rows = batch_rows(job, batch_id)
        if isinstance(job, RetryRound):
            model, page_ids = job.model, job.page_ids[batch_id - job.first_batch]
        else:
            model, page_ids = self._reference_model(job), [job.page(row).page_id for row in its_rows]
        if model is None:
            raise InvalidResult(f"batch {batch_id}: no model known for {job.job_id} yet; cannot write failed rows")
        why = [reasons.get(row, default) for row in its_rows]
        result = failed_result(job.job_id, batch_id, its_rows[0], page_ids, why, model.to_dict(), images)
        if isinstance(job, RetryRound):
            result.rows = its_rows
        return self.commit([result])[0].committed

    # --- recovery and registration ---

    def _recover(self) -> None:
        attrs, self._committed = recovery.recover(self.path, self.fsync, self.fence)
        self._set_attrs(attrs)
        self._open_arrays()
        self._retried = retry_manifest_ids(self.path)
        retry.recover(self.path, self._arrays, self._retried, self.fsync)
        before = self.committed_rows
        self._advance()
        if self.committed_rows > before:
            log.info("repaired committed_rows from %d to %d", before, self.committed_rows)
        planned = {job.job_id: job for job in load_jobs(self.output_dir)}
        registered = self._kept.job_ids()
        missing = [j for j in registered if j not in planned]
        if missing:
            raise UsageError(f"{self.path} holds {', '.join(missing)} but their job files are gone")
        self._jobs = {j: planned[j] for j in registered}

    def _register_pending(self) -> None:
        """Register, in order, the planned jobs the store does not hold yet (each bound to the
        store's model: a job of another model is refused before it gets a row)."""
        for job in load_jobs(self.output_dir):
            if job.job_id not in self._jobs:
                if job.model is not None:
                    check_same_model(self._attrs, job.model, what=job.job_id)
                self._set_attrs(register_job(self.path, job, self.fsync))
                self._jobs[job.job_id] = job
                self._open_arrays()  # shapes may have grown

    def _set_attrs(self, attrs: dict[str, Any]) -> None:
        """The root attributes as last read or written; a malformed one is refused here, by name."""
        self._attrs, self._kept = attrs, StoreAttributes.of(attrs)

    def _open_arrays(self) -> None:
        self._arrays = open_row_arrays(self.path, self.fsync)

    def _job_for(self, job_id: str) -> Job:
        if job_id not in self._jobs and self.path.exists():
            self._register_pending()
        job = self._jobs.get(job_id) or next((j for j in load_jobs(self.output_dir) if j.job_id == job_id), None)
        if job is None:
            raise InvalidResult(
                f"result for unknown job {job_id}: no job file in {self.output_dir / config.JOBS_DIR_NAME}"
            )
        return job

    # --- commit ---

    def commit(self, results: list[BatchResult]) -> list[CommitOutcome]:
        """Commit new batches, skip those already committed; one outcome per result, in order.

        Raises ModelMismatch, InvalidResult or CheckFailed before writing anything of the call;
        CheckFailed from --write-check after writing, in which case no manifest is written.
        Retry batches are committed first, each on its own (whole, or restored).
        """
        fresh: dict[int, BatchResult] = {}
        retried: dict[int, dict[str, int]] = {}
        for r in results:
            if is_retry_batch(r.batch_id):
                if r.batch_id not in self._retried:
                    retried[r.batch_id] = self._commit_retry(r)
            elif r.batch_id not in self._committed and r.batch_id not in fresh:
                fresh[r.batch_id] = r
        if fresh:
            batch = sorted(fresh.values(), key=lambda r: r.start)
            try:
                self._commit_new(batch)
            except OSError as exc:
                if isinstance(exc, FileNotFoundError) and self.fence is not None:
                    # a writer stalled past its writer lease wakes to find its temporary files gone:
                    # the writer that took the store over removed them on opening. Say so
                    # (WriterLeaseLost).
                    self.fence.check()
                if not is_disk_full(exc):
                    raise
                ids = ", ".join(str(r.batch_id) for r in batch)
                raise_disk_full(exc, self.path, needed_bytes([r.arrays for r in batch]), f"committing batches {ids}")
        outcomes, seen = [], set()
        for r in results:
            written = (r.batch_id in fresh or r.batch_id in retried) and r.batch_id not in seen
            seen.add(r.batch_id)
            if not written:
                counts = {}
            else:
                counts = retried[r.batch_id] if r.batch_id in retried else _status_counts(r.arrays["status"])
            outcomes.append(CommitOutcome(r.batch_id, r.job, r.start, r.end, written, counts))
        return outcomes

    def _commit_retry(self, r: BatchResult) -> dict[str, int]:
        """One retry batch (writer/retry.py); the status counts of the rows it overwrote."""
        rnd = round_of(self.output_dir, r.batch_id)
        if rnd is None:
            raise InvalidResult(f"retry batch {r.batch_id} ({r.job}) belongs to no retry round of {self.output_dir}")
        if not self.path.exists():
            raise InvalidResult(f"retry batch {r.batch_id}: there is no store at {self.path} to retry rows of")
        wanted = rnd.batch_rows(r.batch_id)
        if r.job != rnd.job_id or r.row_list() != wanted:
            raise InvalidResult(
                f"retry batch {r.batch_id} ({r.job}) carries rows {r.row_list()}, {rnd.job_id} says {wanted}"
            )
        if r.page_ids != rnd.page_ids[r.batch_id - rnd.first_batch]:
            raise InvalidResult(f"retry batch {r.batch_id}: page ids differ from {rnd.job_id}'s")
        check_same_model(
            self._attrs, identity_of(r.model), what=f"result of retry batch {r.batch_id}", whose=f"store {self.path}"
        )
        identity = identity_of(self._attrs)
        problems = checks.shape_problems(r.arrays, len(wanted), identity.embedding_dim, identity.max_panels)
        bad = sorted(set(np.unique(r.arrays["status"]).tolist()) - set(_VALID_STATUSES))
        if problems or bad:
            raise InvalidResult(f"retry batch {r.batch_id}: {'; '.join(problems) or f'status values {bad}'}")
        if self.verify_batches:
            checks.verify_batch(r, self._page_of, identity.embedding_dim, identity.max_panels)
        fence = self.fence.check if self.fence is not None else None
        check = partial(checks.write_check, self._arrays, r.batch_id) if self.write_check else None
        try:
            manifest, records = retry.commit_retry(
                self.path, self._arrays, rnd, r, rows.prepared(r.arrays), self._page_of, self.fsync, fence, check
            )
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise_disk_full(exc, self.path, needed_bytes([r.arrays]), f"committing retry batch {r.batch_id}")
        self._retried.add(r.batch_id)
        assert self._audit is not None
        self._audit.write(records)
        if self.verbose:
            self.out.write("".join(audit.verbose_line(rec) + "\n" for rec in records))
            self.out.flush()
        return dict(manifest.statuses)

    def _page_of(self, row: int) -> JobPage:
        job = next(j for j in self._jobs.values() if j.start_row <= row < j.end_row)
        return job.page(row)

    def _commit_new(self, results: list[BatchResult]) -> None:
        jobs = {r.batch_id: self._job_for(r.job) for r in results}
        identity = self._check_models(results, jobs)
        d, p = identity.embedding_dim, identity.max_panels
        for r in results:
            self._validate(r, jobs[r.batch_id], d, p)
        if self.verify_batches:
            for r in results:
                checks.verify_batch(r, jobs[r.batch_id].page, d, p)
        if not self.path.exists():
            self._create(identity)
        elif any(j.job_id not in self._jobs for j in jobs.values()):
            self._register_pending()
        data = {r.batch_id: rows.prepared(r.arrays) for r in results}
        ranges = [(r.batch_id, r.start, r.end) for r in results]
        # atomic, not fsynced: it is a hint for recovery after a kill. After a power loss the rows it
        # names are past the manifests anyway and rewritten when their batch comes again (the
        # producer resends every owed batch); recovery reads a torn one as naming nothing.
        manifests.write_inflight(self.path, ranges, fsync=False)
        try:
            rows.write_rows(self._arrays, rows.regions(results, data))
            if self.write_check:
                for r in results:
                    checks.write_check(self._arrays, r.batch_id, r.row_list(), r.page_ids, data[r.batch_id])
        except BaseException:
            rows.clear_rows(self._arrays, ranges)  # what was written past the manifests goes now, not at restart
            manifests.clear_inflight(self.path)
            raise
        failpoint.stop_here("commit")  # a test's SIGTERM lands mid-commit here
        for r in results:
            statuses = _status_counts(data[r.batch_id]["status"])
            token = self.fence.check() if self.fence is not None else None
            manifest = make_manifest(r.batch_id, r.start, r.page_ids, r.job, statuses, token)
            manifests.write_manifest(self.path, manifest, self.fsync)
            self._committed.add(r.batch_id, r.start, r.end, statuses)
        # inflight.json stays: its batches now have manifests, which recovery reads first
        self._advance()
        self._report(results, jobs, data)

    def _reference_model(self, job: Job) -> ModelIdentity | None:
        """What a job's results must match: the model the job was bound to when it was enqueued;
        for a job from before (format 1), the store's."""
        if job.model is not None:
            return job.model
        return identity_of(self._attrs) if self.path.exists() else None

    def _check_models(self, results: list[BatchResult], jobs: dict[int, Job]) -> ModelIdentity:
        """Every result's model against its job's (one function decides, common/model/identity.py);
        the identity the store is (or will be) made with."""
        checked: list[ModelIdentity] = []
        for r in results:
            # a job from before binding, in a store not made yet: the first result sets the model
            reference = self._reference_model(jobs[r.batch_id]) or (checked[0] if checked else None)
            theirs = identity_of(r.model)
            if reference is not None:
                check_same_model(reference, theirs, what=f"result of batch {r.batch_id}", whose=f"job {r.job}")
            checked.append(theirs)
        self._migrate_tokenizer(checked)
        if self.path.exists():
            return identity_of(self._attrs)
        first = jobs[results[0].batch_id].model
        return first if first is not None else checked[0]

    def _migrate_tokenizer(self, identities: list[ModelIdentity]) -> None:
        """A store written before tokenizers were hashed by content records the old form: once a
        job or a result made where the tokenizer files were at hand vouches for the same files
        (their old form matches), the attribute takes the content form (the old one is kept)."""
        if not self.path.exists() or not is_legacy_tokenizer(str(self._attrs.get("tokenizer", ""))):
            return
        ours = identity_of(self._attrs)
        for theirs in identities:
            if not is_legacy_tokenizer(theirs.tokenizer) and theirs.tokenizer_legacy and tokenizers_match(ours, theirs):
                updates = {"tokenizer": theirs.tokenizer, "tokenizer_legacy": ours.tokenizer}
                self._set_attrs(write_attrs(self.path, updates, self.fsync))
                log.info("store tokenizer %r recorded by its content: %s", ours.tokenizer, theirs.tokenizer)
                return

    def _validate(self, r: BatchResult, job: Job, d: int, p: int) -> None:
        try:
            start, end = job.batch(r.batch_id)
        except KeyError as exc:
            raise InvalidResult(f"batch {r.batch_id} ({r.job}): {exc.args[0]}") from None
        if (r.start, r.end) != (start, end):
            raise InvalidResult(
                f"batch {r.batch_id} ({r.job}) carries rows {r.start}:{r.end}, its job says {start}:{end}"
            )
        expected_ids = [p.page_id for p in job.page_slice(start, end)]
        if r.page_ids != expected_ids:
            raise InvalidResult(f"batch {r.batch_id} ({r.job}): page ids differ from the job file's rows {start}:{end}")
        problems = checks.shape_problems(r.arrays, end - start, d, p)
        if problems:
            raise InvalidResult(f"batch {r.batch_id} ({r.job}): {'; '.join(problems)}")
        bad = sorted(set(np.unique(r.arrays["status"]).tolist()) - set(_VALID_STATUSES))
        if bad:
            raise InvalidResult(f"batch {r.batch_id} ({r.job}): status values {bad} are not ok/failed/full_page")

    def _create(self, model: ModelIdentity) -> None:
        create_store(self.path, model, self.fsync)
        self._set_attrs(read_attrs(self.path))
        self._open_arrays()
        self._register_pending()

    def _advance(self) -> None:
        """Publish the contiguous prefix of manifests as `committed_rows` (only ever grows), with
        the checkpoint that lets the next open skip the manifests it covers (common/store/manifests.py)."""
        self._committed.advance()
        prefix, published = self._committed.rows, self._kept.committed_rows
        checkpoint = self._kept.manifest_checkpoint
        saved = checkpoint.batches if checkpoint is not None else None
        if prefix > published or (prefix == published and saved != self._committed.batches):
            if self.fence is not None:  # one that lost its writer lease must not publish over its successor's
                self.fence.check()
            # the content is fsynced (a torn root zarr.json would lose the store's metadata); the
            # rename need not be: after a power loss the previous zarr.json, whose committed_rows
            # lags, is repaired from the manifests when the writer starts
            self._set_attrs(write_attrs(self.path, self._committed.checkpoint(), self.fsync, durable_rename=False))
        elif prefix < published:
            log.error("manifests cover %d rows but committed_rows says %d: manifests were lost", prefix, published)

    def _report(self, results: list[BatchResult], jobs: dict[int, Job], data: dict[int, dict[str, np.ndarray]]) -> None:
        assert self._audit is not None
        records: list[AuditRecord] = []
        for r in results:
            job = jobs[r.batch_id]
            paths = [p.manifest_path for p in job.page_slice(r.start, r.end)]
            records += audit.page_records(r.batch_id, r.job, r.start, r.page_ids, paths, data[r.batch_id])
        self._audit.write(records)
        if self.verbose:
            self.out.write("".join(audit.verbose_line(rec) + "\n" for rec in records))
            self.out.flush()


def _status_counts(status: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(np.asarray(status), return_counts=True)
    return {audit.STATUS_NAMES.get(int(v), str(int(v))): int(c) for v, c in zip(values, counts)}
