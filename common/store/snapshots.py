"""The pointer to a store's newest snapshot, which readers follow (docs/store.md, "Snapshots").

`comix-embed snapshot` writes `latest.json` at the top of its destination, last, once the snapshot
it names is complete; every read command given that destination opens the store it names, so a
reader sees one complete snapshot or the next, never a mix.
"""

from __future__ import annotations

import msgspec

POINTER_NAME = "latest.json"
# The root attribute that makes a store a snapshot: `{"committed_rows": N, "taken": ISO time}`. Its
# arrays end at row N, where a job it caught mid-way goes on (`diagnose` checks the rows it holds).
SNAPSHOT_ATTRIBUTE = "snapshot"


class Pointer(msgspec.Struct, kw_only=True):
    """`latest.json`: the newest complete snapshot (`path`, below the destination, ends with `/`)."""

    snapshot: str
    path: str
    committed_rows: int
    created: str
