"""The workers (consumers): Celery processes that embed the batches they take, one per device."""
