"""comix_embed: comic-page embeddings through Celery and Redis into a crash-safe Zarr store.

This package's own modules sit above the roles: the `comix-embed` command line, `run` (a private
Redis, the workers and the writer on one machine), and `demo`. The roles and the tools are its
sub-packages `common`, `producer`, `consumers`, `writer` and `tools`: folders at the top of the
repository, each linked from here (ARCHITECTURE.md).
"""
