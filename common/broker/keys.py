"""Every Redis key the system uses and the Celery task's name, declared once.

Patterns take `.format(store=..., token=..., name=...)`. The strings are what deployments already
hold in Redis and what the README names: they stay as they are, even where the Python name says
more (`comix:leases` holds the batch leases, never the writer lease).

Two leases live in Redis, never to be confused:
- a **batch lease**: the one a worker process holds on one delivery of a batch while it embeds it
  (common/broker/batch_lease.py), renewed every COMIX_LEASE_TTL_S / 6 s;
- the **writer lease**: the one the store's single writer holds (common/broker/writer_lease.py,
  writer/lease.py), with its fencing token.
"""

from __future__ import annotations

# The Celery task a worker runs on one batch (consumers/tasks.py); the producer sends it by name.
EMBED_BATCH_TASK = "comix.embed_batch"

# --- batch leases and deliveries (common/broker/deliveries.py), every store ---
BATCH_LEASES = "comix:leases"  # zset: delivery token -> batch lease expiry (unix seconds)
BATCH_LEASE_INFO = "comix:lease-info"  # hash: delivery token -> BatchLeaseInfo (JSON)

# --- deliveries, per store ---
PAGE_MARK = "comix:page-in-progress:{store}:{token}"  # PageMark (JSON): the page a guarded delivery is embedding
LOST = "comix:lost:{store}"  # hash: batch -> deliveries lost (its worker died, time limit, batch lease expired)
CRASHED = "comix:crashed:{store}"  # hash: row -> why the page fails alone (it killed its delivery)
GIVEN_UP = "comix:given-up:{store}"  # hash: batch -> GivenUp (JSON); the writer commits failed rows
REFUSED = "comix:refused:{store}"  # stream: results set aside, with their reason (Refusal fields)
REFUSALS = "comix:refusals:{store}"  # hash: batch -> results of it refused
REFUSAL_REASON = "comix:refusal-reason:{store}"  # hash: batch -> the last reason
SENT = "comix:sent:{store}"  # hash: batch -> when last sent, unix seconds (enqueue skips recently sent ones)

# --- results (common/broker/results_stream.py) ---
RESULTS = "comix:results:{store}"  # stream: packed batch results, read by the writer's consumer group

# --- the writer lease (common/broker/writer_lease.py) ---
WRITER_LEASE = "comix:writer-lease:{store}"  # WriterLeaseHolder (JSON), with the lease's TTL
WRITER_TOKEN = "comix:writer-token:{store}"  # the latest fencing token issued

# --- workers' readiness (consumers/tasks.py) ---
READY = "comix:ready:{name}"  # a worker's node name -> when its pool had loaded the model (`run` waits)
POOL_READY = "comix:pool-ready:{name}"  # a worker's node name -> when a replaced pool process loaded it
