"""The corpus: books planned from the seed, every page made (in a process pool when large), the list.

`make_sample` is what tests, benchmarks and the `sample` command call.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from comix_embed.common.config import MAX_PANELS
from comix_embed.common.errors import UsageError
from comix_embed.tools.sample.page import CONTAINER, WINDOWS_ROOT, PageJob, make_page

PARALLEL_ABOVE = 16  # pages; below this a process pool costs more than it saves

SERIES_FIRST = ("Night", "Iron", "Crimson", "Silver", "Atomic", "Lost", "Star", "Shadow", "Tin")
SERIES_SECOND = ("Harbor", "Comet", "Legion", "Frontier", "Patrol", "Empire", "Raiders", "Tales")
# One book at most has an accented name, so that paths with non-ASCII characters get exercised.
SPECIAL_SERIES = "Le Rêve Noir"


@dataclass(frozen=True)
class Book:
    """A book folder (`<Series> v02 - Unknown`) and how many pages of the corpus it holds."""

    name: str
    pages: int


@dataclass
class SampleSummary:
    """What `make_sample` wrote, for the command's summary and for tests and benchmarks."""

    out: Path
    list_path: Path
    image_root: Path
    pages: int
    panels: int
    zero_panel_pages: int
    over_cap_pages: int
    seconds: float
    path_map: str | None = None

    def report(self) -> str:
        """The summary the command prints, ending with how to embed the corpus."""
        lines = [
            f"wrote {self.pages} pages ({self.panels} panels) to {self.out} "
            f"in {self.seconds:.1f} s ({self.pages / max(self.seconds, 1e-9):.1f} pages/s)",
            f"pages with 0 panels: {self.zero_panel_pages}; "
            f"pages with more than {MAX_PANELS} panels: {self.over_cap_pages}",
            f"list: {self.list_path}",
        ]
        usage = f'comix-embed run --list "{self.list_path}" --image-root "{self.image_root}"'
        if self.path_map:
            lines.append(f"page_image_path values are absolute Windows paths; map them with {self.path_map}")
            usage += f" {self.path_map}"
        lines.append(f"use it: {usage} ...")
        return "\n".join(lines)


def plan_books(pages: int, seed: int) -> list[Book]:
    """Split `pages` into books of 8-40 pages (the last one may be shorter), with unique names."""
    rng = random.Random(f"{seed}:books")
    volumes: dict[str, int] = {}
    books: list[Book] = []
    left = pages
    while left > 0:
        if SPECIAL_SERIES not in volumes and rng.random() < 0.08:
            series = SPECIAL_SERIES
        else:
            series = f"{rng.choice(SERIES_FIRST)} {rng.choice(SERIES_SECOND)}"
        volume = volumes.get(series, 0) + 1
        volumes[series] = volume
        label = f"{series} v{volume:02d}" if volume > 1 or rng.random() < 0.6 else series
        count = min(rng.randint(8, 40), left)
        books.append(Book(f"{label} - Unknown", count))
        left -= count
    return books


def page_jobs(out: Path, books: list[Book], seed: int, windows_paths: bool) -> list[PageJob]:
    """One job per page, numbered through the whole corpus: the index seeds the page's RNG."""
    jobs: list[PageJob] = []
    for book in books:
        for number in range(1, book.pages + 1):
            jobs.append(PageJob(str(out), seed, len(jobs), book.name, number, windows_paths))
    return jobs


def make_sample(out: Path, pages: int, seed: int = 0, windows_paths: bool = False) -> SampleSummary:
    """Write `pages` pages under `out` (images/, dataspecs/, list.txt) and say what was written.

    Files already under `out` are overwritten where the corpus has the same path, else left alone.
    """
    if pages < 1:
        raise UsageError("--pages must be at least 1")
    start = time.perf_counter()
    out = Path(out).resolve()
    books = plan_books(pages, seed)
    for book in books:
        (out / "images" / book.name / CONTAINER).mkdir(parents=True, exist_ok=True)
        (out / "dataspecs" / book.name / CONTAINER).mkdir(parents=True, exist_ok=True)
    jobs = page_jobs(out, books, seed, windows_paths)
    workers = os.cpu_count() or 1
    if pages > PARALLEL_ABOVE and workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(make_page, jobs, chunksize=2))
    else:
        results = [make_page(job) for job in jobs]
    list_path = out / "list.txt"
    list_path.write_text("".join(r.line + "\n" for r in results), encoding="utf-8")
    image_root = out / "images"
    return SampleSummary(
        out=out,
        list_path=list_path,
        image_root=image_root,
        pages=pages,
        panels=sum(r.panels for r in results),
        zero_panel_pages=sum(r.panels == 0 for r in results),
        over_cap_pages=sum(r.panels > MAX_PANELS for r in results),
        seconds=time.perf_counter() - start,
        path_map=f'--path-map "{WINDOWS_ROOT}={image_root}"' if windows_paths else None,
    )
