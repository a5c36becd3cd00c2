"""The users' v2 stores: imported into ours (every field carried over), resumed after a kill, extended by `run`, read in place.

The v2 stores are built from the layout their generator wrote (tests/v2_store.py), on disk, and
read with zarr; the imports run as users run them (`comix-embed import-v2` in a child process)
or in-process; `run --incremental` and `run --retry-failed` run real workers against a private
Redis, with a real tiny checkpoint.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zarr

from comix_embed.common.child import cli_argv
from comix_embed.common.messages import convert
from comix_embed.common.model.identity import identify
from comix_embed.common.store.jobs import load_jobs
from comix_embed.common.store.reading import open_committed, read_attrs
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_OK, store_path
from comix_embed.common.store.v2 import IMPORT_ATTRIBUTE, V2Import
from comix_embed.tools.sample.corpus import make_sample
from comix_embed.writer.import_v2.command import import_v2
from comix_embed.writer.import_v2.convert import NAN_PAGE, UNWRITTEN
from tests.cli import run_args, run_cli
from tests.harness import store_arrays
from tests.v2_store import V2Page, v2_values, write_v2_store

LONG = {"dialogue": ["A very long speech. " * 40], "narration": ["after the cut"], "sfx": []}


def _tree(path: Path) -> dict[str, str]:
    """Every file under `path` with the SHA-256 of its bytes: what 'nothing written inside' compares."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _pages() -> list[V2Page]:
    pages = [V2Page(f"dataspecs/Book {i // 10}/JPG4CBZ/{i:04d}.json", panels=i % 13) for i in range(60)]
    pages[5] = V2Page(pages[5].manifest_path, written=False)
    pages[7] = V2Page(
        pages[7].manifest_path, panels=2, texts=[LONG, {"dialogue": ["short"], "narration": [], "sfx": []}]
    )
    pages.append(V2Page(pages[3].manifest_path, panels=4))  # a repeated list line: row 60
    pages.append(V2Page("dataspecs/Book 9/JPG4CBZ/a folder with a much longer name than the rest/0061.json"))
    return pages


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = tmp_path_factory.mktemp("sample")
    make_sample(corpus, pages=12, seed=3)
    return corpus


def test_import_carries_every_field_and_writes_nothing_inside_the_v2_store(tmp_path: Path) -> None:
    pages = _pages()
    width = len(pages[0].manifest_path) + 12  # the last line is longer: the generator cut it
    v2 = write_v2_store(tmp_path / "v2", pages, d=16, manifest_width=width)
    before = _tree(v2)
    out = tmp_path / "ours"
    done = run_cli("import-v2", "--from", str(v2.parent), "--output-dir", str(out), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported 62 rows" in done.stdout and "1 repeated page ids left out" in done.stdout
    assert _tree(v2) == before  # read only

    record = convert(read_attrs(store_path(out))[IMPORT_ATTRIBUTE], V2Import, "record")
    assert record.finished and record.duplicates == 1 and record.cut_paths == 1 and record.checkpoint == "none"
    zero_panel_rows = [i for i, p in enumerate(pages[:60]) if p.written and p.panels == 0]
    assert (record.nan_pages, record.unwritten) == (len(zero_panel_rows), 1)
    cut_texts = 0
    for row, page in enumerate(pages[:60]):
        want = v2_values(row, page, d=16)
        if page.written and page.panels:
            cut_texts += sum(len(str(t)) >= 512 for t in want["text_content"][want["panel_mask"]])
    assert record.cut_texts == cut_texts >= 1

    ds = open_committed(store_path(out))
    assert ds.sizes["page_id"] == 61  # 62 rows, one repeating another
    ids = [str(v) for v in ds["page_id"].values]
    assert ids[:60] == [p.manifest_path for p in pages[:60]]
    assert ids[60].startswith("v2 row 61, manifest_path cut: ")
    status, error = ds["status"].values, ds["error"].values
    assert status[60] == STATUS_FAILED and "cut this row's manifest_path at its column width" in str(error[60])
    assert status[5] == STATUS_FAILED and error[5] == UNWRITTEN
    for row in zero_panel_rows:
        assert status[row] == STATUS_FAILED and error[row] == NAN_PAGE
        assert not ds["page_embeddings"].values[row].any()
    for row, page in enumerate(pages[:60]):
        if status[row] != STATUS_OK:
            continue
        want = v2_values(row, page, d=16)
        mask = want["panel_mask"]
        assert ds["panel_mask"].values[row].tolist() == mask.tolist()
        np.testing.assert_array_equal(ds["page_embeddings"].values[row], want["page_embeddings"])
        np.testing.assert_array_equal(ds["panel_embeddings"].values[row][mask], want["panel_embeddings"][mask])
        assert not ds["panel_embeddings"].values[row][~mask].any()  # the generator's padding, zeroed
        assert not ds["attention_weights"].values[row][~mask].any()
        order = ds["reading_order"].values[row]
        assert (order[~mask] == -1).all() and (order[mask] == want["reading_order"][mask].astype(int)).all()
        texts = [json.loads(str(t)) for t in ds["text_content"].values[row][mask]]
        if row != 7:
            uncut = [len(str(t)) < 512 for t in want["text_content"][mask]]
            texts = [t for t, whole in zip(texts, uncut) if whole]
            assert texts == [
                {**{"dialogue": [], "narration": [], "sfx": []}, **ast.literal_eval(str(t))}
                for t in want["text_content"][mask]
                if len(str(t)) < 512
            ]
    cut, short = (json.loads(str(t)) for t in ds["text_content"].values[7][:2])
    assert cut["cut_at"] == 512 and cut["dialogue"][0].startswith("A very long speech.") and "narration" in cut
    assert short == {"dialogue": ["short"], "narration": [], "sfx": []}
    assert json.loads(str(ds["page_text"].values[7]))["dialogue"][-1] == "short"

    diagnosed = run_cli("diagnose", str(out))
    assert diagnosed.returncode == 0, diagnosed.stdout + diagnosed.stderr
    assert "imported from generate_embeddings_zarr_v2 store" in diagnosed.stdout
    assert "panel-masks" in diagnosed.stdout and "WARN  panel-masks" not in diagnosed.stdout


def test_an_interrupted_import_fails_diagnose_then_resumes_to_the_same_store(
    tiny_checkpoint: Path, sample: Path, tmp_path: Path
) -> None:
    pages = [V2Page(f"specs/{i // 100:03d}/{i:05d}.json", panels=(i * 7) % 13) for i in range(17000)]
    v2 = write_v2_store(tmp_path / "v2", pages, d=8)
    out = tmp_path / "ours"
    killed = run_cli(
        "import-v2",
        "--from",
        str(v2),
        "--output-dir",
        str(out),
        "--no-progress",
        env={"COMIX_TEST_SWITCHES": "1", "COMIX_TEST_IMPORT_KILL_AFTER": "1"},
    )
    assert killed.returncode == -9, killed.stdout + killed.stderr
    half = run_cli("diagnose", str(out))
    assert half.returncode != 0 and "an import from" in half.stdout and "is not finished" in half.stdout, half.stdout
    refused = run_cli(*run_args(tiny_checkpoint, sample, out, "--incremental", workers=1))
    assert refused.returncode == 2 and "that is not finished" in refused.stderr, refused.stdout + refused.stderr
    resumed = run_cli("import-v2", "--from", str(v2), "--output-dir", str(out), "--no-progress")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert run_cli("diagnose", str(out)).returncode == 0

    clean = tmp_path / "clean"
    import_v2(v2, clean, None)
    left, right = store_arrays(out), store_arrays(clean)
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].tolist() == right[name].tolist(), name
    records = [read_attrs(store_path(p))[IMPORT_ATTRIBUTE] for p in (out, clean)]
    assert {k: v for k, v in records[0].items()} == {k: v for k, v in records[1].items()}


def _v2_of(corpus: Path, folder: Path, d: int) -> tuple[Path, list[str]]:
    """A v2 store of the corpus's first 8 list lines, the third a page its generator gave NaN."""
    lines = [line for line in (corpus / "list.txt").read_text().splitlines() if line.strip()]
    pages = [V2Page(line, panels=0 if i == 2 else 3) for i, line in enumerate(lines[:8])]
    return write_v2_store(folder, pages, d=d), lines


def test_import_then_incremental_run_adds_only_new_pages_and_retry_fixes_the_failed(
    tiny_checkpoint: Path, sample: Path, tmp_path: Path
) -> None:
    d = identify(tiny_checkpoint, None, "fused").embedding_dim
    v2, lines = _v2_of(sample, tmp_path / "v2", d)
    out = tmp_path / "ours"
    imported = run_cli(
        *("import-v2", "--from", str(v2), "--output-dir", str(out), "--checkpoint", str(tiny_checkpoint)),
        *("--dataspec-root", str(sample), "--no-progress"),
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "vouched for with --checkpoint (not verified)" in imported.stdout
    before = store_arrays(out)

    more = run_cli(*run_args(tiny_checkpoint, sample, out, "--incremental", workers=1))
    assert more.returncode == 3 and "1 failed" in more.stdout, more.stdout + more.stderr  # the imported NaN page
    jobs = load_jobs(out)
    assert [j.page_count for j in jobs] == [8, len(lines) - 8]  # only the pages the store lacked
    after = store_arrays(out)
    assert after["page_embeddings"].shape[0] == len(lines)
    np.testing.assert_array_equal(after["page_embeddings"][:8], before["page_embeddings"])  # kept as imported
    assert after["status"][2] == STATUS_FAILED and (after["status"][8:] == STATUS_OK).all()

    retried = run_cli(*run_args(tiny_checkpoint, sample, out, "--retry-failed", workers=1))
    assert retried.returncode == 0, retried.stdout + retried.stderr
    fixed = store_arrays(out)
    assert (fixed["status"] == STATUS_OK).all() and fixed["page_embeddings"][2].any()


def test_without_a_checkpoint_the_import_is_read_only_for_embedding(
    tiny_checkpoint: Path, sample: Path, tmp_path: Path
) -> None:
    d = identify(tiny_checkpoint, None, "fused").embedding_dim
    v2, _ = _v2_of(sample, tmp_path / "v2", d)
    out = tmp_path / "ours"
    assert run_cli("import-v2", "--from", str(v2), "--output-dir", str(out), "--no-progress").returncode == 0
    refused = run_cli(*run_args(tiny_checkpoint, sample, out, "--incremental", workers=1))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "without --checkpoint" in refused.stderr and "import-v2 --checkpoint" in refused.stderr


def test_read_commands_open_a_v2_store_and_writers_name_the_import(tmp_path: Path) -> None:
    pages = _pages()[:40]
    v2 = write_v2_store(tmp_path / "v2", pages, d=16)
    before = _tree(tmp_path / "v2")
    env = {"COMIX_V2_CACHE": str(tmp_path / "cache")}
    shown = run_cli("summaries", "--zarr", str(tmp_path / "v2"), "--max-pages", "6", env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "generate_embeddings_zarr_v2 store" in shown.stderr and "no checkpoint identity" in shown.stderr
    assert "never wrote it" in shown.stdout  # row 5, unwritten
    similar = run_cli("query", "--zarr", str(v2), "--like", pages[1].manifest_path, "--top-k", "2", "--json", env=env)
    assert similar.returncode == 0, similar.stdout + similar.stderr
    assert json.loads(similar.stdout)["results"][0]["page_id"] == pages[1].manifest_path
    assert run_cli("diagnose", str(v2), env=env).returncode == 0
    built = run_cli("index", "--zarr", str(v2), env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    assert _tree(tmp_path / "v2") == before  # nothing written inside, nor beside it
    assert not (tmp_path / "v2" / "index").exists()

    for argv in (
        ("status", "--output-dir", str(tmp_path / "v2")),
        ("enqueue", "--output-dir", str(v2), "--list", "x", "--image-root", "y"),
    ):
        refused = run_cli(*argv, env=env)
        assert refused.returncode == 2 and "comix-embed import-v2 --from" in refused.stderr, refused.stderr
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "notes.txt").write_text("hello")
    neither = run_cli("summaries", "--zarr", str(odd), env=env)
    assert neither.returncode == 2 and "neither zarr.json nor .zgroup (it holds: notes.txt)" in neither.stderr
    zarr.open_group(tmp_path / "other.zarr", mode="w", zarr_format=3).create_array("x", shape=(2,), dtype="f4")
    other = run_cli("query", "--zarr", str(tmp_path / "other.zarr"), "--keyword", "x", env=env)
    assert other.returncode == 2 and "a Zarr format 3 group without comix-embed's root attributes" in other.stderr
    zarr.open_group(tmp_path / "v2ish", mode="w", zarr_format=2).create_array("x", shape=(2,), dtype="f4")
    other = run_cli("diagnose", str(tmp_path / "v2ish"), env=env)
    assert (
        other.returncode != 0
        and "a Zarr format 2 group without page_embeddings (its arrays: x)" in other.stdout + other.stderr
    )


def test_serve_shows_their_store_beside_ours(
    tiny_checkpoint: Path, pipeline_store: Path, pipeline_corpus: Path, tmp_path: Path
) -> None:
    """`serve --zarr OURS --zarr V2`: both stores answer; the v2 one through its converted copy."""
    d = identify(tiny_checkpoint, None, "fused").embedding_dim
    pages = [
        V2Page(f"theirs/Book/{i:04d}.json", panels=2, texts=[{"dialogue": [f"their line {i}"]}] * 2) for i in range(6)
    ]
    v2 = write_v2_store(tmp_path / "v2", pages, d=d)
    argv = cli_argv(
        *("serve", "--zarr", str(pipeline_store), "--zarr", str(v2), "--checkpoint", str(tiny_checkpoint)),
        *("--image-root", str(pipeline_corpus / "images"), "--port", "0"),
    )
    env = {**os.environ, "COMIX_V2_CACHE": str(tmp_path / "cache")}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:  # until the line serve promises, or its end
                lines.append(line)
                match = re.search(r"serving (\d+) store\(s\) on (http://\S+/)", line)
                if match:
                    break
            assert match, "".join(lines)
            assert match.group(1) == "2"
            url = match.group(2)
            with urllib.request.urlopen(f"{url}api/stores", timeout=60) as response:
                stores = json.load(response)["stores"]
            assert len(stores) == 2
            query = urllib.parse.urlencode({"mode": "keyword", "q": "their line 3"})
            with urllib.request.urlopen(f"{url}api/search?{query}", timeout=60) as response:
                found = json.load(response)
            answers = {a["store"] if "error" in a else a["name"]: a for a in found["stores"]}
            theirs = [a for a in found["stores"] if a.get("results") and "theirs/" in a["results"][0]["page_id"]]
            assert len(answers) == 2 and len(theirs) == 1, found
            assert theirs[0]["results"][0]["page_id"] == "theirs/Book/0003.json", found
        finally:
            proc.terminate()
            proc.wait(30)
