"""Commit results read from files: a StoreWriter without a broker, for tests and benchmarks.

    python -m tests.replay OUTPUT_DIR PLAN.json

PLAN.json is `{"calls": [[result_file, ...], ...]}`: each inner list is one `commit` call of
results serialised with `BatchResult.to_bytes`. It prints `ready` once the writer has opened
(and recovered), `commit N` before the N-th call, and `done` at the end, so that a test can choose
the call during which its kill lands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from comix_embed.common.store.results import BatchResult
from comix_embed.writer.commit import StoreWriter


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    output_dir, plan_path = Path(args[0]), Path(args[1])
    with open(plan_path, encoding="utf-8") as fh:
        calls = json.load(fh)["calls"]
    with StoreWriter(output_dir, verify_batches=True) as writer:
        print("ready", flush=True)
        for n, files in enumerate(calls):
            print(f"commit {n}", flush=True)
            writer.commit([BatchResult.from_bytes(Path(f).read_bytes()) for f in files])
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
