"""The read commands' view of a generate_embeddings_zarr_v2 store: a copy converted into ours, made once, kept in a cache.

`summaries`, `diagnose`, `query`, `index` and `serve` read a store through what only ours has
(statuses, text as JSON, manifests, job files, the index beside it), so a v2 store given to them
is read through its import (writer/import_v2/command.py) into `COMIX_V2_CACHE`, without a
checkpoint. The v2 store itself is only read. The copy is made again when the v2 store changes
(its fingerprint), and a copy interrupted part-way is finished by the next command.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

from comix_embed.common import config
from comix_embed.common.messages import convert
from comix_embed.common.store.reading import read_attrs
from comix_embed.common.store.schema import store_path
from comix_embed.common.store.v2 import GENERATOR, IMPORT_ATTRIBUTE, V2Import, find_v2_store
from comix_embed.writer.import_v2.command import import_v2
from comix_embed.writer.import_v2.reader import V2Reader


def readable(given: str) -> str:
    """`given` as a read command opens it: our store as it is, a v2 store as its converted copy."""
    found = find_v2_store(given)
    if found is None:
        return given
    folder = Path(config.V2_CACHE.get()).expanduser() / hashlib.sha256(str(found.resolve()).encode()).hexdigest()[:16]
    fingerprint = V2Reader(found).fingerprint()
    store = store_path(folder)
    if store.exists():
        raw = read_attrs(store).get(IMPORT_ATTRIBUTE)
        record = convert(raw, V2Import, f"{store}: {IMPORT_ATTRIBUTE}") if raw is not None else None
        if record is not None and record.fingerprint == fingerprint and record.finished:
            _say(found, folder, "")
            return str(folder)
        if record is None or record.fingerprint != fingerprint:
            shutil.rmtree(folder)  # a copy of the store as it was: made again
    _say(found, folder, " (converting it now, once; again only when it changes)")
    import_v2(found, folder, None, progress=sys.stderr.isatty())
    return str(folder)


def _say(found: Path, folder: Path, doing: str) -> None:
    print(
        f"note: {found} is a {GENERATOR} store: read through its converted copy in {folder}{doing}. "
        "Its statuses are derived from its embeddings; it has no checkpoint identity and no manifests of its own",
        file=sys.stderr,
    )
