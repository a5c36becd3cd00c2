"""The store as every role reads it: its schema, its readers, the job files, manifests and retries.

`from comix_embed.common.store import open_committed` is the users' way in (the README's reader
example): the committed rows as an xarray Dataset.
"""

from comix_embed.common.store.reading import open_committed, read_committed_rows, resolve_store

__all__ = ["open_committed", "read_committed_rows", "resolve_store"]
