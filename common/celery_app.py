"""The one Celery app every process loads: producer, workers, Flower.

Flower and any `celery` command take it as `celery -A comix_embed.common.celery_app`.

Settings give at-least-once delivery over Redis: late acknowledgement, one task reserved per
process, a hard time limit below the visibility timeout so a task never outlives its delivery, JSON
only (no pickle is accepted: whoever can write to Redis would run code on every worker), and task
events on so Flower sees every task. The broker URL comes from $COMIX_BROKER_URL (the commands' `--broker`
sets it); credentials belong in that URL, never in code.

A batch whose worker process died is not re-queued by Celery (`task_reject_on_worker_lost` off:
Kombu would push it to the back of its queue, behind every new batch, and the readable prefix
would stall for the whole job). The worker's main process sends it again itself, ahead of new
batches, and counts the loss (common/broker/deliveries.py). Batches travel on one queue per model
identity, chosen when they are sent; two priority steps keep work given back first.
"""

from __future__ import annotations

import kombu
from celery import Celery

from comix_embed.common import config
from comix_embed.common.broker.connection import transport_options

# `accept_content` covers what the app's consumers decode; kombu's registry still holds a pickle
# decoder for any path that decodes without an accept list. Every process that loads this app
# refuses pickle (and YAML, msgpack) outright: JSON is the only content Celery carries here.
kombu.disable_insecure_serializers(allowed=["json"])

app = Celery("comix", include=["comix_embed.consumers.tasks"])
app.conf.update(
    broker_url=config.broker_url(),
    broker_transport_options={
        **transport_options(),
        "visibility_timeout": config.VISIBILITY_TIMEOUT,
        "health_check_interval": 25,
        "retry_on_timeout": True,
        "priority_steps": config.PRIORITY_STEPS,
    },
    visibility_timeout=config.VISIBILITY_TIMEOUT,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    result_accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=False,
    task_acks_on_failure_or_timeout=True,
    task_time_limit=config.TASK_TIME_LIMIT,
    task_soft_time_limit=config.TASK_SOFT_TIME_LIMIT,
    task_default_queue=config.EMBED_QUEUE,
    task_default_priority=config.PRIORITY_NEW,
    worker_prefetch_multiplier=1,
    worker_concurrency=1,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    # the model loads in each pool process at start; give it time (default is 4 s)
    worker_proc_alive_timeout=600,
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_track_started=True,
    worker_hijack_root_logger=False,
)


def configure(broker: str | None) -> Celery:
    """Point the app at `broker` (or the environment's) before anything connects; a URL that
    cannot work (a sentinel:// one without COMIX_BROKER_MASTER_NAME) is a UsageError here."""
    app.conf.broker_url = config.broker_url(broker)
    config.check_broker(app.conf.broker_url)
    app.conf.broker_transport_options.update(transport_options())
    return app
