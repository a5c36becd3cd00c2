"""`comix-embed diagnose` on stores made by the pipeline, clean and deliberately damaged copies.

The session's stores are never touched: each damage is done to a copy in tmp_path.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from comix_embed.cli import main
from comix_embed.common.store.manifests import INFLIGHT_NAME, manifest_dir, manifest_file
from comix_embed.common.store.schema import store_path
from tests.cli import run_cli
from tests.typed import StoreArrays


def diagnose(capsys: pytest.CaptureFixture[str], target: Path) -> tuple[int, dict[str, str], str]:
    """Exit status, each check's line by check name, and the verdict line."""
    code = main(["diagnose", str(target)])
    lines = capsys.readouterr().out.splitlines()
    checks = {line.split()[1]: line for line in lines[1:-1]}
    return code, checks, lines[-1]


def copy_of(output_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(output_dir, copy)
    return copy


def tree_digest(folder: Path) -> str:
    """Names and contents of every file below `folder`: equal digests, nothing was written."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_store_with_failed_pages_is_clean(pipeline_store: Path) -> None:
    proc = run_cli("diagnose", str(pipeline_store))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "19 of 19 registered rows committed" in lines[0]
    assert lines[-1].startswith("verdict: OK")
    assert all(line.startswith("OK") for line in lines[1:-1]), proc.stdout
    assert "'failed': 3" in proc.stdout


def test_interrupted_store_is_clean_and_waiting(interrupted_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks, verdict = diagnose(capsys, interrupted_store)
    assert code == 0, checks
    assert verdict.startswith("verdict: OK")
    assert checks["manifests"].startswith("OK")
    assert "3 (rows 12-15) committed out of order, waiting for batch 2" in checks["manifests"]


def test_deleted_manifest_inside_committed_prefix(pipeline_store: Path, tmp_path: Path) -> None:
    out = copy_of(pipeline_store, tmp_path)
    manifest_file(store_path(out), 1).unlink()
    proc = run_cli("diagnose", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.split()[1:2] == ["manifests"])
    assert line.startswith("FAIL") and "batch 1 (rows 4-7) has no manifest" in line
    assert proc.stdout.splitlines()[-1].startswith("verdict: FAIL")


def test_changed_row_is_named(pipeline_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = copy_of(pipeline_store, tmp_path)
    arr = StoreArrays(store_path(out), mode="r+")["page_embeddings"]
    arr[5] = arr[5] * 2.0  # plausible values, but not those committed
    code, checks, _ = diagnose(capsys, out)
    assert code == 1
    assert checks["audit"].startswith("FAIL") and "page embedding L2 differs" in checks["audit"]
    assert "rows 5 " in checks["audit"]


def test_nan_row_is_named(pipeline_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = copy_of(pipeline_store, tmp_path)
    arr = StoreArrays(store_path(out), mode="r+")["page_embeddings"]
    arr[6] = np.full(arr.shape[1], np.nan, dtype=np.float32)
    code, checks, _ = diagnose(capsys, out)
    assert code == 1
    assert checks["values"].startswith("FAIL") and "NaN or Inf in page_embeddings of rows 6" in checks["values"]


def test_stray_temporary_file_fails_without_writer(
    pipeline_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(pipeline_store, tmp_path)
    stray = store_path(out) / "page_embeddings" / "c" / "0" / "0.4f2a.partial"
    stray.write_bytes(b"half a chunk")
    code, checks, verdict = diagnose(capsys, out)
    assert code == 1
    assert checks["leftovers"].startswith("FAIL") and "0.4f2a.partial" in checks["leftovers"]
    assert "leftovers" in verdict


def test_temporary_file_while_a_writer_holds_the_lock_is_a_warning(
    pipeline_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(pipeline_store, tmp_path)
    (store_path(out) / "status" / "c" / "0.1b2c.partial").write_bytes(b"being renamed")
    with open(out / "writer.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running writer holds
        code, checks, verdict = diagnose(capsys, out)
    assert code == 0
    assert checks["leftovers"].startswith("WARN") and "a writer is running" in checks["leftovers"]
    assert verdict == "verdict: OK with warnings (leftovers)"


def test_broken_manifest_is_reported_and_left_alone(
    pipeline_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(pipeline_store, tmp_path)
    manifest_file(store_path(out), 2).write_text("{not json")
    before = tree_digest(out)
    code, checks, _ = diagnose(capsys, out)
    assert code == 1
    assert "batch_000002.json is unreadable" in checks["manifests"]
    assert tree_digest(out) == before  # the writer's reader would have moved it aside; diagnose must not


def test_inflight_record_is_read_and_an_unreadable_one_is_reported(
    pipeline_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(pipeline_store, tmp_path)
    inflight = manifest_dir(store_path(out)) / INFLIGHT_NAME
    inflight.write_text('{"batches": [[1, 4, 8], [7, 28, 32]]}')  # batch 1 has its manifest, batch 7 none
    code, checks, verdict = diagnose(capsys, out)
    assert code == 0
    assert (
        checks["leftovers"].startswith("WARN")
        and "inflight.json names batches 7 without manifest" in checks["leftovers"]
    )
    assert verdict == "verdict: OK with warnings (leftovers)"

    inflight.write_text('{"batches": [[7, 28')  # torn, as a power loss can leave it: it names nothing
    code, checks, verdict = diagnose(capsys, out)
    assert code == 0
    assert checks["leftovers"].startswith("WARN") and "inflight.json is unreadable" in checks["leftovers"]


def test_missing_store_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", str(tmp_path / "nothing")]) == 2
    assert str(tmp_path / "nothing") in capsys.readouterr().err
