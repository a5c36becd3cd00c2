"""The writer: idempotent out-of-order commits, recovery, one writer, one model, the users' checks."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from comix_embed.common import config
from comix_embed.common.model.identity import ModelMismatch
from comix_embed.common.store.audit_log import AuditRecord
from comix_embed.common.store.manifests import manifest_file, manifest_ids, read_manifest
from comix_embed.common.store.reading import read_attrs
from comix_embed.common.store.schema import store_path
from comix_embed.writer.checks import CheckFailed, verify_batch, write_check
from comix_embed.writer.commit import InvalidResult, StoreWriter
from comix_embed.writer.growth import write_attrs
from comix_embed.writer.manifests import write_inflight
from tests import synthetic
from tests.typed import StoreArrays


def _snapshot(path: Path) -> dict[str, bytes]:
    """Every file of the store except the manifests' timestamps that change nothing."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_out_of_order_and_duplicates(tmp_path: Path) -> None:
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(45), 8)
    model = synthetic.model_info()
    results = [synthetic.make_result(job, b, model) for b, _, _ in job.batches()]
    with StoreWriter(tmp_path, fsync=False) as writer:
        out = writer.commit([results[2], results[1], results[2]])
        assert [(o.batch_id, o.committed) for o in out] == [(2, True), (1, True), (2, False)]
        assert writer.committed_rows == 0 and writer.owed() == {"job_000001": [0, 3, 4, 5]}
        names = {1: "ok", 2: "failed", 3: "full_page"}
        for o, r in zip(out[:2], (results[2], results[1])):
            values, counts = np.unique(r.arrays["status"], return_counts=True)
            assert o.statuses == {names[int(v)]: int(c) for v, c in zip(values, counts)}
        assert out[0].statuses["failed"] == 1  # synthetic rows 5, 22, 39 fail
        writer.commit([results[0]])
        assert writer.committed_rows == 24
        before = _snapshot(store_path(tmp_path))
        again = writer.commit([results[0], results[1]])  # redelivery
        assert [o.committed for o in again] == [False, False]
        assert _snapshot(store_path(tmp_path)) == before
        writer.commit([results[5], results[3], results[4]])
        assert writer.committed_rows == 45 and writer.owed() == {"job_000001": []}
    manifest, problem = read_manifest(manifest_file(store_path(tmp_path), 5), 5)
    assert manifest is not None, problem
    assert (manifest.batch_id, manifest.start_idx, manifest.end_idx, manifest.num_pages, manifest.job) == (
        5,
        40,
        44,
        5,
        "job_000001",
    )
    assert manifest.page_ids == [p.page_id for p in job.pages[40:45]] and manifest.token is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest.timestamp)


def test_recovery_clears_what_lies_past_the_manifests(tmp_path: Path) -> None:
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(40), 8)
    model = synthetic.model_info()
    with StoreWriter(tmp_path, fsync=False) as writer:
        writer.commit([synthetic.make_result(job, b, model) for b in (0, 1)])
    path = store_path(tmp_path)
    # the state a writer killed while writing batch 3 leaves: its record, its rows, temporaries
    write_inflight(path, [(3, 24, 32)])
    group = StoreArrays(path, mode="r+")
    group["page_embeddings"][24:32] = np.ones((8, 16), dtype=np.float32)
    group["status"][24:32] = np.ones(8, dtype=np.int8)
    (path / "page_embeddings" / "c" / "0" / "0.deadbeef.partial").write_bytes(b"torn")
    (path / "manifest" / ".batch_000003.json.beef.tmp").write_text("{")
    write_attrs(path, {"committed_rows": 8})  # killed before committed_rows was advanced
    with StoreWriter(tmp_path, fsync=False) as writer:
        assert writer.committed_rows == 16
        assert writer.owed() == {"job_000001": [2, 3, 4]}
    assert read_attrs(path)["committed_rows"] == 16
    assert not group["page_embeddings"][24:32].any() and not group["status"][24:32].any()
    assert [p.name for p in path.rglob("*") if p.name.endswith((".partial", ".tmp"))] == []


def test_one_writer_per_store(tmp_path: Path) -> None:
    synthetic.plan(tmp_path, synthetic.make_pages(8), 8)
    code = "import sys\nfrom comix_embed.writer.commit import StoreWriter\ntry:\n    StoreWriter(sys.argv[1]).open()\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    with StoreWriter(tmp_path, fsync=False):
        second = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert second.stdout.startswith(f"WriterLocked another writer (pid {os.getpid()}) holds")
    with StoreWriter(tmp_path, fsync=False):  # released on close
        pass


def test_refuses_to_mix_models(tmp_path: Path) -> None:
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(16), 8)
    with StoreWriter(tmp_path, fsync=False) as writer:
        writer.commit([synthetic.make_result(job, 0, synthetic.model_info())])
        other = synthetic.make_result(job, 1, synthetic.model_info(checkpoint=synthetic.CHECKPOINT_B))
        with pytest.raises(ModelMismatch) as info:
            writer.commit([other])
        assert synthetic.CHECKPOINT_A in str(info.value) and synthetic.CHECKPOINT_B in str(info.value)
        wider = synthetic.make_result(job, 1, synthetic.model_info(d=32))
        with pytest.raises(ModelMismatch, match="embedding_dim"):
            writer.commit([wider])
        assert writer.committed_rows == 8
    path = store_path(tmp_path)
    assert sorted(manifest_ids(path)) == [0]
    assert not StoreArrays(path)["page_embeddings"][8:16].any()


def test_refuses_results_that_do_not_fit_their_job(tmp_path: Path) -> None:
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(16), 8)
    model = synthetic.model_info()
    good = synthetic.make_result(job, 0, model)
    shifted = synthetic.make_result(job, 1, model)
    shifted.page_ids = list(reversed(shifted.page_ids))
    with StoreWriter(tmp_path, fsync=False) as writer:
        with pytest.raises(InvalidResult, match="page ids differ"):
            writer.commit([good, shifted])
        assert writer.committed_rows == 0
        short = synthetic.make_result(job, 1, model)
        short.arrays["panel_mask"] = short.arrays["panel_mask"][:, :5]
        with pytest.raises(InvalidResult, match="panel_mask has shape"):
            writer.commit([short])
    assert not store_path(tmp_path).exists()  # nothing at all was written


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda a: a["page_embeddings"].__setitem__(3, 0.0), "page embedding L2 norm is 0.0"),
        (lambda a: a["panel_mask"].__setitem__((3, 11), True), "panel_mask sum is"),
        (
            lambda a: a["text_content"].__setitem__((3, 0), "{'dialogue': []}"),
            "text_content of panel 0 is not valid JSON",
        ),
        (lambda a: a["page_text"].__setitem__(3, "dialogue"), "page_text is not valid JSON"),
    ],
)
def test_verify_batches_stops_at_the_bad_page(tmp_path: Path, corrupt, message: str) -> None:
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(16), 8)
    model = synthetic.model_info()
    result = synthetic.make_result(job, 1, model)
    assert 0 < job.pages[11].panel_count < 12 and result.arrays["status"][3] == 1
    corrupt(result.arrays)
    with StoreWriter(tmp_path, verify_batches=True, fsync=False) as writer:
        writer.commit([synthetic.make_result(job, 0, model)])
        with pytest.raises(CheckFailed) as info:
            writer.commit([result])
    assert f"batch 1, page {job.pages[11].page_id} (row 11)" in str(info.value)
    assert message in str(info.value)
    assert sorted(manifest_ids(store_path(tmp_path))) == [0]


def test_write_check_reads_back_from_disk(tmp_path: Path) -> None:
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(16), 8)
    result = synthetic.make_result(job, 1, synthetic.model_info())
    with StoreWriter(tmp_path, write_check=True, fsync=False) as writer:
        assert writer.commit([result])[0].committed  # the check passes on a sound disk
    path = store_path(tmp_path)
    chunk = path / "page_embeddings" / "c" / "0" / "0"  # uncompressed float32 rows 0..63
    raw = bytearray(chunk.read_bytes())
    offset = (8 + 2) * 16 * 4  # row 10, first value
    raw[offset : offset + 4] = np.float32(123.0).tobytes()
    chunk.write_bytes(bytes(raw))
    arrays = {name: zarr.open_array(path / name, mode="r") for name in result.arrays}
    with pytest.raises(
        CheckFailed,
        match=rf"--write-check: batch 1, page {re.escape(job.pages[10].page_id)} \(row 10\): page_embeddings",
    ):
        write_check(arrays, 1, list(range(8, 16)), result.page_ids, result.arrays)


def test_checks_follow_a_retry_batchs_scattered_rows(tmp_path: Path) -> None:
    """A retry batch's rows need not be contiguous: both checks name the page's own row."""
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(16), 8)
    model = synthetic.model_info()
    both = [synthetic.make_result(job, b, model) for b in (0, 1)]
    with StoreWriter(tmp_path, fsync=False) as writer:
        writer.commit(both)
    scattered = [1, 4, 11, 14]
    result = synthetic.make_result(job, 1, model)
    result.arrays = {name: np.concatenate([r.arrays[name] for r in both])[scattered] for name in result.arrays}
    result.rows, result.page_ids = scattered, [job.pages[r].page_id for r in scattered]
    verify_batch(result, job.page, model["embedding_dim"], model["max_panels"])  # as sent, it passes
    assert 0 < job.pages[11].panel_count < 12 and result.arrays["status"][2] == 1
    result.arrays["panel_mask"][2, :] = True  # row 11 claims 12 panels
    with pytest.raises(CheckFailed, match=rf"page {re.escape(job.pages[11].page_id)} \(row 11\): panel_mask sum"):
        verify_batch(result, job.page, model["embedding_dim"], model["max_panels"])

    path = store_path(tmp_path)
    arrays = {name: zarr.open_array(path / name, mode="r") for name in result.arrays}
    on_disk = {name: np.asarray(arrays[name][:])[scattered] for name in result.arrays}
    write_check(arrays, 1, scattered, result.page_ids, on_disk)  # what is there passes
    on_disk["page_embeddings"][3, 0] += 1.0
    with pytest.raises(CheckFailed, match=rf"page {re.escape(job.pages[14].page_id)} \(row 14\): page_embeddings"):
        write_check(arrays, 1, scattered, result.page_ids, on_disk)


def test_verbose_lines_and_audit_log(tmp_path: Path) -> None:
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(16), 8)
    model = synthetic.model_info()
    out = io.StringIO()
    audit_path = tmp_path / config.AUDIT_LOG_NAME
    with StoreWriter(tmp_path, verbose=True, fsync=False, out=out) as writer:
        writer.commit([synthetic.make_result(job, 0, model)])
        records = [AuditRecord.decode(line) for line in audit_path.read_text().splitlines()]  # written as it goes
        assert [r.row for r in records] == list(range(8))
        writer.commit([synthetic.make_result(job, 1, model)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 16
    result = synthetic.make_result(job, 1, model)
    l2 = float(np.linalg.norm(result.arrays["page_embeddings"][2].astype(np.float64)))
    mask_sum = int(result.arrays["panel_mask"][2].sum())
    assert (
        lines[10]
        == f"[PAGE] json=00010.json page_id={job.pages[10].page_id} idx=10 mask_sum={mask_sum} emb_l2={l2:.3f}"
    )
    records = [AuditRecord.decode(line) for line in audit_path.read_text().splitlines()]
    assert len(records) == 16
    failed = records[5]
    assert (failed.status, failed.error, failed.emb_l2, failed.batch) == (
        "failed",
        "image not found",
        0.0,
        0,
    )
    assert {r.status for r in records} <= {"ok", "failed", "full_page"}
