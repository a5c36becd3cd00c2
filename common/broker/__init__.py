"""The broker as every role sees it: the Celery app, the Redis keys, deliveries, the results stream."""
