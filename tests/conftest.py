"""Shared fixtures: a tiny checkpoint, sample corpora, and stores the pipeline made.

The checkpoint is untrained and has its tokenizer beside it; the stores are complete with failed
pages, or interrupted mid-job.

All are made here by the project's own commands' code (nothing is downloaded), once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from comix_embed.common.model.tokenizer import load_tokenizer
from comix_embed.private_redis import PrivateRedis
from comix_embed.tools.init_checkpoint import init_checkpoint
from comix_embed.tools.sample.corpus import make_sample
from tests.cli import enqueue_args, run_args, run_cli
from tests.corpora import PIPELINE_PAGES, add_broken_pages


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    init_checkpoint(out, size="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic pages (with a 0-panel page and a >12-panel page among them)."""
    out = tmp_path_factory.mktemp("corpus")
    make_sample(out, pages=24, seed=1)
    return out


@pytest.fixture(scope="session")
def pipeline_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus `pipeline_store` embeds: 16 sample pages plus 3 that fail (images under `images/`)."""
    corpus_dir = tmp_path_factory.mktemp("pipeline_corpus")
    make_sample(corpus_dir, pages=16, seed=5)
    add_broken_pages(corpus_dir)
    return corpus_dir


@pytest.fixture(scope="session")
def pipeline_store(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, pipeline_corpus: Path) -> Path:
    """An output folder made by `comix-embed run` from `pipeline_corpus`: 16 sample pages plus 3 that fail."""
    out = tmp_path_factory.mktemp("pipeline_out")
    proc = run_cli(*run_args(tiny_checkpoint, pipeline_corpus, out, workers=2))
    assert proc.returncode == 3, proc.stdout + proc.stderr  # done, some pages failed
    return out


@pytest.fixture(scope="session")
def vision_store(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, pipeline_corpus: Path) -> Path:
    """The pipeline corpus embedded again, in the `vision` encoder mode."""
    out = tmp_path_factory.mktemp("vision_out")
    proc = run_cli(*run_args(tiny_checkpoint, pipeline_corpus, out, "--encoder-mode", "vision", workers=2))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="session")
def interrupted_store(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, corpus: Path) -> Path:
    """An output folder whose job was stopped mid-way: batches 0, 1 and 3 of 6 committed, no Redis."""
    from comix_embed.common.inputs.listfile import read_list
    from comix_embed.common.inputs.paths import ImageResolver
    from comix_embed.common.model.checkpoint import load_model
    from comix_embed.common.model.embed import Embedder, EmbedSettings
    from comix_embed.common.store.jobs import JobPage
    from comix_embed.producer.jobs import plan_job
    from comix_embed.producer.plan import plan_pages
    from comix_embed.writer.commit import StoreWriter

    out = tmp_path_factory.mktemp("interrupted_out")
    resolver = ImageResolver([corpus / "images"])
    planned = plan_pages(read_list(corpus / "list.txt", corpus), resolver)
    pages = [
        JobPage(
            page_id=p.task.page_id,
            manifest_path=p.manifest_path,
            panel_count=p.panel_count,
            dropped_panels=p.dropped_panels,
            **p.metadata,
        )
        for p in planned
    ]
    job, _ = plan_job(out, corpus / "list.txt", pages, batch_size=4, incremental=False)
    assert job is not None
    by_id = {p.task.page_id: p.task for p in planned}
    embedder = Embedder(
        load_model(tiny_checkpoint),
        load_tokenizer(None, tiny_checkpoint),
        resolver,
        settings=EmbedSettings(decode_threads=2),
    )
    try:
        with StoreWriter(out, fsync=False) as writer:
            for batch_id, start, end in job.batches():
                if batch_id in (0, 1, 3):
                    tasks = []
                    for row in range(start, end):
                        task = by_id[job.page(row).page_id]
                        task.row = row
                        tasks.append(task)
                    writer.commit([embedder.embed_batch(job.job_id, batch_id, tasks)])
    finally:
        embedder.close()
    return out


@pytest.fixture(scope="session")
def job_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline tests' corpus: 18 sample pages and 3 that fail."""
    corpus = tmp_path_factory.mktemp("pipe_corpus")
    make_sample(corpus, pages=PIPELINE_PAGES, seed=11)
    add_broken_pages(corpus)
    return corpus


@pytest.fixture()
def broker():
    """A private Redis server for one test (tests that flush it, stop it or read its keys)."""
    with PrivateRedis() as server:
        yield server


@pytest.fixture(scope="session")
def clean_store(tmp_path_factory: pytest.TempPathFactory, job_corpus: Path, tiny_checkpoint: Path) -> Path:
    """The reference: the pipeline job (batches of 4) run undisturbed by two workers and a writer."""
    from tests.harness import wait_committed, worker, writer

    out = tmp_path_factory.mktemp("clean")
    logs = out / "test-logs"
    with PrivateRedis() as server:
        procs = [worker(tiny_checkpoint, server.url, logs, f"w{i}") for i in range(2)]
        procs.append(writer(out, server.url, logs))
        try:
            done = run_cli(*enqueue_args(tiny_checkpoint, job_corpus, out, server.url))
            assert done.returncode == 0, done.stdout + done.stderr
            wait_committed(out, PIPELINE_PAGES + 3, 120, procs)
        finally:
            for p in procs:
                p.stop()
    return out
