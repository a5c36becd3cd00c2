"""The system at the users' scale: grow a store to N pages through the writer service, then measure it.

    python benchmarks/scale.py --pages N [--batch-size 8] [--d 384] [--keep DIR] [--json]

Why one benchmark: the store, the writer, `status`, `summaries`, `diagnose` and search must stay
as good at 1.2 million pages as at 200, and these figures are the proof. The goals, at 1.2 million
pages: the writer's last tenth at 2,500 pages/s or more, on at most 0.4 CPU s per 1,000 pages and
at most 1.1 times its first tenth's; write amplification at most 3; at most 5,000 files in a
folder; a writer opens the store in 2 s, `status` and `summaries` answer in 2 s, `diagnose` in
300 s; queries within 50-100 ms p50 with panel recall@10 of 0.95 or more; at most 8 GB of memory.

How the store grows, as in production but with no model:
- a private `redis-server` on a free port (comix_embed/private_redis.py), and the real writer process
  (`comix-embed writer`) reading the results stream;
- 10 lists registered as jobs the way the producer registers them (`plan_job`: list file, job file,
  kept task payloads), bound to one model identity, before the writer starts;
- this process plays the workers: it makes each batch's result, packs it as a `ResultEnvelope`
  and publishes it with the worker's own bounded `push`, batches shuffled within windows of
  WINDOW batches (results arrive out of order, as many GPUs deliver them); the writer groups them
  as its service does.
Synthetic results have structure: panel embeddings are drawn from a mixture of CENTRES centres
plus noise (a fixed seed), 0 to 12 panels per page (binomial, mean 6; a page without panels is
one full-page panel, as workers embed it), 1% failed pages, comic-like text. The recall queries
come from the same mixture and are never stored.

Measured on the finished store (every figure the goals name, in one JSON object): the write
rate and the writer's CPU per 1,000 pages over the first and the last tenth of the pages (the
writer's /proc/<pid>/stat sampled as `committed_rows` crosses them), the writer's disk writes
over the store's size, files per folder and per array, a writer opening the store, `status`,
`summaries`, `diagnose` as processes, query latencies and peak memory in a separate process
(the store already open), and panel recall@10 against an exact search. Notes (disk needed,
figures not available yet) go to stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import zarr

from comix_embed.common import config
from comix_embed.common.broker.connection import connect
from comix_embed.common.broker.results_stream import ResultsFull, push, store_id_of
from comix_embed.common.inputs.pages import PageSpec, PageTask, PanelSpec
from comix_embed.common.messages import TASK_FORMAT, ModelIdentity, TaskPayload, decode_json, encode_json
from comix_embed.common.model.identity import make_identity
from comix_embed.common.model.preprocess import text_to_json
from comix_embed.common.store.jobs import Job, JobPage
from comix_embed.common.store.reading import read_committed_rows
from comix_embed.common.store.results import BatchResult
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_FULL_PAGE, STATUS_OK, store_path
from comix_embed.private_redis import PrivateRedis
from comix_embed.producer.jobs import plan_job
from comix_embed.tools.sample import text as sample_text

P = config.MAX_PANELS
CENTRES = 2000
NOISE = 0.35  # noise norm relative to a (unit) centre: panels of one centre have cosine ~0.9
SAME_THEME = 0.7  # share of a page's panels drawn from the page's own centre
FAILED_SHARE = 0.01
JOB_SHARES = (0.2, 0.15, 0.12, 0.1, 0.1, 0.08, 0.08, 0.07, 0.05, 0.05)  # 10 lists, as collections come
WINDOW = 64  # batches shuffled together: the spread of arrival order
TEXT_POOL = 4096  # distinct panel texts
TIMED_QUERIES = 50
RECALL_QUERIES = 100
K = 10
POLL_S = 0.02
STALL_S = 600.0  # no commit for this long while results wait: the writer is stuck
SEED = 12


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- what the run needs ---


def disk_needed(pages: int, d: int) -> int:
    """Bytes the run writes (store, job files, task payloads, audit log), with a 25% margin.

    Per page: page and 12 panel embeddings stored uncompressed (13 * 4 * d), the small per-slot
    arrays, text and metadata (~1.5 KB), a manifest's share and the job and task files (~1.5 KB).
    """
    per_page = 13 * 4 * d + P * (1 + 4 + 2 + 16) + 3000
    return int(pages * per_page * 1.25)


def check_disk(folder: Path, need: int) -> None:
    free = shutil.disk_usage(folder).free
    note(f"disk: this run needs about {need / 1e9:.1f} GB under {folder}; {free / 1e9:.1f} GB free")
    if free < need:
        raise SystemExit(
            f"error: not enough disk under {folder}: need about {need / 1e9:.1f} GB, {free / 1e9:.1f} free"
        )


# --- synthetic pages and results ---


class Corpus:
    """Every page's panel count and fate, the mixture's centres and a pool of panel texts, from one seed."""

    def __init__(self, pages: int, d: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0])
        self.d = d
        self.seed = seed
        centres = rng.standard_normal((CENTRES, d), dtype=np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        self.panel_counts = rng.binomial(P, 0.5, pages).astype(np.int8)
        self.failed = rng.random(pages) < FAILED_SHARE
        text_rng = random.Random(seed)
        self.texts = [sample_text.panel_text(text_rng) for _ in range(TEXT_POOL)]
        self.text_json = np.array([text_to_json(t) for t in self.texts], dtype=object)
        self.bounds = np.round(np.cumsum((0.0, *JOB_SHARES)) * pages).astype(int)  # rows of the 10 lists

    def draw(self, rng: np.random.Generator, centre_ids: np.ndarray) -> np.ndarray:
        """Vectors around the given centres: centre + noise of norm about NOISE."""
        noise = rng.standard_normal((len(centre_ids), self.d), dtype=np.float32)
        noise *= np.float32(NOISE / math.sqrt(self.d))
        return self.centres[centre_ids] + noise

    def queries(self, count: int) -> np.ndarray:
        """Held-out panel-like queries, unit length: the same mixture, a stream never stored."""
        rng = np.random.default_rng([self.seed, 1])
        vectors = self.draw(rng, rng.integers(0, CENTRES, count))
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def page_id(self, row: int) -> str:
        """A page id as users' paths look, in one of the 10 collections."""
        series, volume = f"Series {row // 2000:04d}", f"v{(row // 200) % 10:02d}"
        return f"collection{self.collection(row):02d}/{series} {volume}/JPG4CBZ/{row:07d}.json"

    def collection(self, row: int) -> int:
        return int(np.searchsorted(self.bounds, row, side="right")) - 1

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Every result array of rows [start, stop), as workers would compute them."""
        n = stop - start
        rng = np.random.default_rng([self.seed, 2, start])
        counts = self.panel_counts[start:stop].astype(np.int64)
        failed = self.failed[start:stop]
        status = np.where(counts == 0, STATUS_FULL_PAGE, STATUS_OK).astype(np.int8)
        status[failed] = STATUS_FAILED
        counts = np.where(failed, 0, np.maximum(counts, 1))
        mask = np.arange(P)[None, :] < counts[:, None]
        theme = rng.integers(0, CENTRES, n)
        centre = np.where(rng.random((n, P)) < SAME_THEME, theme[:, None], rng.integers(0, CENTRES, (n, P)))
        panels = np.zeros((n, P, self.d), np.float32)
        panels[mask] = self.draw(rng, centre[mask])
        pages = panels.sum(axis=1) / np.maximum(counts, 1)[:, None].astype(np.float32)
        weights = np.where(mask, rng.random((n, P), dtype=np.float32), np.float32(0))
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), np.float32(1e-9))
        coords = np.where(mask[:, :, None], rng.random((n, P, 4), dtype=np.float32) * 1000, np.float32(0))
        text_ids = rng.integers(0, TEXT_POOL, (n, P))
        text = np.full((n, P), "", dtype=object)
        text[mask] = self.text_json[text_ids[mask]]
        page_text = np.full(n, "", dtype=object)
        for i in np.flatnonzero(~failed):
            panel_texts = [self.texts[t] for t in text_ids[i, : counts[i]]]
            page_text[i] = text_to_json({k: [s for t in panel_texts for s in t[k]] for k in config.TEXT_KEYS})
        ids = [self.page_id(r) for r in range(start, stop)]
        return {
            "page_embeddings": pages.astype(np.float32),
            "panel_embeddings": panels,
            "panel_mask": mask,
            "attention_weights": weights,
            "reading_order": np.where(mask, np.arange(P, dtype=np.int16), np.int16(-1)).astype(np.int16),
            "panel_coordinates": coords,
            "text_content": text,
            "page_text": page_text,
            "image_path": np.array([p.replace(".json", ".jpg") for p in ids], dtype=object),
            "image_root": np.zeros(n, np.int16),
            "status": status,
            "error": np.where(failed, "synthetic failure: image not found", "").astype(object),
        }


def job_pages(corpus: Corpus) -> list[list[JobPage]]:
    """The pages of the 10 lists, with the metadata the producer reads from DataSpecs."""
    lists = []
    for j in range(len(JOB_SHARES)):
        out = []
        for row in range(corpus.bounds[j], corpus.bounds[j + 1]):
            page_id = corpus.page_id(row)
            out.append(
                JobPage(
                    page_id=page_id,
                    manifest_path=f"/data/dataspecs/{page_id}",
                    source=f"collection{j:02d}",
                    series=page_id.split("/")[1].rsplit(" ", 1)[0],
                    volume=page_id.split("/")[1].rsplit(" ", 1)[1],
                    issue="1",
                    page_num=str(row % 200),
                    panel_count=int(corpus.panel_counts[row]),
                )
            )
        lists.append(out)
    return lists


# --- the producer's part: jobs ---


def register_jobs(output_dir: Path, lists: list[list[JobPage]], batch_size: int, model: ModelIdentity) -> list[Job]:
    """Register each list as the producer does: list file, kept task payloads, job file, bound to `model`."""
    jobs = []
    folder = output_dir / "lists"
    folder.mkdir(parents=True, exist_ok=True)
    for n, pages in enumerate(lists):
        list_path = folder / f"list_{n:02d}.txt"
        list_path.write_text("".join(p.manifest_path + "\n" for p in pages), encoding="utf-8")
        tasks = functools.partial(task_payloads, pages=pages, model=model)
        job, _ = plan_job(output_dir, list_path, pages, batch_size, incremental=n > 0, model=model, tasks=tasks)
        assert job is not None
        jobs.append(job)
    return jobs


def task_payloads(job: Job, first: Job, pages: list[JobPage], model: ModelIdentity) -> Iterator[TaskPayload]:
    """Every batch's task payload, as the producer keeps them beside the job file."""
    store = store_id_of(first)
    for batch_id, start, end in job.batches():
        tasks = [page_task(row, pages[row - job.start_row]) for row in range(start, end)]
        yield TaskPayload(v=TASK_FORMAT, job=job.job_id, batch_id=batch_id, store_id=store, pages=tasks, model=model)


def page_task(row: int, page: JobPage) -> PageTask:
    """A page as the producer sends it: its row, image and panel boxes (their text left out)."""
    image = page.page_id.replace(".json", ".jpg")
    panels = [PanelSpec(box=[0.0, 0.0, 100.0, 100.0]) for _ in range(page.panel_count)]
    return PageTask(row=row, page_id=page.page_id, image=image, spec=PageSpec(image=image, panels=panels))


# --- the writer process ---


def start_writer(output_dir: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`comix-embed writer` on the store, once it reads the results stream."""
    with open(log_path, "wb") as log:  # the child keeps its own copy of the file
        proc = subprocess.Popen(
            [sys.executable, "-m", "comix_embed", "writer", "--output-dir", str(output_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 120
    while b"reading results of store" not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"error: the writer did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    return proc


def stop_writer(proc: subprocess.Popen) -> None:
    """SIGTERM: the writer stops after the commit at hand; killed if it does not within a minute."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, threads included (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_bytes(pid: int) -> int:
    """Bytes a process caused to be written to storage (/proc/<pid>/io)."""
    with open(f"/proc/{pid}/io") as fh:
        return int(next(line for line in fh if line.startswith("write_bytes:")).split()[1])


@dataclass
class Sample:
    t: float
    rows: int
    cpu: float


class Progress:
    """`committed_rows` as the store publishes it, with the writer's CPU, each time it moves."""

    def __init__(self, path: Path, writer: subprocess.Popen) -> None:
        self.path = path
        self.writer = writer
        self.samples = [Sample(time.monotonic(), 0, cpu_seconds(writer.pid))]
        self._next = 0.0

    def poll(self) -> int:
        now = time.monotonic()
        if now < self._next:
            return self.samples[-1].rows
        self._next = now + POLL_S
        if self.writer.poll() is not None:
            raise SystemExit(f"error: the writer exited with status {self.writer.returncode}")
        rows = read_committed_rows(self.path) if (self.path / "zarr.json").exists() else 0
        if rows != self.samples[-1].rows:
            self.samples.append(Sample(now, rows, cpu_seconds(self.writer.pid)))
        return rows

    def tenths(self, pages: int) -> dict[str, float]:
        """Rate and CPU per 1,000 pages over the first tenth (start to the first sample at or past
        10%) and the last (the last sample at or before 90% to the end)."""
        s = self.samples
        first_end = next(x for x in s if x.rows >= pages / 10)
        last_start = [x for x in s if x.rows <= pages * 0.9][-1]
        out = {}
        for name, a, b in (("first", s[0], first_end), ("last", last_start, s[-1])):
            out[f"write_pages_per_s_{name}"] = round((b.rows - a.rows) / (b.t - a.t), 1)
            out[f"writer_cpu_s_per_1k_{name}"] = round((b.cpu - a.cpu) / (b.rows - a.rows) * 1000, 4)
        return out


def stream_bound(rows_per_result: int) -> int:
    """Results the stream may hold before a worker waits, as workers compute it (common/config.py)."""
    return config.pending_bound(rows_per_result)


def deliver(client: Any, store: str, result: BatchResult, progress: Progress) -> None:
    """Publish a result as a worker does (the same bounded push), waiting while the stream is full."""
    blob = result.to_bytes()
    while True:
        try:
            push(client, store, result.batch_id, blob, stream_bound(len(result.page_ids)), timeout=0)
            return
        except ResultsFull:
            progress.poll()
            time.sleep(0.001)


def feed(client: Any, store: str, corpus: Corpus, jobs: list[Job], progress: Progress, pages: int) -> None:
    """Every batch's result, shuffled within windows, then wait for the writer to commit them all."""
    order = np.random.default_rng([corpus.seed, 3])
    model = corpus_model(corpus).to_dict()
    for job in jobs:
        batches = job.batches()
        for w in range(0, len(batches), WINDOW):
            window = batches[w : w + WINDOW]
            base = window[0][1]
            arrays = corpus.rows(base, window[-1][2])
            for k in order.permutation(len(window)):
                batch_id, start, end = window[k]
                part = {name: a[start - base : end - base] for name, a in arrays.items()}
                ids = [corpus.page_id(r) for r in range(start, end)]
                result = BatchResult(job.job_id, batch_id, start, ids, part, model)
                deliver(client, store, result, progress)
                progress.poll()
    last_move = time.monotonic()
    rows = progress.poll()
    while rows < pages:
        time.sleep(POLL_S)
        now_rows = progress.poll()
        if now_rows != rows:
            rows, last_move = now_rows, time.monotonic()
        elif time.monotonic() - last_move > STALL_S:
            raise SystemExit(f"error: committed_rows stayed at {rows} of {pages} for {STALL_S:.0f} s")


def corpus_model(corpus: Corpus) -> ModelIdentity:
    """The model identity every job and result carries (no model is loaded: the results are made here)."""
    return make_identity("5ca1e" + "0" * 59, corpus.d, "fused", "content-sha256:" + "5" * 64)


# --- the finished store ---


def disk_bytes(root: Path) -> int:
    return sum(os.lstat(Path(d) / f).st_blocks * 512 for d, _, files in os.walk(root) for f in files)


def file_counts(store: Path) -> dict[str, int]:
    """Files in the largest folder, in the largest array, and in the whole store."""
    per_folder = [len(files) for _, _, files in os.walk(store)]
    per_array = [
        sum(len(files) for _, _, files in os.walk(entry))
        for entry in store.iterdir()
        if entry.is_dir() and _is_array(entry)
    ]
    return {"folder_files_max": max(per_folder), "files_per_array_max": max(per_array), "files_total": sum(per_folder)}


def _is_array(folder: Path) -> bool:
    meta = folder / "zarr.json"
    return meta.is_file() and json.loads(meta.read_text()).get("node_type") == "array"


def writer_open_s(output_dir: Path) -> float:
    """A writer opening the finished store, recovery scan included (in this process, imports done)."""
    from comix_embed.writer.commit import StoreWriter

    t0 = time.perf_counter()
    with StoreWriter(output_dir):
        elapsed = time.perf_counter() - t0
    return elapsed


def command_s(args: list[str], env: dict[str, str]) -> float:
    """Wall time of one `comix-embed` command as a process (its output discarded); exit 0 or 3 expected."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "comix_embed", *args], env=env, capture_output=True)
    elapsed = time.perf_counter() - t0
    if done.returncode not in (0, 3):
        raise SystemExit(f"error: comix-embed {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]!r}")
    return elapsed


def index_build_s(output_dir: Path, env: dict[str, str]) -> float | None:
    """`comix-embed index` on the store; None while the command does not exist."""
    from comix_embed.cli import COMMANDS

    if "index" not in COMMANDS:
        note("index_build_s: null (no `comix-embed index` command yet: queries use exact search)")
        return None
    return command_s(["index", "--zarr", str(output_dir), "--no-progress"], env)


# --- queries (run in their own process, to measure its peak memory) ---


def open_search(store: Path) -> Any:
    """The store opened for search, everything a query needs loaded (not part of any query's time)."""
    from comix_embed.tools.search import SearchIndex

    index = SearchIndex.load(store)
    index.keyword("the", K)  # builds the keyword index on first use
    index.load_panels()
    return index


def searchable_rows(index: Any) -> np.ndarray:
    return index.rows


def search_like(index: Any, row: int) -> list[int]:
    return [h.row for h in index.like(row, K)]


def search_keyword(index: Any, word: str) -> list[int]:
    return [h.row for h in index.keyword(word, K)]


def search_panels(index: Any, vector: np.ndarray) -> list[int]:
    """Pages by their best panel for one query vector (what `--text` and `--image` search with)."""
    return [h.row for h in index.panels(vector, K)]


class QueryFigures(msgspec.Struct, kw_only=True):
    """What the query child process reports to its parent (as JSON on its stdout)."""

    query_like_p50_ms: float
    query_keyword_p50_ms: float
    query_panel_p50_ms: float
    query_peak_rss_mb: int
    answers: list[list[int]]  # the rows found for each recall query


def query_process(store: Path, d: int, pages: int) -> QueryFigures:
    """Median latencies of 50 like, keyword and panel queries on the open store, the panel
    answers to the recall queries, and this process's peak memory."""
    corpus = Corpus(pages, d, SEED)
    queries = corpus.queries(RECALL_QUERIES)
    index = open_search(store)
    rng = random.Random(SEED)
    rows = searchable_rows(index)
    like_rows = [int(rng.choice(rows)) for _ in range(TIMED_QUERIES)]
    words: list[str] = []
    while len(words) < TIMED_QUERIES:  # words of the texts pages carry: common ones and rare ones alike
        text = rng.choice(corpus.texts)
        candidates = re.findall(r"[A-Za-z]{3,}", " ".join(s for k in config.TEXT_KEYS for s in text[k]))
        if candidates:
            words.append(rng.choice(candidates))

    def p50(fn: Any, inputs: list) -> float:
        times = []
        for x in inputs:
            t0 = time.perf_counter()
            fn(index, x)
            times.append((time.perf_counter() - t0) * 1000)
        return round(float(np.median(times)), 2)

    answers = []
    times = []
    for q in queries:
        t0 = time.perf_counter()
        answers.append(search_panels(index, q))
        times.append((time.perf_counter() - t0) * 1000)
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    return QueryFigures(
        query_like_p50_ms=p50(search_like, like_rows),
        query_keyword_p50_ms=p50(search_keyword, words[:TIMED_QUERIES]),
        query_panel_p50_ms=round(float(np.median(times[:TIMED_QUERIES])), 2),
        query_peak_rss_mb=round(max(hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024),
        answers=answers,
    )


def exact_top_pages(store: Path, queries: np.ndarray, k: int = K, step: int = 4096) -> list[list[int]]:
    """The k pages with the best panel for each query, by cosine over every valid panel of every
    searchable committed row: the ground truth for recall, read slice by slice."""
    group = zarr.open_group(store, mode="r", use_consolidated=False)
    arrays: dict[str, zarr.Array] = {}
    for name in ("panel_embeddings", "status", "panel_mask"):
        array = group[name]
        assert isinstance(array, zarr.Array), f"{store}: {name} is not an array"
        arrays[name] = array
    committed = read_committed_rows(store)
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), 0), np.int64)
    for start in range(0, committed, step):
        stop = min(start + step, committed)
        panels = np.asarray(arrays["panel_embeddings"][start:stop])
        status = np.asarray(arrays["status"][start:stop])
        norms = np.linalg.norm(panels, axis=2)
        valid = np.asarray(arrays["panel_mask"][start:stop]) & (norms > 1e-6)
        valid &= np.isin(status, (STATUS_OK, STATUS_FULL_PAGE))[:, None]
        scores = (panels / np.maximum(norms, 1e-12)[:, :, None]) @ queries.T  # rows, slots, queries
        scores[~valid] = -np.inf
        page_best = scores.max(axis=1).T  # queries, rows
        rows = np.broadcast_to(np.arange(start, stop), page_best.shape)
        all_scores = np.concatenate([best_scores, page_best], axis=1)
        all_rows = np.concatenate([best_rows, rows], axis=1)
        keep = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(all_scores, keep, axis=1)
        best_rows = np.take_along_axis(all_rows, keep, axis=1)
    return [[int(r) for r, s in zip(rr, ss) if np.isfinite(s)] for rr, ss in zip(best_rows, best_scores)]


def recall_at_k(found: list[list[int]], exact: list[list[int]]) -> float:
    return round(float(np.mean([len(set(f) & set(e)) / max(len(e), 1) for f, e in zip(found, exact)])), 4)


def measure_queries(store: Path, d: int, pages: int) -> dict[str, Any]:
    """Run the queries in a child process; recall against the exact search done here."""
    done = subprocess.run(
        [sys.executable, __file__, "--query-store", str(store), "--d", str(d), "--pages", str(pages)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"error: the query process failed:\n{done.stderr[-3000:]}")
    reported = decode_json(done.stdout, QueryFigures, "the query process's figures")
    exact = exact_top_pages(store, Corpus(pages, d, SEED).queries(RECALL_QUERIES))
    figures: dict[str, Any] = msgspec.structs.asdict(reported)
    figures["panel_recall_at_10"] = recall_at_k(figures.pop("answers"), exact)
    return figures


# --- the whole run ---


def grow_store(output_dir: Path, pages: int, batch_size: int, d: int) -> dict[str, Any]:
    """Register the jobs, run the writer, feed it every result; write figures measured on the way."""
    corpus = Corpus(pages, d, SEED)
    model = corpus_model(corpus)
    t0 = time.perf_counter()
    jobs = register_jobs(output_dir, job_pages(corpus), batch_size, model)
    note(f"registered {len(jobs)} jobs ({pages} pages, batches of {batch_size}) in {time.perf_counter() - t0:.1f} s")
    store = store_id_of(jobs[0])
    with PrivateRedis() as redis_server:
        env = {**os.environ, "COMIX_BROKER_URL": redis_server.url}
        writer = start_writer(output_dir, env, output_dir / "writer.log")
        try:
            progress = Progress(store_path(output_dir), writer)
            t0 = time.perf_counter()
            feed(connect(redis_server.url), store, corpus, jobs, progress, pages)
            note(f"store grown to {pages} pages in {time.perf_counter() - t0:.1f} s")
            written = write_bytes(writer.pid)
        finally:
            stop_writer(writer)
        figures: dict[str, Any] = dict(progress.tenths(pages))
        size = disk_bytes(store_path(output_dir))
        figures["write_amplification"] = round(written / size, 3)
        figures.update(file_counts(store_path(output_dir)))
        figures["bytes_per_page"] = round(size / pages)
        figures["writer_open_s"] = round(writer_open_s(output_dir), 3)
        figures["status_s"] = round(command_s(["status", "--output-dir", str(output_dir)], env), 3)
        figures["summaries_s"] = round(command_s(["summaries", "--zarr", str(output_dir)], env), 3)
        figures["diagnose_s"] = round(command_s(["diagnose", str(output_dir)], env), 3)
        built = index_build_s(output_dir, env)
    figures["index_build_s"] = None if built is None else round(built, 3)
    return figures


KEYS = (
    "pages",
    "write_pages_per_s_first",
    "write_pages_per_s_last",
    "writer_cpu_s_per_1k_first",
    "writer_cpu_s_per_1k_last",
    "folder_files_max",
    "write_amplification",
    "files_per_array_max",
    "files_total",
    "bytes_per_page",
    "writer_open_s",
    "status_s",
    "summaries_s",
    "diagnose_s",
    "query_like_p50_ms",
    "query_keyword_p50_ms",
    "query_panel_p50_ms",
    "panel_recall_at_10",
    "index_build_s",
    "query_peak_rss_mb",
)


def run(output_dir: Path, pages: int, batch_size: int, d: int) -> dict[str, Any]:
    if output_dir.exists() and any(output_dir.iterdir()):
        raise SystemExit(f"error: {output_dir} is not empty: the benchmark grows a new store")
    output_dir.mkdir(parents=True, exist_ok=True)
    check_disk(output_dir, disk_needed(pages, d))
    figures = {"pages": pages, **grow_store(output_dir, pages, batch_size, d)}
    figures.update(measure_queries(store_path(output_dir), d, pages))
    return {key: figures[key] for key in KEYS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, required=True, help="pages the store grows to")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--d", type=int, default=384, help="embedding width (default 384)")
    parser.add_argument("--keep", type=Path, help="grow the store in this (new or empty) folder and keep it")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--query-store", type=Path, help=argparse.SUPPRESS)  # the query child process
    args = parser.parse_args(argv)
    if args.pages < 10 * len(JOB_SHARES):
        parser.error(f"--pages must be at least {10 * len(JOB_SHARES)}")
    if args.query_store is not None:
        print(encode_json(query_process(args.query_store, args.d, args.pages)).decode())
        return 0
    if args.keep is not None:
        figures = run(args.keep, args.pages, args.batch_size, args.d)
    else:
        with tempfile.TemporaryDirectory(prefix="comix-scale-") as tmp:
            figures = run(Path(tmp), args.pages, args.batch_size, args.d)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:28s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
