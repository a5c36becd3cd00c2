"""`comix-embed` in the tests: a command run as a user runs it, and `run` or `enqueue` arguments for a corpus.

A corpus is a folder as `comix-embed sample` writes it (tools/sample/corpus.py): `list.txt`, whose
lines are relative to the folder, the DataSpecs under `dataspecs/` and the images under `images/`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from comix_embed.common.child import cli_argv


def run_cli(*argv: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`comix-embed ARGV...` in a child process, as a user would run it."""
    return subprocess.run(
        cli_argv(*argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _job_args(
    command: str, checkpoint: Path, corpus: Path, out: Path, listfile: Path | None, batch_size: int
) -> list[str]:
    """What `run` and `enqueue` take alike: the model, where the pages come from (the corpus's
    `list.txt`, or `listfile`, whose lines are relative to the corpus too; the corpus as DataSpec
    root; its images), the output folder and the batch size."""
    return [
        *(command, "--checkpoint", str(checkpoint)),
        *("--list", str(listfile or corpus / "list.txt"), "--dataspec-root", str(corpus)),
        *("--image-root", str(corpus / "images"), "--output-dir", str(out), "--batch-size", str(batch_size)),
    ]


def run_args(
    checkpoint: Path,
    corpus: Path,
    out: Path,
    *extra: str,
    listfile: Path | None = None,
    batch_size: int = 4,
    workers: int | None = None,
) -> list[str]:
    """`run` of a corpus into `out`, then `extra`; without `workers`, `run` starts its default number."""
    argv = _job_args("run", checkpoint, corpus, out, listfile, batch_size)
    return [*argv, *(("--workers", str(workers)) if workers is not None else ()), *extra]


def enqueue_args(
    checkpoint: Path,
    corpus: Path,
    out: Path,
    broker: str,
    *extra: str,
    listfile: Path | None = None,
    batch_size: int = 4,
) -> list[str]:
    """`enqueue` of a corpus into `out` over `broker`, then `extra`."""
    return [*_job_args("enqueue", checkpoint, corpus, out, listfile, batch_size), "--broker", broker, *extra]
