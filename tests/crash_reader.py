"""Reader process for the crash test: polls the store while a writer is killed again and again.

    python tests/crash_reader.py STORE RESULTS_DIR REPORT.json STOP_FILE

Every poll reads `committed_rows`, opens the committed rows with `open_committed`, and compares
them with the results the writer was fed. It records a violation when `committed_rows` goes down,
is not at a batch boundary, or when any committed row differs from its batch (a partial batch, a
row that changed). Any warning is an error. Once STOP_FILE appears it polls one last time (the
final state) and writes its report.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from comix_embed.common.store.reading import open_committed, read_committed_rows
from comix_embed.common.store.results import BatchResult

CHECKED = ("page_embeddings", "panel_embeddings", "status", "text_content", "panel_mask")


def main() -> int:
    warnings.simplefilter("error")  # a warning while the writer works counts as an error
    store, results_dir, report, stop = (Path(a) for a in sys.argv[1:5])
    found = sorted((BatchResult.from_bytes(f.read_bytes()) for f in results_dir.glob("*.bin")), key=lambda r: r.start)
    ends = {0} | {r.end for r in found}
    page_ids = [pid for r in found for pid in r.page_ids]
    expected = {name: np.concatenate([r.arrays[name] for r in found]) for name in CHECKED}
    polls, last, violations, errors = 0, 0, [], []
    final = False
    while not final:
        final = stop.exists()
        if not (store / "zarr.json").exists():
            time.sleep(0.005)
            continue
        try:
            before = read_committed_rows(store)
            ds = open_committed(store)
            committed = ds.attrs["committed_rows"]
            if ds.sizes["page_id"] != committed or committed < before:
                violations.append(
                    f"open_committed gave {ds.sizes['page_id']} rows, committed_rows {before}, {committed}"
                )
            if committed < last:
                violations.append(f"committed_rows went down: {last} -> {committed}")
            if committed not in ends:
                violations.append(f"committed_rows {committed} is not at a batch boundary")
            last = max(last, committed)
            if ds["page_id"].values.tolist() != page_ids[:committed]:
                violations.append(f"poll {polls}: page ids differ (committed_rows {committed})")
            for name in CHECKED:
                got, want = ds[name].values, expected[name][:committed]
                same = got.tolist() == want.tolist() if want.dtype.kind in "OUT" else got.tobytes() == want.tobytes()
                if not same:
                    violations.append(f"poll {polls}: {name} differs (committed_rows {committed})")
        except Exception as exc:  # a reader must never fail on a consistent store
            errors.append(f"{type(exc).__name__}: {exc}")
        polls += 1
    Path(report).write_text(
        json.dumps({"polls": polls, "last": last, "violations": violations[:50], "errors": errors[:50]})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
