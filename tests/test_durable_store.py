"""Power loss: every file the writer renames into the store was fsynced before, its folder after.

The writer runs for real (a StoreWriter committing results to a store on disk); only os.fsync,
os.replace, os.link and os.mkdir are wrapped, to record what was made durable, and when.
Two files are held to less, by design (writer/commit.py): `committed_rows` (the root zarr.json)
is fsynced before its rename, but its folder need not be (a lost rename leaves the previous
zarr.json, whose lagging count recovery repairs); `inflight.json` is a hint, not fsynced, and
read as naming nothing when a power loss tore it.
"""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from comix_embed.common import config
from comix_embed.common.store.schema import RESULT_ARRAYS, store_path
from comix_embed.writer.commit import StoreWriter
from tests import synthetic
from tests.typed import StoreArrays


@dataclass
class Trace:
    """File system events in the order they happened, from every thread."""

    events: list[tuple] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *event: object) -> None:
        with self._lock:
            self.events.append(event)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_fsync, real_replace, real_link, real_mkdir = os.fsync, os.replace, os.link, os.mkdir

        def fsync(fd: int) -> None:
            call, path = next(self._ids), os.readlink(f"/proc/self/fd/{fd}")
            self.add("fsync_start", call, path)
            real_fsync(fd)
            self.add("fsync_done", call, path)

        def replace(src, dst, **kw) -> None:
            real_replace(src, dst, **kw)
            self.add("rename", os.path.abspath(src), os.path.abspath(dst))

        def link(src, dst, **kw) -> None:
            real_link(src, dst, **kw)
            self.add("rename", os.path.abspath(src), os.path.abspath(dst))

        def mkdir(path, *args, **kw) -> None:
            real_mkdir(path, *args, **kw)
            self.add("mkdir", os.path.abspath(path))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "link", link)
        monkeypatch.setattr(os, "mkdir", mkdir)

    def renames(self) -> list[tuple[int, str, str]]:
        return [(i, e[1], e[2]) for i, e in enumerate(self.events) if e[0] == "rename"]

    def fsynced(self, path: str, after: int, before: int | None = None) -> bool:
        """An fsync of `path` started after event `after` and finished before event `before`."""
        starts = {e[1]: i for i, e in enumerate(self.events) if e[0] == "fsync_start" and e[2] == path}
        for i, e in enumerate(self.events):
            if e[0] == "fsync_done" and e[2] == path and starts[e[1]] > after and (before is None or i < before):
                return True
        return False

    def problems(self, root: Path) -> list[str]:
        """Every rename or new folder under `root` that a power loss could undo or empty."""
        root_s, root_meta, hint = (
            str(root),
            str(root / "zarr.json"),
            str(root / config.MANIFEST_GROUP / "inflight.json"),
        )
        out = []
        manifests = [
            i for i, _, dst in self.renames() if Path(dst).parent.name == config.MANIFEST_GROUP and dst != hint
        ]
        for i, src, dst in self.renames():
            if not dst.startswith(root_s) or dst == hint:
                continue
            if not self.fsynced(src, after=-1, before=i):
                out.append(f"{dst} renamed from {Path(src).name} without fsync before")
            next_manifest = next((m for m in manifests if m > i), None)
            if dst != root_meta and not self.fsynced(str(Path(dst).parent), after=i, before=next_manifest):
                out.append(f"{dst}: its folder not fsynced after the rename (before the next manifest)")
        for i, e in enumerate(self.events):
            if e[0] == "mkdir" and e[1].startswith(root_s) and not self.fsynced(str(Path(e[1]).parent), after=i):
                out.append(f"new folder {e[1]}: its parent not fsynced")
        return out


def _commit_job(out: Path, fsync: bool) -> tuple[StoreWriter, list[tuple[int, int]]]:
    """150 pages in batches of 8, committed out of order and in groups, across chunk boundaries."""
    job, _ = synthetic.plan(out, synthetic.make_pages(150), 8)
    assert job is not None
    model = synthetic.model_info()
    results = {b: synthetic.make_result(job, b, model) for b, _, _ in job.batches()}
    with StoreWriter(out, fsync=fsync) as writer:
        for group in ([0, 1], [3], [2], [4, 5, 6, 7, 8, 9], [12, 10], [11], list(range(13, 19))):
            writer.commit([results[b] for b in group])
        assert writer.committed_rows == 150
    return writer, [(r.start, r.end) for r in results.values()]


def _chunk_files(out: Path, rows: list[tuple[int, int]]) -> set[str]:
    """The chunk (or shard) files of these rows in every result array, named by zarr's own
    chunk-key encoding (whose grid is the shards' in a sharded array)."""
    group = StoreArrays(store_path(out))
    files = set()
    for name in RESULT_ARRAYS:
        arr = group[name]
        rest = (0,) * (len(arr.shape) - 1)
        per_file = (arr.shards or arr.chunks)[0]
        for start, end in rows:
            for chunk in range(start // per_file, (end - 1) // per_file + 1):
                files.add(str(store_path(out) / name / arr.chunk_key((chunk, *rest))))
    return files


def test_every_file_renamed_into_the_store_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace()
    trace.install(monkeypatch)
    _, rows = _commit_job(tmp_path, fsync=True)
    monkeypatch.undo()
    renamed = {dst for _, _, dst in trace.renames()}
    chunks = {f for f in _chunk_files(tmp_path, rows) if os.path.exists(f)}  # all-fill chunks are not stored
    # one file per array (150 rows), each rewritten by the 7 commits
    assert len(chunks) >= len(RESULT_ARRAYS), "too few chunks to say anything"
    assert chunks <= renamed, f"chunk files not written through a rename: {sorted(chunks - renamed)[:5]}"
    assert any(dst.endswith("batch_000018.json") for dst in renamed)
    assert any(dst == str(store_path(tmp_path) / "zarr.json") for dst in renamed)  # committed_rows
    assert trace.problems(store_path(tmp_path)) == []


def test_the_check_sees_a_writer_that_does_not_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same commits with fsync off (COMIX_WRITER_FSYNC=0): the check above names the chunks."""
    trace = Trace()
    trace.install(monkeypatch)
    _, rows = _commit_job(tmp_path, fsync=False)
    monkeypatch.undo()
    problems = trace.problems(store_path(tmp_path))
    unsynced = {p.split(" renamed from ")[0] for p in problems if "without fsync before" in p}
    chunks = {f for f in _chunk_files(tmp_path, rows) if os.path.exists(f)}
    assert chunks and chunks <= unsynced


def test_a_torn_inflight_record_names_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What a power loss can leave of the unsynced inflight.json: the writer still starts."""
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(24), 8)
    assert job is not None
    model = synthetic.model_info()
    with StoreWriter(tmp_path, fsync=False) as writer:
        writer.commit([synthetic.make_result(job, 0, model)])
    inflight = store_path(tmp_path) / config.MANIFEST_GROUP / "inflight.json"
    for torn in (b"", b'{"batches": [[1, 8', b"\0" * 32):
        inflight.write_bytes(torn)
        with StoreWriter(tmp_path, fsync=False) as writer:
            assert writer.committed_rows == 8 and writer.owed() == {"job_000001": [1, 2]}
        assert "inflight.json is unreadable" in caplog.text
        caplog.clear()
