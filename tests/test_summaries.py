"""`comix-embed summaries` on stores made by the pipeline: the truth about committed rows, at once."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from comix_embed.cli import main
from comix_embed.common.store.reading import open_committed
from comix_embed.common.store.schema import store_path
from tests.cli import run_cli

ROW = re.compile(r"^(\d+) (\d+\.\d{6}) (\d+\.\d{6}) (\S+) (.*)$")


def summaries(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(["summaries", *argv])
    return code, capsys.readouterr().out.splitlines()


def parsed_rows(lines: list[str]) -> list[tuple[int, float, float, str, str]]:
    rows = []
    for line in lines:
        m = ROW.match(line)
        if m:
            rows.append((int(m[1]), float(m[2]), float(m[3]), m[4], m[5]))
    return rows


def expected_norms(output_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Page L2, mean valid-panel L2 and status of every committed row, straight from the store."""
    ds = open_committed(store_path(output_dir))
    page = np.linalg.norm(ds["page_embeddings"].values.astype(np.float64), axis=1)
    panel = np.linalg.norm(ds["panel_embeddings"].values.astype(np.float64), axis=2)
    mask = ds["panel_mask"].values
    counts = mask.sum(axis=1)
    mean = np.where(counts > 0, (panel * mask).sum(axis=1) / np.maximum(counts, 1), 0.0)
    return page, mean, ds["status"].values


def test_complete_store_with_failed_pages(pipeline_store: Path) -> None:
    proc = run_cli("summaries", "--zarr", str(pipeline_store), "--max-pages", "100", "--compact")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "19 of 19 registered rows committed" in lines[0]
    rows = parsed_rows(lines[1:])
    assert [r[0] for r in rows] == list(range(19))
    page, mean, status = expected_norms(pipeline_store)
    np.testing.assert_allclose([r[1] for r in rows], page, atol=1e-6)
    np.testing.assert_allclose([r[2] for r in rows], mean, atol=1e-6)
    failed = [r for r in rows if r[3] == "failed"]
    assert len(failed) == 3 == int((status == 2).sum())
    for _, page_l2, panel_l2, _, preview in failed:
        assert preview.startswith("error: ") and len(preview) > len("error: ")
        assert page_l2 == panel_l2 == 0.0
    assert all(r[1] > 0 for r in rows if r[3] in ("ok", "full_page"))


def test_interrupted_store_prints_only_committed_rows(
    interrupted_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = summaries(capsys, "--zarr", str(interrupted_store), "--max-pages", "100", "--compact")
    assert code == 0
    assert "8 of 24 registered rows committed" in lines[0]
    assert "batch 3 (4 rows) committed out of order, readable once batch 2 is committed" in lines[0]
    assert [r[0] for r in parsed_rows(lines)] == list(range(8))


def test_table_layout_and_zarr_path(pipeline_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = summaries(capsys, "--zarr", str(store_path(pipeline_store)), "--max-pages", "3")
    assert code == 0
    assert lines[2].split() == ["idx", "page_l2", "panel_mean_l2", "status", "text_preview"]
    assert lines[-1] == "... 16 more committed rows (--max-pages)"
    assert len([line for line in lines if re.match(r"^\s+\d+\s+\d+\.\d{6}", line)]) == 3


def test_old_spellings_and_text_length(pipeline_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = summaries(capsys, "--zarr", str(pipeline_store), "--max_pages", "2", "--text_len", "12", "--compact")
    assert code == 0
    rows = parsed_rows(lines)
    assert len(rows) == 2
    assert all(len(r[4]) <= 12 for r in rows)


def test_missing_store_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["summaries", "--zarr", str(tmp_path / "nothing")])
    assert code == 2
    assert str(tmp_path / "nothing") in capsys.readouterr().err
