"""The scale benchmark at 20,000 pages: one JSON object, every figure present and sane.

It runs the benchmark as users do, as a process: a private Redis, the real writer process fed
through the results stream, then the commands and the queries on the finished store. The
figures themselves depend on the machine; what is checked is that each is measured (right type,
possible range), so that the full run at 1.2 million pages can be trusted to report them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from comix_embed.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PAGES = 20_000
D = 384

# every figure the benchmark promises, spelled out here rather than taken from the benchmark
RATES = ("write_pages_per_s_first", "write_pages_per_s_last")
CPU = ("writer_cpu_s_per_1k_first", "writer_cpu_s_per_1k_last")
COUNTS = ("folder_files_max", "files_per_array_max", "files_total", "bytes_per_page", "query_peak_rss_mb")
SECONDS = ("writer_open_s", "status_s", "summaries_s", "diagnose_s")
MILLISECONDS = ("query_like_p50_ms", "query_keyword_p50_ms", "query_panel_p50_ms")
KEYS = {"pages", *RATES, *CPU, *COUNTS, *SECONDS, *MILLISECONDS}
KEYS |= {"write_amplification", "panel_recall_at_10", "index_build_s"}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.timeout(1800)  # about 2 minutes on a quiet 2-core machine, 5.5 under a load of 6
def test_scale_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--pages", str(PAGES), "--keep", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "needs about" in done.stderr  # the disk it needs, said up front
    figures = json.loads(done.stdout)  # the whole output is one JSON object
    assert set(figures) == KEYS

    assert figures["pages"] == PAGES
    for key in RATES + SECONDS + MILLISECONDS:
        assert _number(figures[key]) and figures[key] > 0, (key, figures[key])
    for key in CPU:
        assert _number(figures[key]) and figures[key] >= 0, (key, figures[key])
    for key in COUNTS:
        assert isinstance(figures[key], int) and figures[key] > 0, (key, figures[key])
    assert figures["files_total"] >= max(figures["folder_files_max"], figures["files_per_array_max"])
    # the page and panel embeddings alone are 13 * 4 * d bytes a page (stored uncompressed)
    assert 13 * 4 * D <= figures["bytes_per_page"] < 1_000_000
    # the writer wrote at least the store it made (pages of 4 KiB count whole on both sides)
    assert _number(figures["write_amplification"]) and figures["write_amplification"] >= 0.5
    assert 0.0 <= figures["panel_recall_at_10"] <= 1.0
    assert figures["panel_recall_at_10"] >= 0.5  # an answer compared with the wrong rows scores near 0
    if "index" in COMMANDS:
        assert _number(figures["index_build_s"]) and figures["index_build_s"] > 0
    else:
        assert figures["index_build_s"] is None
        assert "index_build_s: null" in done.stderr
    assert (out / "combined_embeddings.zarr" / "zarr.json").is_file()  # --keep kept the store
