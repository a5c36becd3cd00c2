"""The leftovers check: what a killed process leaves in a store, and whether a writer will clear it.

Temporary files (zarr's `*.partial`, our `.*.tmp`, a `.<store>.creating` folder), manifests
moved aside as `.corrupt`, batches `inflight.json` names that never got a manifest. While a
writer runs these exist for an instant (WARN); with no writer running a temporary file is
something a crash left that nobody cleaned: FAIL. An `inflight.json` that cannot be read is a
FAIL too: a writer's recovery reads it before anything else.
"""

from __future__ import annotations

import os
from pathlib import Path

from comix_embed.common import config
from comix_embed.common.store.manifests import inflight_record, is_temporary
from comix_embed.tools.diagnose.load import Store
from comix_embed.tools.diagnose.report import Check, listed


def check_leftovers(s: Store) -> Check:
    check = Check("leftovers")
    temps = temporary_files(s.path)
    creating = s.path.with_name(f".{s.path.name}.creating")
    if creating.exists():
        temps.append(str(creating))
    if temps:
        problem = f"temporary files {listed(temps)}"
        if s.writer_running:
            check.warns.append(problem + " (a writer is running: may be its writes in progress)")
        else:
            check.fails.append(
                problem + " left by a killed process; no writer is running (a writer's start removes them)"
            )
    folder = s.path / config.MANIFEST_GROUP
    corrupt = sorted(p.name for p in folder.glob("*.corrupt")) if folder.is_dir() else []
    if corrupt:
        check.warns.append(f"manifests moved aside as unreadable: {listed(corrupt)} (their batches were owed again)")
    batches, unreadable = inflight_record(s.path)
    if unreadable:
        check.warns.append(f"{unreadable}; a writer's recovery takes it as naming no batch")
    pending = [b for b, _, _ in batches if b not in s.manifests]
    if pending:
        problem = f"inflight.json names batches {listed(pending)} without manifest"
        if s.writer_running:
            check.notes.append(problem + " (being written)")
        else:
            check.warns.append(problem + ": a writer was killed writing them; its next start clears their rows")
    if not check.fails and not check.warns:
        check.notes.insert(0, "no temporary files")
    return check


def temporary_files(store: Path) -> list[str]:
    """Files a writer's recovery would delete (common.manifests.is_temporary)."""
    found = []
    for folder, _, files in os.walk(store):
        found += [os.path.relpath(os.path.join(folder, n), store) for n in files if is_temporary(n)]
    return sorted(found)
