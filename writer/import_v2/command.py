"""`comix-embed import-v2`: a store made by generate_embeddings_zarr_v2 converted into ours, without embedding again.

The v2 store's rows become one job whose "list" is the v2 store (its `manifest_path` column, in
row order), committed by the writer batch by batch with manifests, as if workers had embedded
them. So an interrupted import resumes where its committed rows end; `run --incremental` with the
same list afterwards adds only the pages the store lacks; `run --retry-failed` re-embeds the rows
it recorded as failed. Until the import is finished its record says so, and `diagnose`, `run` and
`enqueue` refuse the store.

Page ids are those `run` gives the same list lines (the same `--dataspec-root` and `--path-map`).
A row repeating an earlier row's page id is left out and counted. A `manifest_path` the generator
cut at its column width (at the full width and not ending in `.json`) names no known page: the
row is failed, with that reason, under a page id that says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
from tqdm import tqdm

from comix_embed.common import config
from comix_embed.common.errors import EXIT_OK, UsageError
from comix_embed.common.inputs.listfile import entries_of_lines
from comix_embed.common.inputs.paths import PathMaps, parse_path_map
from comix_embed.common.messages import ModelIdentity, convert
from comix_embed.common.model.identity import check_same_model, identify, make_identity
from comix_embed.common.model.options import add_model_arguments
from comix_embed.common.store.jobs import Job, JobPage, load_jobs
from comix_embed.common.store.reading import read_attrs
from comix_embed.common.store.results import BatchResult
from comix_embed.common.store.schema import store_path
from comix_embed.common.store.v2 import GENERATOR, IMPORT_ATTRIBUTE, NO_CHECKPOINT, V2Import, find_v2_store
from comix_embed.producer.jobs import plan_job
from comix_embed.writer.commit import StoreWriter
from comix_embed.writer.growth import create_store, write_attrs
from comix_embed.writer.import_v2.convert import Counts, convert_block
from comix_embed.writer.import_v2.reader import V2Reader

log = logging.getLogger(__name__)

# Rows per batch (one manifest each): a shard's rows, so that each batch writes whole shards.
BATCH_ROWS = config.SHARD_ROWS
# Batches per commit: one rewrite of the root attributes per 4096 rows.
BATCHES_PER_COMMIT = 4
# v2 rows read at a time (whole 1000-row chunks): about 75 MB of panel embeddings at d = 384.
READ_ROWS = 4000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        type=Path,
        help=f"the {GENERATOR} store: its combined_embeddings.zarr, or the folder holding it (read only)",
    )
    parser.add_argument("--output-dir", required=True, type=Path, help="where our store is made (a new folder)")
    add_model_arguments(
        parser,
        required=False,
        checkpoint_help="the checkpoint that made the v2 store, which you vouch for (the store records it as "
        "vouched for, not verified); without it the store is read-only for embedding",
    )
    parser.add_argument(
        "--dataspec-root",
        help="as given to `run`: page ids are then the list lines' paths below it, as `run` would name them",
    )
    parser.add_argument(
        "--path-map", action="append", default=[], metavar="PREFIX=TARGET", help="as given to `run` (repeatable)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    model = None
    if args.checkpoint is not None:
        model = identify(args.checkpoint, args.tokenizer, args.encoder_mode, trust=args.trust_checkpoint)
    record = import_v2(
        args.source,
        args.output_dir,
        model,
        encoder_mode=args.encoder_mode,
        dataspec_root=args.dataspec_root,
        path_maps=[parse_path_map(m) for m in args.path_map],
        progress=not args.no_progress,
    )
    print(summary(record, store_path(args.output_dir)))
    return EXIT_OK


@dataclass
class _Plan:
    """The v2 rows the store gets, in order, and the rows failed for a cut manifest_path."""

    job: Job
    v2_rows: np.ndarray  # our row r holds v2 row v2_rows[r]
    cut_rows: dict[int, str]  # our row -> reason
    duplicates: int


def import_v2(
    source: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    model: ModelIdentity | None,
    encoder_mode: str = "fused",
    dataspec_root: str | None = None,
    path_maps: PathMaps = (),
    progress: bool = False,
    fsync: bool = config.WRITER_FSYNC,
) -> V2Import:
    """Convert the v2 store at `source` into a store of ours in `output_dir`, or finish an import
    begun there; the import's record. `model` is the checkpoint vouched for (None: none)."""
    found = find_v2_store(source)
    if found is None:
        raise UsageError(f"--from {source}: not a store made by {GENERATOR} (no .zgroup with page_embeddings)")
    reader = V2Reader(found)
    output_dir = Path(output_dir)
    store = store_path(output_dir)
    fingerprint = reader.fingerprint()
    record = _earlier_record(store, output_dir, fingerprint)
    if record is not None and record.finished:
        return record
    identity = model or make_identity(NO_CHECKPOINT, reader.d, encoder_mode, NO_CHECKPOINT)
    if identity.embedding_dim != reader.d:
        raise UsageError(
            f"--checkpoint makes {identity.embedding_dim}-d embeddings, the v2 store holds {reader.d}-d ones: "
            "not the checkpoint that made it"
        )
    if reader.max_panels != config.MAX_PANELS:
        raise UsageError(f"{found}: {reader.max_panels} panel slots; this version stores {config.MAX_PANELS}")
    plan = _plan(reader, output_dir, identity, fingerprint, dataspec_root, path_maps)
    if record is None:
        record = V2Import(
            path=str(found),
            fingerprint=fingerprint,
            rows=reader.rows,
            checkpoint="vouched" if model is not None else "none",
            duplicates=plan.duplicates,
            cut_paths=len(plan.cut_rows),
        )
    if store.exists():
        check_same_model(read_attrs(store), identity, what="import asked for now", whose=f"import under way in {store}")
    else:
        create_store(store, identity, fsync, attributes={IMPORT_ATTRIBUTE: msgspec.to_builtins(record)})
    _commit_all(reader, plan, store, output_dir, identity, record, progress, fsync)
    record.finished = True
    write_attrs(store, {IMPORT_ATTRIBUTE: msgspec.to_builtins(record)}, fsync)
    return record


def _earlier_record(store: Path, output_dir: Path, fingerprint: str) -> V2Import | None:
    """The record of an import of this same v2 store begun in `output_dir`; refuses a folder that
    holds anything else."""
    if not store.exists():
        jobs = load_jobs(output_dir)
        if any(job.list_sha256 != fingerprint for job in jobs):
            raise UsageError(f"{output_dir} holds jobs of another list: import into a new folder")
        return None
    raw = read_attrs(store).get(IMPORT_ATTRIBUTE)
    if raw is None:
        raise UsageError(f"{store} is a store not made by import-v2: import into a new folder")
    record = convert(raw, V2Import, f"{store}: attribute {IMPORT_ATTRIBUTE}")
    if record.fingerprint != fingerprint:
        state = "finished" if record.finished else "begun"
        raise UsageError(
            f"{store} holds an import {state} from {record.path} as it was then; that store has changed since. "
            "Import it into a new folder"
        )
    return record


def _plan(
    reader: V2Reader,
    output_dir: Path,
    identity: ModelIdentity,
    fingerprint: str,
    dataspec_root: str | None,
    path_maps: PathMaps,
) -> _Plan:
    """Page ids for every v2 row, duplicates left out, cut paths failed; the job planned (or found)."""
    lines = reader.column("manifest_path")
    meta = {name: reader.column(name, repeats=True) for name in ("source", "series", "volume", "issue", "page_num")}
    panel_counts = reader.panel_counts()
    width = reader.width("manifest_path")
    pages: list[JobPage] = []
    v2_rows: list[int] = []
    cut_rows: dict[int, str] = {}
    seen: set[str] = set()
    duplicates = 0
    entries = entries_of_lines(lines, dataspec_root, path_maps)
    for row, (line, entry) in enumerate(zip(lines, entries)):
        reason = ""
        if width and len(line) >= width and not line.lower().endswith(".json"):
            reason = (
                f"{GENERATOR} cut this row's manifest_path at its column width ({width} characters): "
                f"{line!r} names no known page"
            )
            page_id = f"v2 row {row}, manifest_path cut: {line}"
        elif entry is None:
            reason = f"this row of the v2 store has no manifest_path ({line!r})"
            page_id = f"v2 row {row}, no manifest_path"
        else:
            page_id = entry.page_id
        if page_id in seen:
            duplicates += 1
            continue
        seen.add(page_id)
        if reason:
            cut_rows[len(pages)] = reason
        pages.append(
            JobPage(
                page_id=page_id,
                manifest_path=line,
                source=meta["source"][row],
                series=meta["series"][row],
                volume=meta["volume"][row],
                issue=meta["issue"][row],
                page_num=meta["page_num"][row],
                panel_count=int(panel_counts[row]),
            )
        )
        v2_rows.append(row)
    del seen, meta, lines
    if duplicates:
        log.warning("%d rows of %s repeat an earlier row's page id: left out", duplicates, reader.path)
    planned, _ = plan_job(output_dir, str(reader.path), pages, BATCH_ROWS, False, identity, list_sha256=fingerprint)
    count = len(pages)
    del pages
    # the job as a header whose pages are read from its file when asked: the pages need not stay in memory
    job = next((j for j in load_jobs(output_dir) if planned is not None and j.job_id == planned.job_id), None)
    if job is None or job.page_count != count:
        raise UsageError(f"{output_dir}: the job planned for {reader.path} does not hold its {count} pages")
    return _Plan(job, np.asarray(v2_rows, dtype=np.int64), cut_rows, duplicates)


def _commit_all(
    reader: V2Reader,
    plan: _Plan,
    store: Path,
    output_dir: Path,
    identity: ModelIdentity,
    record: V2Import,
    progress: bool,
    fsync: bool,
) -> None:
    """Convert and commit every batch from where the counts recorded end (batches committed past
    that point are converted again to be counted, and not written twice)."""
    counts = Counts(record.nan_pages, record.unwritten, record.cut_texts)
    batches = [b for b in plan.job.batches() if b[1] >= record.counted_rows]
    bar = tqdm(
        total=plan.job.page_count, initial=record.counted_rows, desc="importing", unit="page", disable=not progress
    )
    with StoreWriter(output_dir, fsync=fsync) as writer:
        rows = _Rows(reader, plan.v2_rows, batches[0][1] if batches else 0)
        for commits, k in enumerate(range(0, len(batches), BATCHES_PER_COMMIT), start=1):
            group = batches[k : k + BATCHES_PER_COMMIT]
            results = []
            for batch_id, start, end in group:
                reasons = {r - start: why for r, why in plan.cut_rows.items() if start <= r < end}
                converted = convert_block(rows.take(start, end), reasons)
                counts.add(converted.counts)
                results.append(
                    BatchResult(
                        job=plan.job.job_id,
                        batch_id=batch_id,
                        start=start,
                        page_ids=[p.page_id for p in plan.job.page_slice(start, end)],
                        arrays=converted.arrays,
                        model=identity.to_dict(),
                    )
                )
            writer.commit(results)
            if commits == config.IMPORT_KILL_AFTER.get():
                os.kill(os.getpid(), signal.SIGKILL)  # the interrupted-import test: between commit and record
            record.nan_pages, record.unwritten, record.cut_texts = counts.nan_pages, counts.unwritten, counts.cut_texts
            record.counted_rows = group[-1][2]
            write_attrs(store, {IMPORT_ATTRIBUTE: msgspec.to_builtins(record)}, fsync)
            bar.update(group[-1][2] - group[0][1])
    bar.close()


class _Rows:
    """The v2 rows of our rows [start, end), read block by block in order (each chunk once)."""

    def __init__(self, reader: V2Reader, v2_rows: np.ndarray, first: int) -> None:
        self.v2_rows = v2_rows
        start = int(v2_rows[first]) if first < len(v2_rows) else reader.rows
        self.blocks = reader.blocks(start, READ_ROWS)
        self.buf_start = start
        self.buf: dict[str, np.ndarray] = {}
        self.buf_end = start

    def take(self, start: int, end: int) -> dict[str, np.ndarray]:
        need = self.v2_rows[start:end]
        while need[-1] >= self.buf_end:
            block_start, block = next(self.blocks)
            keep = max(0, int(need[0]) - self.buf_start)
            if self.buf and keep < self.buf_end - self.buf_start:
                self.buf = {k: np.concatenate([v[keep:], block[k]]) for k, v in self.buf.items()}
                self.buf_start += keep
            else:
                self.buf, self.buf_start = block, block_start
            self.buf_end = self.buf_start + len(self.buf["page_embeddings"])
        return {k: v[need - self.buf_start] for k, v in self.buf.items()}


def summary(record: V2Import, store: Path) -> str:
    """What the import made, in words: the rows, what failed and why, what the store lacks."""
    failed = record.nan_pages + record.unwritten + record.cut_paths
    lines = [
        f"imported {record.rows} rows of {record.path} into {store}"
        + (f" ({record.duplicates} repeated page ids left out)" if record.duplicates else ""),
        f"  failed: {failed} ({record.nan_pages} NaN page embeddings, {record.unwritten} never written, "
        f"{record.cut_paths} with a cut manifest_path); `run --retry-failed` embeds them again",
        f'  texts cut at 512 characters by {GENERATOR}: {record.cut_texts} panels (marked "cut_at": 512)',
        "  checkpoint: "
        + (
            "vouched for with --checkpoint (not verified)"
            if record.checkpoint == "vouched"
            else "none: read-only for embedding; import again with --checkpoint to add pages"
        ),
    ]
    return "\n".join(lines)
