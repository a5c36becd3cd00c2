"""`comix-embed run` as users call it: incremental jobs, refusals, usage errors."""

from __future__ import annotations

from pathlib import Path

from comix_embed.common.errors import EXIT_USAGE
from comix_embed.common.store.reading import open_committed
from comix_embed.common.store.schema import store_path
from comix_embed.tools.init_checkpoint import init_checkpoint
from comix_embed.tools.sample.corpus import make_sample
from tests.cli import run_args, run_cli


def _run(ckpt: Path, corpus: Path, out: Path, listfile: Path, *extra: str):
    return run_cli(*run_args(ckpt, corpus, out, *extra, listfile=listfile))


def test_incremental_append_skips_stored_pages_and_refuses_another_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    make_sample(corpus, pages=12, seed=2)
    lines = (corpus / "list.txt").read_text().splitlines()
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("\n".join(lines[:8]) + "\n")
    second.write_text("\n".join(lines[5:]) + "\n")  # 3 pages already stored, 4 new

    missing = _run(tiny_checkpoint, corpus, out, second, "--incremental")
    assert missing.returncode == EXIT_USAGE  # a UsageError, mapped by the command line
    assert "error: Incremental mode requested but Zarr not found" in missing.stderr, missing.stderr

    done = _run(tiny_checkpoint, corpus, out, first)
    assert done.returncode == 0, done.stdout + done.stderr
    refused = _run(tiny_checkpoint, corpus, out, second)
    assert refused.returncode == 2 and "--incremental" in refused.stderr

    appended = _run(tiny_checkpoint, corpus, out, second, "--incremental")
    assert appended.returncode == 0, appended.stdout + appended.stderr
    assert "pages skipped (not embedded again): 3" in appended.stdout
    ds = open_committed(store_path(out))
    expected = [ln.replace("\\", "/") for ln in lines]
    assert ds.page_id.values.tolist() == expected
    assert ds.attrs["committed_rows"] == 12

    other = tmp_path / "other.pt"
    init_checkpoint(other, size="tiny", seed=7)
    third = tmp_path / "third.txt"
    third.write_text(lines[0] + "\n")
    mixed = _run(other, corpus, out, third, "--incremental")
    assert mixed.returncode == 2 and "one model per store" in mixed.stderr


def test_empty_list_is_a_usage_error_and_creates_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    empty = tmp_path / "list.txt"
    empty.write_text("\r\n# nothing here\r\n")
    proc = _run(tiny_checkpoint, tmp_path, tmp_path / "out", empty)
    assert proc.returncode == EXIT_USAGE and "No pages to process" in proc.stderr
    assert not (tmp_path / "out").exists()
