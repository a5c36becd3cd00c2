"""The manifests' layout at scale: bounded sub-folders, the checkpoint read on open, old stores."""

from __future__ import annotations

import json
import os
from pathlib import Path

from comix_embed.common import config
from comix_embed.common.store.attributes import ManifestCheckpoint, StoreAttributes
from comix_embed.common.store.manifests import (
    BATCHES_DIR,
    CHECKPOINT_ATTR,
    FOLDER_BATCHES,
    INFLIGHT_NAME,
    load_committed,
    manifest_file,
    manifest_ids,
)
from comix_embed.common.store.reading import read_attrs
from comix_embed.common.store.schema import store_path
from comix_embed.writer.commit import StoreWriter
from tests import synthetic


def _checkpoint(path: Path) -> ManifestCheckpoint:
    saved = StoreAttributes.of(read_attrs(path)).manifest_checkpoint
    assert saved is not None
    return saved


def test_manifests_go_to_subfolders_of_a_thousand(tmp_path: Path) -> None:
    pages = FOLDER_BATCHES + 10
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(pages), 1)
    model = synthetic.model_info()
    with StoreWriter(tmp_path, fsync=False) as writer:
        for first in range(0, pages, 256):
            writer.commit([synthetic.make_result(job, b, model) for b in range(first, min(first + 256, pages))])
        assert writer.committed_rows == pages
    folder = store_path(tmp_path) / config.MANIFEST_GROUP
    # nothing flat: no folder grows with the store
    assert sorted(os.listdir(folder)) == [BATCHES_DIR, INFLIGHT_NAME, "zarr.json"]
    subfolders = {sub: len(os.listdir(folder / BATCHES_DIR / sub)) for sub in os.listdir(folder / BATCHES_DIR)}
    assert subfolders == {"000000": FOLDER_BATCHES, "001000": 10}
    assert manifest_file(store_path(tmp_path), 1003).parent.name == "001000"
    assert manifest_ids(store_path(tmp_path)) == set(range(pages))
    saved = _checkpoint(store_path(tmp_path))
    assert saved.batches == pages and saved.rows == pages
    assert sum(saved.statuses.values()) == pages


def test_open_reads_the_checkpoint_and_only_the_manifests_past_it(tmp_path: Path) -> None:
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(64), 8)
    model = synthetic.model_info()
    with StoreWriter(tmp_path, fsync=False) as writer:
        writer.commit([synthetic.make_result(job, b, model) for b in (0, 1, 2, 4, 5)])
    path = store_path(tmp_path)
    assert _checkpoint(path).batches == 3
    # a manifest inside the checkpoint is not read again (its damage is diagnose's to find);
    # one past it is read, and a broken one is set aside so that its batch is owed again
    inside, past = manifest_file(path, 1), manifest_file(path, 5)
    inside.write_text("{not json")
    past.write_text("{not json")
    with StoreWriter(tmp_path, fsync=False) as writer:
        assert writer.committed_rows == 24
        assert writer.is_committed(1) and writer.is_committed(4) and not writer.is_committed(5)
        assert writer.owed() == {"job_000001": [3, 5, 6, 7]}
    assert inside.read_text() == "{not json" and not past.exists()
    assert past.with_name(past.name + ".corrupt").exists()
    committed, bad = load_committed(path)
    assert (committed.batches, committed.rows, sorted(committed.beyond), bad) == (3, 24, [4], {})


def test_a_store_from_before_the_layout_is_read_whole_once(tmp_path: Path) -> None:
    """Flat manifests and no checkpoint (as stores written before): read, then checkpointed."""
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(40), 8)
    model = synthetic.model_info()
    with StoreWriter(tmp_path, fsync=False) as writer:
        writer.commit([synthetic.make_result(job, b, model) for b in (0, 1, 3)])
    path = store_path(tmp_path)
    for b in (0, 1, 3):
        os.replace(manifest_file(path, b), path / config.MANIFEST_GROUP / f"batch_{b:06d}.json")
    meta = json.loads((path / "zarr.json").read_text())
    del meta["attributes"][CHECKPOINT_ATTR]
    (path / "zarr.json").write_text(json.dumps(meta))
    assert CHECKPOINT_ATTR not in read_attrs(path)
    assert manifest_ids(path) == {0, 1, 3}
    with StoreWriter(tmp_path, fsync=False) as writer:
        assert writer.committed_rows == 16 and writer.owed() == {"job_000001": [2, 4]}
        writer.commit([synthetic.make_result(job, 2, model)])
        assert writer.committed_rows == 32
    saved = _checkpoint(path)
    assert (saved.batches, saved.rows) == (4, 32)
    assert manifest_file(path, 2).is_file() and (path / config.MANIFEST_GROUP / "batch_000003.json").is_file()
    assert manifest_ids(path) == {0, 1, 2, 3}
