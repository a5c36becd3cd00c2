"""The Celery task a GPU worker runs: embed one batch, hand its arrays to the writer.

The model is loaded once per pool process, when the process starts (`worker_process_init`),
never in the Celery parent. Each delivery holds a batch lease it renews while it works
(common/broker/batch_lease.py; not the writer lease). A batch's result goes to the bounded
results stream; when the writer is far behind, the task waits, and if it would outlive its soft
time limit it gives the batch back (sent again ahead of new batches; not an attempt) rather than
fail it. A batch that lost a delivery before (a crash) is embedded page by page, each page under
a mark its delivery owns.
The worker's main process handles the deliveries its pool processes could not end: a process
that died or hit its time limit (lost), or a shutdown (given back). SIGTERM is a warm shutdown
bounded by COMIX_WORKER_SHUTDOWN_S, after which, or at a second signal, it turns cold.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from billiard.exceptions import WorkerLostError
from celery.exceptions import Reject, TimeLimitExceeded
from celery.signals import (
    task_failure,
    task_received,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)

from comix_embed.common import config, failpoint
from comix_embed.common.broker import keys
from comix_embed.common.celery_app import app

if TYPE_CHECKING:  # for the hints only: this module imports them where they are used
    from comix_embed.common.broker.batch_lease import BatchLease
    from comix_embed.common.inputs.pages import PageTask

log = logging.getLogger(__name__)
_state: dict[str, Any] = {}


@contextmanager
def _guarded(held: BatchLease, task: PageTask, stage: str) -> Iterator[None]:
    """A page embedded alone, under its delivery's mark (a fault test may stop the process here)."""
    with held.page(task.row, task.page_id, stage):
        failpoint.stop_here(stage)
        yield


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    """Build this process's Embedder (torch is imported here, after the fork)."""
    import torch

    from comix_embed.common.inputs.paths import ImageResolver
    from comix_embed.common.model.checkpoint import load_model
    from comix_embed.common.model.embed import Embedder, EmbedSettings, resolve_device
    from comix_embed.common.model.identity import describe, make_identity, model_key
    from comix_embed.common.model.tokenizer import load_tokenizer
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
    identity = make_identity(
        loaded.sha256, loaded.config.d, settings.encoder_mode, tokenizer.identity, tokenizer.legacy_identity
    )
    if settings.model_key and model_key(identity) != settings.model_key:
        raise RuntimeError(
            f"this process loaded {describe(identity)}, key {model_key(identity)}, but its worker consumes "
            f"the queue of model key {settings.model_key}: refusing to embed another model's batches"
        )
    _state["identity"] = identity
    _state["roots"] = settings.roots()
    _state["make"] = lambda roots: Embedder(loaded, tokenizer, ImageResolver(roots), device, embed_settings)
    _state["embedder"] = _state["make"](_state["roots"] or ["."])
    _state["embedder"].warm_up()
    name = config.WORKER_NAME.get()
    if name:  # the main process resumes taking batches once a replaced pool process gets here
        _client().set(_pool_ready_key(name), time.time(), ex=24 * 3600)
    if not _state["roots"]:
        _state["embedder"] = None  # made with the producer's roots at the first task
    log.info(
        "pid %d: model %s loaded on %s in %.1f s: %s",
        os.getpid(),
        settings.checkpoint,
        device,
        time.perf_counter() - t0,
        describe(identity),
    )


@worker_ready.connect
def _announce_ready(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, once its pool (models loaded) consumes: `run` waits for this."""
    from comix_embed.common.broker.connection import connect
    from comix_embed.consumers.settings import ready_key

    _state["consumer"] = sender  # to stop taking batches while a new pool process loads the model
    name = config.WORKER_NAME.get()
    if name:
        connect(app.conf.broker_url).set(ready_key(name), time.time(), ex=24 * 3600)


def _pool_ready_key(name: str) -> str:
    return keys.POOL_READY.format(name=name)


def _pause_until_pool_ready(queue: str) -> None:
    """In the main process, once its pool process died: take no batch until the new one has loaded
    its model. Otherwise this worker would take the batch just sent again (ahead of new ones) and
    hold it while the model loads, and the other workers would commit past it meanwhile."""
    consumer = _state.get("consumer")
    name = config.WORKER_NAME.get()
    if consumer is None or not name or not queue:
        return
    consumer.cancel_task_queue(queue)
    since = time.time()

    def resume() -> None:
        deadline = time.monotonic() + 600  # worker_proc_alive_timeout: a pool process is up by then
        client = _client()
        while time.monotonic() < deadline:
            ready = client.get(_pool_ready_key(name))
            if ready and float(ready) > since:
                break
            time.sleep(0.05)
        app.control.add_consumer(queue, destination=[name], reply=False)  # handled by the main loop
        log.info("pool process ready again: consuming %s", queue)

    threading.Thread(target=resume, name="resume", daemon=True).start()


@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    if _state.get("embedder") is not None:
        _state["embedder"].close()


def _embedder(task_roots: list[str]):
    """This process's Embedder; with no --image-root of its own, the producer's roots."""
    if _state.get("embedder") is None:
        log.info("no --image-root on this worker: using the producer's %s", task_roots)
        _state["embedder"] = _state["make"](task_roots)
    return _state["embedder"]


def _client():
    from comix_embed.common.broker.connection import connect

    if _state.get("redis") is None:
        _state["redis"] = connect(app.conf.broker_url)
    return _state["redis"]


@app.task(name=keys.EMBED_BATCH_TASK, bind=True)
def embed_batch(self, payload: dict[str, Any]) -> dict[str, Any]:
    """Embed the pages of one batch and push the packed result for the writer."""
    from comix_embed.common.broker import batch_lease, deliveries
    from comix_embed.common.broker.results_stream import ResultsFull, push
    from comix_embed.common.messages import MalformedMessage, decode_task
    from comix_embed.common.model.identity import ModelMismatch, check_same_model

    started = time.monotonic()
    client = _client()
    try:
        task = decode_task(payload)
    except MalformedMessage as exc:  # refused here, once; nothing can embed it
        log.error("task %s refused: %s", self.request.id, exc)
        raise Reject(str(exc), requeue=False) from None
    store, batch_id = task.store_id, task.batch_id
    queue = (self.request.delivery_info or {}).get("routing_key") or ""
    held = _take_batch_lease(client, task, queue, self.request.id)
    failpoint.stop_here("batch")
    try:
        if task.model is not None:
            check_same_model(task.model, _state["identity"], what="worker", whose="job")
        rows = [p.row for p in task.pages]
        for row, reason in deliveries.crashed_pages(client, store, rows).items():
            page = task.pages[rows.index(row)]
            page.spec, page.error = None, reason
        lost = deliveries.lost_count(client, store, batch_id)
        guard = None
        if lost:
            log.warning(
                "batch %d lost %d earlier deliveries (a worker died on it): embedding its pages one by one",
                batch_id,
                lost,
            )
            guard = partial(_guarded, held)
        result = _embedder(task.image_roots).embed_batch(task.job, batch_id, task.pages, guard)
        blob = result.to_bytes()
        budget = config.TASK_SOFT_TIME_LIMIT - (time.monotonic() - started) - 30
        try:
            push(client, store, batch_id, blob, config.pending_bound(len(task.pages)), max(budget, 1))
        except ResultsFull as exc:
            if held.end():
                deliveries.send(client, task, queue, config.PRIORITY_AGAIN)
            log.warning("batch %d given back (sent again ahead of new batches): %s", batch_id, exc)
            return {"batch_id": batch_id, "given_back": str(exc)}
    except Exception as exc:
        if isinstance(exc, ModelMismatch):
            count = deliveries.refuse(client, store, batch_id, str(exc), {"worker": batch_lease.holder_name()})
            held.end()
            log.error("batch %d refused (%d of %d): %s", batch_id, count, config.MAX_ATTEMPTS, exc)
            raise Reject(str(exc), requeue=False) from None
        info = batch_lease.claim(client, held.info.token)
        held.end()
        if info is not None:
            log.error(deliveries.lost(client, store, info, batch_id, f"{type(exc).__name__}: {exc}", task))
        raise
    held.end()
    status = result.arrays["status"]
    return {
        "batch_id": batch_id,
        "pages": len(task.pages),
        "failed": int((status == 2).sum()),
        "seconds": round(time.monotonic() - started, 3),
        "stages": {k: round(v, 3) for k, v in result.timings.items()},
        "bytes": len(blob),
    }


def _take_batch_lease(client, task, queue: str, task_id: str):
    """The delivery's batch lease. While Redis refuses writes for lack of memory the batch is held
    here, saying why, not failed: giving it back would need a write too, and failing it would drop it."""
    import redis

    from comix_embed.common.broker.batch_lease import BatchLease
    from comix_embed.common.broker.redis_memory import describe_limit, is_out_of_memory

    said = False
    while True:
        try:
            return BatchLease.take(client, task, queue, task_id)
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            if not said:
                log.warning("batch %d waits before it starts: %s", task.batch_id, describe_limit(client))
                said = True
            time.sleep(1.0)


def _my_batch_leases(task_id: str | None = None) -> list:
    """Batch leases held by this worker's processes (of one task), from the worker's main process."""
    from comix_embed.common.broker import batch_lease

    me = batch_lease.holder_name()
    return [
        info
        for info in batch_lease.batch_leases(_client())
        if info.holder == me and (task_id is None or info.task_id == task_id)
    ]


@task_failure.connect
def _delivery_lost(sender=None, task_id: str | None = None, exception=None, args=None, **_: Any) -> None:
    """In the main process: a pool process died (or was killed at its time limit) holding a batch.
    The delivery is lost: counted, and the batch sent again at once, ahead of new batches. While
    the worker shuts down (a signal to its process group kills the pool too), it is given back."""
    from celery.worker import state

    from comix_embed.common.broker import batch_lease, deliveries
    from comix_embed.common.messages import MalformedMessage, decode_task
    from comix_embed.common.model.identity import queue_name

    if not isinstance(exception, WorkerLostError | TimeLimitExceeded):
        return
    try:
        task = decode_task(args[0])
    except (MalformedMessage, IndexError, TypeError):
        return
    client = _client()
    ended = [info for info in _my_batch_leases(task_id) if batch_lease.claim(client, info.token)]
    if state.should_stop is not None or state.should_terminate is not None:
        for info in ended:
            _send_back(client, info, task)
        return
    if not ended and any(i.task_id == task_id for i in batch_lease.batch_leases(client, task.store_id)):
        return  # another process of this worker still holds it
    why = f"{type(exception).__name__}: {exception}"
    log.error(deliveries.lost(client, task.store_id, ended[0] if ended else None, task.batch_id, why, task))
    if ended:
        _pause_until_pool_ready(ended[0].queue)
    elif task.model is not None:
        _pause_until_pool_ready(queue_name(task.model))


_received: dict[str, Any] = {}  # in the main process: the payloads of the latest tasks received


@task_received.connect
def _remember(request=None, **_: Any) -> None:
    """In the main process: keep what it hands its pool, so that a shutdown can give it back
    (Celery cancels the running requests before it says it is shutting down)."""
    _received[request.id] = request.args
    while len(_received) > 64:  # a worker reserves one batch per process: a few are enough
        _received.pop(next(iter(_received)))


@worker_shutting_down.connect
def _shutting_down(how: str = "", **_: Any) -> None:
    """In the main process. A warm shutdown (SIGTERM) takes no new batch and lets the batch at hand
    finish, for at most WORKER_SHUTDOWN_S; then, or at a second SIGTERM, the worker gives the batch
    back and turns cold (SIGQUIT to itself, as Celery's own second Ctrl+C does). A cold shutdown
    gives the batches its pool processes hold back at once."""
    if how == "Cold":
        _give_back()
    elif how == "Warm" and "warm_since" in _state:
        _go_cold("a second signal")
    elif how == "Warm":
        _state["warm_since"] = time.monotonic()
        log.warning(
            "warm shutdown: no new batch; the batch at hand has %g s to finish, then (or at a second signal) "
            "it is given back",
            config.WORKER_SHUTDOWN_S,
        )
        timer = threading.Timer(config.WORKER_SHUTDOWN_S, _go_cold, (f"{config.WORKER_SHUTDOWN_S:g} s passed",))
        timer.daemon = True
        timer.start()


def _go_cold(why: str) -> None:
    """Give the batch at hand back first (Celery's cold shutdown may wait on a process stuck in
    it), then start Celery's cold shutdown, which stops the pool process."""
    log.warning("cold shutdown (%s): the batch at hand is given back", why)
    _give_back()
    os.kill(os.getpid(), signal.SIGQUIT)


def _give_back() -> None:
    """The batches this worker's pool processes hold are sent again ahead of new ones, and their
    batch leases ended, as given back (not lost, not an attempt)."""
    from comix_embed.common.broker import batch_lease
    from comix_embed.common.messages import MalformedMessage, decode_task

    client = _client()
    for info in _my_batch_leases():
        if info.task_id not in _received or batch_lease.claim(client, info.token) is None:
            continue
        try:
            task = decode_task(_received[info.task_id][0])
        except (MalformedMessage, IndexError, TypeError):
            continue
        _send_back(client, info, task)


def _send_back(client, info, task) -> None:
    """A batch given back by a worker that stops: sent again ahead of new ones, its page mark
    dropped (the page did not crash anything), no attempt counted."""
    from comix_embed.common.broker import batch_lease, deliveries

    batch_lease.drop_page_mark(client, info.store, info.token)
    deliveries.send(client, task, info.queue, config.PRIORITY_AGAIN)
    log.warning("batch %d given back on shutdown (sent again ahead of new batches)", info.batch)
