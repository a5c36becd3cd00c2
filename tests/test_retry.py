"""`--retry-failed`: failed rows embedded again in place, through their own manifests.

Real Redis (each `run` starts its private one), real worker processes, a real store: a page
whose image is missing fails; retried while still missing it fails again with its reason; once
the image is back, `run --retry-failed` embeds it, and the row equals a clean run's while every
other row stays byte-identical. `status`, `summaries` and `diagnose` show the retry, and
`diagnose` still flags a change no retry manifest explains. A writer killed while overwriting
retried rows puts them back as they were when it starts again.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import zarr

from comix_embed.common.model.identity import identity_of
from comix_embed.common.store.audit_log import AuditRecord
from comix_embed.common.store.manifests import manifest_dir
from comix_embed.common.store.reading import read_attrs
from comix_embed.common.store.results import failed_result
from comix_embed.common.store.retries import RETRY_INFLIGHT, retry_manifest_file, retry_manifest_ids
from comix_embed.common.store.schema import RESULT_ARRAYS, STATUS_FAILED, STATUS_OK, row_arrays, store_path
from comix_embed.producer.retry import prepare
from comix_embed.tools.sample.corpus import make_sample
from comix_embed.writer import retry, rows
from comix_embed.writer.commit import StoreWriter
from tests.cli import enqueue_args, run_args, run_cli
from tests.harness import assert_same_store, store_arrays, wait_committed, worker, writer


def _run(ckpt: Path, corpus: Path, out: Path, *extra: str):
    return run_cli(*run_args(ckpt, corpus, out, *extra, workers=1))


def _missing_image_corpus(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A 10-page corpus and one of its images moved aside (returns corpus, image, aside)."""
    corpus = tmp_path / "corpus"
    make_sample(corpus, pages=10, seed=5)
    image = sorted((corpus / "images").rglob("*.jpg"))[5]
    aside = tmp_path / "aside.jpg"
    shutil.move(image, aside)
    return corpus, image, aside


def test_retry_failed_embeds_the_failed_row_and_changes_nothing_else(tiny_checkpoint: Path, tmp_path: Path) -> None:
    corpus, image, aside = _missing_image_corpus(tmp_path)
    out = tmp_path / "out"
    first = _run(tiny_checkpoint, corpus, out)
    assert first.returncode == 3, first.stdout + first.stderr
    before = store_arrays(out)
    (row,) = np.flatnonzero(before["status"] == STATUS_FAILED).tolist()
    assert image.name in str(before["error"][row])

    still = _run(tiny_checkpoint, corpus, out, "--retry-failed")
    assert still.returncode == 3, still.stdout + still.stderr
    assert "0 now embedded" in still.stdout and "1 still failed" in still.stdout
    again = store_arrays(out)
    assert again["status"][row] == STATUS_FAILED and image.name in str(again["error"][row])

    shutil.move(aside, image)
    fixed = _run(tiny_checkpoint, corpus, out, "--retry-failed", "--verify-batches", "--write-check")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "retry_000002 (planned): 1 failed pages in 1 retry batches" in fixed.stdout
    assert "1 now embedded" in fixed.stdout
    after = store_arrays(out)
    assert after["status"][row] == STATUS_OK and after["error"][row] == ""
    others = np.arange(len(after["status"])) != row
    for name in row_arrays():  # every other row byte-identical
        old, new = before[name][others], after[name][others]
        assert (old.tobytes() == new.tobytes()) if old.dtype.kind != "O" else old.tolist() == new.tolist(), name

    clean = tmp_path / "clean"
    done = _run(tiny_checkpoint, corpus, clean)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_store(out, clean)  # the retried row within 1e-5 of a clean run's, the rest too

    none = _run(tiny_checkpoint, corpus, out, "--retry-failed")
    assert none.returncode == 0 and "no failed pages" in none.stdout, none.stdout + none.stderr
    plain = _run(tiny_checkpoint, corpus, out)  # the store has no failed page any more
    assert plain.returncode == 0 and "already committed" in plain.stdout, plain.stdout + plain.stderr

    status = run_cli("status", "--output-dir", str(out), "--broker", "redis://127.0.0.1:6399/0")
    assert "retries: 2 round(s); 1 failed pages retried, 1 now embedded, 0 still failed" in status.stdout, (
        status.stdout + status.stderr
    )
    assert "failed: 0" in status.stdout
    summary = run_cli("summaries", "--zarr", str(out))
    assert summary.returncode == 0 and "1 failed rows retried (*), 1 now embedded" in summary.stdout
    assert f"{row:>6}" in summary.stdout and " ok* " in summary.stdout

    audit = [AuditRecord.decode(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert [(r.status, r.retry) for r in audit if r.row == row] == [
        ("failed", False),
        ("failed", True),
        ("ok", True),
    ]

    ok = run_cli("diagnose", str(out))
    assert ok.returncode == 0, ok.stdout
    assert "2 retry manifests; 1 failed rows retried: 1 now embedded, 0 still failed" in ok.stdout

    # any change no retry manifest explains is still flagged: another row's embedding
    other = (row + 1) % len(after["status"])
    arr = zarr.open_array(store_path(out) / "page_embeddings", mode="r+")
    arr[other] = np.asarray(arr[other]) * 2
    changed = run_cli("diagnose", str(out))
    assert changed.returncode == 1 and f"page embedding L2 differs from the audit record in rows {other}" in (
        changed.stdout
    ), changed.stdout
    # and a status changed to failed without a retry
    arr[other] = np.asarray(arr[other]) / 2
    status_arr = zarr.open_array(store_path(out) / "status", mode="r+")
    status_arr[other] = STATUS_FAILED
    flagged = run_cli("diagnose", str(out))
    assert flagged.returncode == 1 and "statuses in the store" in flagged.stdout, flagged.stdout


def test_a_retry_killed_mid_write_puts_the_failed_rows_back_and_a_redelivery_changes_nothing(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    corpus, _image, _aside = _missing_image_corpus(tmp_path)
    out = tmp_path / "out"
    assert _run(tiny_checkpoint, corpus, out).returncode == 3
    before = store_arrays(out)
    (row,) = np.flatnonzero(before["status"] == STATUS_FAILED).tolist()
    with StoreWriter(out, fsync=False) as writer:
        arrays = writer._arrays
        saved = rows.read_rows(arrays, [row])
        # what a writer killed between saving the rows and writing its manifest leaves behind
        retry._save(store_path(out), 10**9, [row], saved, fsync=False)
        half = {name: v.copy() for name, v in saved.items()}
        half["status"][:] = STATUS_OK
        half["page_embeddings"][:] = 1.0
        rows.write_rows(arrays, rows.scattered([row], {n: half[n] for n in RESULT_ARRAYS}))
    assert (manifest_dir(store_path(out)) / RETRY_INFLIGHT).exists()
    with StoreWriter(out, fsync=False):
        pass  # recovery
    assert not (manifest_dir(store_path(out)) / RETRY_INFLIGHT).exists()
    assert not retry_manifest_ids(store_path(out))
    after = store_arrays(out)
    for name in before:
        assert before[name].tolist() == after[name].tolist(), name

    # a retry batch committed, then delivered again: the second changes nothing
    args = argparse.Namespace(
        output_dir=out,
        list=corpus / "list.txt",
        dataspec_root=corpus,
        image_root=[corpus / "images"],
        path_map=[],
        batch_size=4,
    )
    plan = prepare(args, identity_of(read_attrs(store_path(out))))
    assert plan is not None and plan.round.rows == [[row]] and plan.round.model is not None
    (batch,) = plan.round.batch_ids()
    result = failed_result(
        plan.round.job_id, batch, row, plan.round.page_ids[0], ["again"], plan.round.model.to_dict(), [""]
    )
    result.rows = [row]
    with StoreWriter(out, fsync=False) as writer:
        assert writer.commit([result])[0].committed
        once = store_arrays(out)
        manifest = retry_manifest_file(store_path(out), batch).read_bytes()
        assert not writer.commit([result])[0].committed
    assert retry_manifest_file(store_path(out), batch).read_bytes() == manifest
    twice = store_arrays(out)
    assert once["error"][row] == "again" and once["status"][row] == STATUS_FAILED
    for name in once:
        assert once[name].tolist() == twice[name].tolist(), name


def test_enqueue_retry_failed_with_a_separate_writer(tiny_checkpoint: Path, tmp_path: Path, broker) -> None:
    corpus, image, aside = _missing_image_corpus(tmp_path)
    out, logs = tmp_path / "out", tmp_path / "logs"
    procs = [worker(tiny_checkpoint, broker.url, logs, "w0"), writer(out, broker.url, logs)]
    try:
        sent = run_cli(*enqueue_args(tiny_checkpoint, corpus, out, broker.url))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_committed(out, 10, 300, procs)
        shutil.move(aside, image)
        retried = run_cli(*enqueue_args(tiny_checkpoint, corpus, out, broker.url, "--retry-failed"))
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert "retry_000001 (planned): 1 failed pages in 1 retry batches, 1 to send" in retried.stdout
        assert "retry batches sent: 1" in retried.stdout
        deadline = time.monotonic() + 300
        while not retry_manifest_ids(store_path(out)):
            assert time.monotonic() < deadline and all(p.proc.poll() is None for p in procs), procs[1].text()[-3000:]
            time.sleep(0.2)
        status = store_arrays(out)["status"]
        assert STATUS_FAILED not in status.tolist()
        none = run_cli(*enqueue_args(tiny_checkpoint, corpus, out, broker.url, "--retry-failed"))
        assert none.returncode == 0 and "no failed pages" in none.stdout, none.stdout + none.stderr
    finally:
        for p in procs:
            p.stop()
