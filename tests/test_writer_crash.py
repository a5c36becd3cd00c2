"""The writer killed with SIGKILL at random instants: every page ends in the store exactly once.

It is restarted each time, fed duplicated and out-of-order batches, while a reader process polls
the store.

The final store must equal, array by array, the store of a run without kills; every manifest
must match its rows; the reader must never see a partial batch, a changed committed row or
`committed_rows` going down.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np

from comix_embed.common.store.attributes import StoreAttributes
from comix_embed.common.store.jobs import load_jobs
from comix_embed.common.store.manifests import scan_manifests
from comix_embed.common.store.reading import read_attrs, read_committed_rows
from comix_embed.common.store.results import BatchResult
from comix_embed.common.store.schema import store_path
from comix_embed.writer.commit import StoreWriter
from tests import synthetic
from tests.typed import StoreArrays

ROOT = Path(__file__).resolve().parents[1]
KILLS = 30
D = 16


def _prepare(tmp_path: Path) -> tuple[Path, Path, Path, list[list[str]]]:
    """Two jobs (the second appended), their results on disk, and a shuffled, duplicated feed."""
    kill_dir, clean_dir, results = tmp_path / "killed", tmp_path / "clean", tmp_path / "results"
    results.mkdir()
    model = synthetic.model_info(d=D)
    pages = synthetic.make_pages(2600)
    batch_ids: list[int] = []
    for out in (kill_dir, clean_dir):
        synthetic.plan(out, pages[:2000], 8)
        synthetic.plan(out, pages[2000:], 8, incremental=True, name="list2.txt")
    for job in load_jobs(kill_dir):
        for b, _, _ in job.batches():
            (results / f"b{b:06d}.bin").write_bytes(synthetic.make_result(job, b, model, seed=7).to_bytes())
            batch_ids.append(b)
    rng = random.Random(1234)
    order = sorted(batch_ids, key=lambda b: b + rng.uniform(0, 12))  # out of order, locally
    order += rng.sample(batch_ids, len(batch_ids) // 4)  # redeliveries, late
    order = sorted(order, key=lambda b: b + rng.uniform(0, 40))
    calls, i = [], 0
    while i < len(order):
        n = rng.randint(1, 4)
        calls.append([str(results / f"b{b:06d}.bin") for b in order[i : i + n]])
        i += n
    return kill_dir, clean_dir, results, calls


def _compare_stores(a: Path, b: Path) -> None:
    ga, gb = StoreArrays(a), StoreArrays(b)
    names = sorted(k for k, _ in ga.arrays())
    assert names == sorted(k for k, _ in gb.arrays())
    for name in names:
        va, vb = ga[name][...], gb[name][...]
        assert va.shape == vb.shape, name
        if va.dtype.kind in "OUT":
            assert va.tolist() == vb.tolist(), name
        else:
            assert va.dtype == vb.dtype and va.tobytes() == vb.tobytes(), name
    attrs_a, attrs_b = read_attrs(a), read_attrs(b)
    jobs_a, jobs_b = (StoreAttributes.of(attrs).jobs for attrs in (attrs_a, attrs_b))
    for attrs in (attrs_a, attrs_b):  # the two runs differ only in when and where
        attrs.pop("created"), attrs.pop("jobs")
    assert attrs_a == attrs_b
    assert [msgspec.structs.replace(j, list_path="", created="") for j in jobs_a] == [
        msgspec.structs.replace(j, list_path="", created="") for j in jobs_b
    ]
    ma, mb = scan_manifests(a)[0], scan_manifests(b)[0]
    assert sorted(ma) == sorted(mb)
    for bid in ma:
        assert msgspec.structs.replace(ma[bid], timestamp="") == msgspec.structs.replace(mb[bid], timestamp="")


def _check_manifests_match_rows(store: Path) -> None:
    group = StoreArrays(store)
    ids, status = group["page_id"][...], group["status"][...]
    found, bad = scan_manifests(store)
    assert not bad
    jobs = {j.job_id: j for j in load_jobs(store.parent)}
    assert sorted(found) == [b for j in jobs.values() for b, _, _ in j.batches()]
    names = {1: "ok", 2: "failed", 3: "full_page"}
    for bid, m in found.items():
        start, end = m.rows()
        assert (start, end) == jobs[m.job].batch(bid)
        assert m.page_ids == ids[start:end].tolist()
        values, counts = np.unique(status[start:end], return_counts=True)
        assert m.statuses == {names[int(v)]: int(c) for v, c in zip(values, counts)}
    assert read_committed_rows(store) == max(m.rows()[1] for m in found.values())


def test_sigkill_at_random_instants(tmp_path: Path) -> None:
    kill_dir, clean_dir, results, calls = _prepare(tmp_path)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"calls": calls}))

    with StoreWriter(clean_dir, fsync=False) as writer:
        for files in calls:
            writer.commit([BatchResult.from_bytes(Path(f).read_bytes()) for f in files])

    env = {**os.environ, "PYTHONPATH": str(ROOT), "COMIX_WRITER_FSYNC": "1"}
    stop, report = tmp_path / "stop", tmp_path / "reader.json"
    store = store_path(kill_dir)
    reader = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "crash_reader.py"), str(store), str(results), str(report), str(stop)],
        env=env,
    )
    rng = random.Random(99)
    # Kill j lands during call `targets[j]` (announced by the writer's `commit N` line) after a
    # random delay: the kills spread over the whole feed, and their number is a setting.
    span = len(calls) // KILLS
    targets = [j * span + rng.randrange(span) for j in range(KILLS)]
    try:
        for target in targets:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.replay", str(kill_dir), str(plan)],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip() == f"commit {target}":
                    break
            else:
                raise AssertionError(f"the writer ended before call {target}: exit {proc.wait()}")
            time.sleep(rng.uniform(0.0, 0.02))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        final = subprocess.run(
            [sys.executable, "-m", "tests.replay", str(kill_dir), str(plan)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert final.returncode == 0, final.stderr
        lines = final.stdout.split("\n")
        assert lines[0] == "ready" and lines[-2] == "done", final.stdout[-500:]
    finally:
        stop.touch()  # the reader polls once more (the final state), then reports
        reader.wait(timeout=120)

    print(f"reader {report.read_text()[:300]}")
    seen = json.loads(report.read_text())
    assert seen["violations"] == []
    assert seen["errors"] == []
    assert seen["last"] == 2600

    leftovers = [p for p in store.rglob("*") if p.name.endswith((".partial", ".tmp"))]
    assert leftovers == []
    _compare_stores(store, store_path(clean_dir))
    _check_manifests_match_rows(store)
    _check_manifests_match_rows(store_path(clean_dir))
