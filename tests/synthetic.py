"""Deterministic synthetic jobs and batch results, for the writer's tests and its benchmark.

Everything derives from a seed and the row number, so two runs (one killed many times, one not)
produce byte-identical results. Pages have 0 to max_panels panels; some fail, and pages without
panels are embedded as one full-page panel, as the real workers do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from comix_embed.common.store.jobs import Job, JobPage
from comix_embed.common.store.results import BatchResult
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_FULL_PAGE, STATUS_OK
from comix_embed.producer.jobs import plan_job

CHECKPOINT_A = "a" * 64
CHECKPOINT_B = "b" * 64


def model_info(d: int = 16, checkpoint: str = CHECKPOINT_A, max_panels: int = 12) -> dict[str, Any]:
    return {
        "model_name": "CLOSURE-Lite-Simple",
        "embedding_dim": d,
        "max_panels": max_panels,
        "encoder_mode": "fused",
        "checkpoint_sha256": checkpoint,
        "tokenizer": "roberta-test",
    }


def make_pages(n: int, prefix: str = "book", seed: int = 0, max_panels: int = 12) -> list[JobPage]:
    rng = np.random.default_rng(seed)
    pages = []
    for i in range(n):
        page_id = f"{prefix}/vol{i // 100:02d}/{i:05d}.json"
        pages.append(
            JobPage(
                page_id=page_id,
                manifest_path=f"/data/specs/{page_id}",
                source="synthetic",
                series=prefix,
                volume=f"vol{i // 100:02d}",
                issue="1",
                page_num=str(i),
                panel_count=int(rng.integers(0, max_panels + 1)),
            )
        )
    return pages


def plan_maybe(
    output_dir: str | Path, pages: list[JobPage], batch_size: int, incremental: bool = False, name: str = "list.txt"
) -> tuple[Job | None, list[tuple[JobPage, str]]]:
    """Write a list file for these pages and plan it as a job (None: nothing new to embed)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    list_path = output_dir / name
    list_path.write_text("".join(p.manifest_path + "\n" for p in pages), encoding="utf-8")
    return plan_job(output_dir, list_path, pages, batch_size, incremental)


def plan(
    output_dir: str | Path, pages: list[JobPage], batch_size: int, incremental: bool = False, name: str = "list.txt"
) -> tuple[Job, list[tuple[JobPage, str]]]:
    """`plan_maybe` where the pages hold something new: the job planned."""
    job, skipped = plan_maybe(output_dir, pages, batch_size, incremental, name)
    assert job is not None, "nothing new to plan"
    return job, skipped


def make_result(job: Job, batch_id: int, model: dict[str, Any], seed: int = 0) -> BatchResult:
    """The result a worker would send for one batch of `job`."""
    start, end = job.batch(batch_id)
    d, p = int(model["embedding_dim"]), int(model["max_panels"])
    n = end - start
    rng = np.random.default_rng([seed, batch_id])
    status = np.full(n, STATUS_OK, dtype=np.int8)
    mask = np.zeros((n, p), dtype=bool)
    text = np.full((n, p), "", dtype=object)
    page_text = np.full(n, "", dtype=object)
    error = np.full(n, "", dtype=object)
    for i in range(n):
        page = job.page(start + i)
        if (start + i) % 17 == 5:
            status[i] = STATUS_FAILED
            error[i] = "image not found"
            continue
        count = page.panel_count
        if count == 0:
            status[i], count = STATUS_FULL_PAGE, 1
        mask[i, :count] = True
        panels = [{"dialogue": [f"line {start + i}.{j} é"], "narration": [], "sfx": []} for j in range(count)]
        for j, panel in enumerate(panels):
            text[i, j] = json.dumps(panel, ensure_ascii=False)
        page_text[i] = json.dumps({k: [t for pnl in panels for t in pnl[k]] for k in ("dialogue", "narration", "sfx")})
    weights = np.where(mask, rng.random((n, p), dtype=np.float32), 0.0)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
    ok = (status != STATUS_FAILED)[:, None]
    arrays = {
        # np.where, not multiplication: padded and failed slots hold +0.0, never -0.0
        "page_embeddings": np.where(ok, rng.standard_normal((n, d), dtype=np.float32), 0.0).astype(np.float32),
        "panel_embeddings": np.where(mask[:, :, None], rng.standard_normal((n, p, d), dtype=np.float32), 0.0).astype(
            np.float32
        ),
        "panel_mask": mask,
        "attention_weights": weights.astype(np.float32),
        "reading_order": np.where(mask, np.arange(1, p + 1, dtype=np.int16), -1).astype(np.int16),
        "panel_coordinates": np.where(mask[:, :, None], rng.random((n, p, 4), dtype=np.float32) * 1000, 0.0).astype(
            np.float32
        ),
        "text_content": text,
        "page_text": page_text,
        "image_path": np.array([job.page(start + i).page_id.replace(".json", ".jpg") for i in range(n)], dtype=object),
        "image_root": np.zeros(n, np.int16),
        "status": status,
        "error": error,
    }
    page_ids = [job.page(row).page_id for row in range(start, end)]
    return BatchResult(
        job=job.job_id, batch_id=batch_id, start=start, page_ids=page_ids, arrays=arrays, model=dict(model)
    )
