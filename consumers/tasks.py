"""The Celery task a GPU worker runs: embed one batch, hand its arrays to the writer.

The model is loaded once per pool process, when the process starts (`worker_process_init`),
never in the Celery parent. A batch's result goes to the bounded results stream; when the writer
is far behind, the task waits, and if it would outlive its soft time limit it gives the batch back
to the queue (another try later) rather than fail it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from celery.exceptions import Reject
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready

from comix_embed.common import config
from comix_embed.common.celery_app import app

log = logging.getLogger(__name__)
_state: dict[str, Any] = {}


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    """Build this process's Embedder (torch is imported here, after the fork)."""
    import torch

    from comix_embed.common.checkpoint import load_model
    from comix_embed.common.embed import Embedder, EmbedSettings, resolve_device
    from comix_embed.common.paths import ImageResolver
    from comix_embed.common.tokenizer import load_tokenizer
    from comix_embed.consumers.settings import WorkerSettings

    settings = WorkerSettings.from_env()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    t0 = time.perf_counter()
    loaded = load_model(settings.checkpoint, device, trust=settings.trust_checkpoint)
    tokenizer = load_tokenizer(settings.tokenizer, settings.checkpoint)
    embed_settings = EmbedSettings(
        encoder_mode=settings.encoder_mode, fast_decode=settings.fast_decode, encode_batch=settings.encode_batch
    )
    if settings.decode_threads:
        embed_settings.decode_threads = settings.decode_threads
    _state["roots"] = settings.roots()
    _state["make"] = lambda roots: Embedder(loaded, tokenizer, ImageResolver(roots), device, embed_settings)
    _state["embedder"] = _state["make"](_state["roots"] or [Path(".")])
    _state["embedder"].warm_up()
    if not _state["roots"]:
        _state["embedder"] = None  # made with the producer's roots at the first task
    log.info(
        "pid %d: model %s (d=%d, %s) on %s loaded in %.1f s",
        os.getpid(),
        settings.checkpoint,
        loaded.config.d,
        settings.encoder_mode,
        device,
        time.perf_counter() - t0,
    )


@worker_ready.connect
def _announce_ready(**_: Any) -> None:
    """In the worker's main process, once its pool (models loaded) consumes: `run` waits for this."""
    from comix_embed.common.results_channel import connect
    from comix_embed.consumers.settings import READY_NAME_ENV, ready_key

    name = os.environ.get(READY_NAME_ENV)
    if name:
        connect(app.conf.broker_url).set(ready_key(name), time.time(), ex=24 * 3600)


@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    if _state.get("embedder") is not None:
        _state["embedder"].close()


def _embedder(task_roots: list[str]):
    """This process's Embedder; with no --image-root of its own, the producer's roots."""
    if _state.get("embedder") is None:
        log.info("no --image-root on this worker: using the producer's %s", task_roots)
        _state["embedder"] = _state["make"]([Path(r) for r in task_roots])
    return _state["embedder"]


ATTEMPTS_KEY = "comix:attempts:{store}:{batch}"  # deliveries of a batch that reached a worker
EMBEDDING_KEY = "comix:embedding:{store}:{row}"  # set while a page is decoded alone
CRASHED_PAGE = (
    "the worker process died while embedding this page (a crash in a decoder, or out of memory); "
    "recorded as failed so that the rest of its batch goes on"
)


@app.task(name="comix.embed_batch", bind=True)
def embed_batch(self, payload: dict[str, Any]) -> dict[str, Any]:
    """Embed the pages of one batch and push the packed result for the writer.

    A batch delivered again after its worker process died has its pages read and decoded one by
    one, each marked in Redis meanwhile: a page whose mark outlives another death fails alone on
    the next delivery, instead of killing workers forever.
    """
    from comix_embed.common.pages import PageTask
    from comix_embed.common.results_channel import ResultsFull, connect, push

    started = time.monotonic()
    client = _state.get("redis")
    if client is None:
        client = _state["redis"] = connect(app.conf.broker_url)
    store, batch_id = payload["store_id"], payload["batch_id"]
    attempts_key = ATTEMPTS_KEY.format(store=store, batch=batch_id)
    attempt = client.incr(attempts_key)
    client.expire(attempts_key, 4 * config.VISIBILITY_TIMEOUT)
    tasks = [PageTask.from_json(p) for p in payload["pages"]]
    embedder = _embedder(payload.get("image_roots", []))
    guard = None
    if attempt > 1:
        log.warning("batch %d delivered again (attempt %d): decoding its pages one by one", batch_id, attempt)
        guard = _crash_guard(client, store)
    result = embedder.embed_batch(payload["job"], batch_id, tasks, guard)
    blob = result.to_bytes()
    budget = config.TASK_SOFT_TIME_LIMIT - (time.monotonic() - started) - 30
    try:
        push(client, store, batch_id, blob, config.MAX_PENDING_RESULTS, max(budget, 1))
    except ResultsFull as exc:
        log.warning("batch %d given back to the queue: %s", batch_id, exc)
        raise Reject(str(exc), requeue=True) from exc
    status = result.arrays["status"]
    return {
        "batch_id": batch_id,
        "attempt": attempt,
        "pages": len(tasks),
        "failed": int((status == 2).sum()),
        "seconds": round(time.monotonic() - started, 3),
        "stages": {k: round(v, 3) for k, v in result.timings.items()},
        "bytes": len(blob),
    }


def _crash_guard(client, store: str):
    """Wraps the reading and decoding of each page: marked in Redis while it runs; a page still
    marked from a worker that died fails alone. Encoding is unchanged, so the numbers are too."""

    def guard(task):
        key = EMBEDDING_KEY.format(store=store, row=task.row)

        def run(prepare):
            def call(t):
                if client.exists(key):
                    log.error(
                        "page %s (row %d) was being decoded when a worker died: recorded as failed", t.page_id, t.row
                    )
                    return CRASHED_PAGE
                client.set(key, os.getpid(), ex=4 * config.VISIBILITY_TIMEOUT)
                out = prepare(t)
                client.delete(key)
                return out

            return call

        return run

    return guard
