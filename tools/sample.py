"""`comix-embed sample`: write a synthetic, deterministic comic corpus (images, DataSpecs, list).

The corpus looks like the users' own (spec/dataspec.md): books of 8-40 JPEG pages of real scan
sizes in `<Book>/JPG4CBZ/0001.jpg` trees, one minimal DataSpec per page whose panel boxes and
text match what is drawn, and a list file with a few Windows-style lines. It exists so that the
whole pipeline, its tests and its benchmarks run without anyone's private comics.

Every page is drawn from its own RNG, seeded by (seed, page index), so the same seed gives
byte-identical files whatever the number of processes that drew them.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
import random
import textwrap
import time
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from comix_embed.common.config import MAX_PANELS
from comix_embed.common.errors import UsageError
from comix_embed.tools import sample_text

Box = tuple[int, int, int, int]  # x, y, w, h
RGB = tuple[int, int, int]

WINDOWS_ROOT = "E:\\CalibreComics_extracted"
CONTAINER = "JPG4CBZ"
PARALLEL_ABOVE = 16  # pages; below this a process pool costs more than it saves
DENSE_EVERY, DENSE_AT = 25, 12  # page indices 12, 37, 62, ... have 13-14 panels
BACKSLASH_LINES = 0.08  # share of list lines written with Windows separators
JPEG_QUALITY = 85

SERIES_FIRST = ("Night", "Iron", "Crimson", "Silver", "Atomic", "Lost", "Star", "Shadow", "Tin")
SERIES_SECOND = ("Harbor", "Comet", "Legion", "Frontier", "Patrol", "Empire", "Raiders", "Tales")
# One book at most has an accented name, so that paths with non-ASCII characters get exercised.
SPECIAL_SERIES = "Le Rêve Noir"

INK: RGB = (18, 16, 20)
WHITE: RGB = (252, 252, 250)
CAPTION: RGB = (255, 242, 186)
PAPER: RGB = (246, 242, 230)


@dataclass(frozen=True)
class Book:
    """A book folder (`<Series> v02 - Unknown`) and how many pages of the corpus it holds."""

    name: str
    pages: int


@dataclass(frozen=True)
class PageJob:
    """Everything one page needs, picklable so that a pool worker can draw and write it."""

    out: str
    seed: int
    index: int
    book: str
    number: int  # 1-based page number within the book
    windows_paths: bool


@dataclass(frozen=True)
class PageResult:
    """What the parent needs back from a page: its list line and its panel count."""

    line: str
    panels: int


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


# --- corpus plan ---------------------------------------------------------------------------


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


def page_kind(rng: random.Random, index: int, number: int) -> str:
    """cover, pinup (0 panels), splash (1), grid (2-12) or dense (13-14).

    Dense pages sit at fixed indices, so that any corpus of more than 12 pages has one (the
    >12-panel cap gets exercised); a book's first page is its cover, so page 0 always has none.
    """
    if index % DENSE_EVERY == DENSE_AT:
        return "dense"
    if number == 1:
        return "cover"
    roll = rng.random()
    if roll < 0.03:
        return "pinup"
    if roll < 0.11:
        return "splash"
    return "grid"


def row_counts(rng: random.Random, kind: str) -> list[int]:
    """Panels per row, top to bottom."""
    if kind == "splash":
        return [1]
    if kind == "dense":
        counts = [3, 3, 3, 3, 2] if rng.random() < 0.5 else [3, 3, 3, 2, 2]
        rng.shuffle(counts)
        return counts
    return [rng.choice((1, 2, 2, 3, 3)) for _ in range(rng.choice((2, 3, 3, 4, 4)))]


def split(rng: random.Random, start: int, length: int, parts: int, gutter: int) -> list[tuple[int, int]]:
    """Cut `length` pixels into `parts` (start, size) spans of uneven size separated by gutters."""
    weights = [rng.uniform(0.7, 1.3) for _ in range(parts)]
    usable = length - gutter * (parts - 1)
    edges = [0]
    for w in weights:
        edges.append(edges[-1] + w)
    cuts = [round(usable * e / edges[-1]) for e in edges]
    return [(start + cuts[i] + gutter * i, cuts[i + 1] - cuts[i]) for i in range(parts)]


def layout(rng: random.Random, width: int, height: int, kind: str) -> list[Box]:
    """Panel boxes in reading order: rows top to bottom, left to right within a row."""
    if kind in ("cover", "pinup"):
        return []
    mx, my, gutter = rng.randint(70, 110), rng.randint(80, 130), rng.randint(24, 40)
    counts = row_counts(rng, kind)
    boxes: list[Box] = []
    for count, (y, h) in zip(counts, split(rng, my, height - 2 * my, len(counts), gutter)):
        boxes.extend((x, y, w, h) for x, w in split(rng, mx, width - 2 * mx, count, gutter))
    return boxes


# --- drawing -------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` px, cached because loading it costs more than drawing."""
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=8)
def halftone_mask(spacing: int, width: int = 2000, height: int = 3100) -> Image.Image:
    """A page-sized mask of round dots, made once per process and cropped per panel."""
    yy, xx = np.ogrid[:height, :width]
    half = spacing / 2
    dots = (xx % spacing - half) ** 2 + (yy % spacing - half) ** 2 < (spacing * 0.3) ** 2
    return Image.fromarray((dots * 170).astype(np.uint8), "L")


def hsv(hue: float, sat: float, val: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, sat, val)
    return (int(r * 255), int(g * 255), int(b * 255))


def gradient(size: tuple[int, int], top: RGB, bottom: RGB) -> Image.Image:
    """A vertical gradient, computed as one column and stretched: no per-pixel work in Python."""
    steps = np.linspace(0.0, 1.0, size[1])[:, None]
    column = np.asarray(top) * (1 - steps) + np.asarray(bottom) * steps
    strip = Image.fromarray(column.astype(np.uint8)[:, None, :], "RGB")
    return strip.resize(size, Image.Resampling.NEAREST)


def draw_figure(draw: ImageDraw.ImageDraw, rng: random.Random, x: int, ground: int, tall: int, hue: float) -> None:
    """A simple standing figure: head, tapered torso, legs, in ink outlines."""
    head = max(6, tall // 8)
    body_top = ground - tall + 2 * head
    skin = rng.choice(((236, 196, 160), (198, 146, 104), (140, 96, 66), (250, 214, 186)))
    costume = hsv(hue + rng.uniform(-0.15, 0.15), 0.7, 0.8)
    lw = max(2, tall // 60)
    leg_top = ground - tall // 3
    draw.line([(x - head // 2, leg_top), (x - head, ground)], fill=INK, width=lw * 3)
    draw.line([(x + head // 2, leg_top), (x + head, ground)], fill=INK, width=lw * 3)
    hip = head // 2 + 2
    torso = [(x - head, body_top), (x + head, body_top), (x + hip, leg_top), (x - hip, leg_top)]
    draw.polygon(torso, fill=costume, outline=INK, width=lw)
    draw.ellipse([x - head, body_top - 2 * head, x + head, body_top], fill=skin, outline=INK, width=lw)


def draw_sky_scene(img: Image.Image, rng: random.Random, hue: float) -> int:
    """Sky gradient, a city skyline with lit windows, a street; returns the ground line."""
    w, h = img.size
    ground = int(h * rng.uniform(0.7, 0.9))
    img.paste(gradient((w, ground), hsv(hue + 0.5, 0.5, 0.95), hsv(hue + 0.45, 0.2, 1.0)), (0, 0))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, ground, w, h], fill=hsv(hue, 0.3, 0.35))
    x = -rng.randint(0, 40)
    while x < w:
        bw, bh = rng.randint(w // 10 + 8, w // 4 + 16), int(ground * rng.uniform(0.25, 0.75))
        wall = hsv(hue + 0.6, 0.35, rng.uniform(0.25, 0.5))
        draw.rectangle([x, ground - bh, x + bw, ground], fill=wall, outline=INK, width=3)
        step = max(14, bw // 4)
        for wy in range(ground - bh + step // 2, ground - step, step):
            for wx in range(x + step // 3, x + bw - step // 2, step):
                if rng.random() < 0.6:
                    draw.rectangle([wx, wy, wx + step // 3, wy + step // 3], fill=(250, 226, 120))
        x += bw + rng.randint(0, 12)
    return ground


def draw_interior_scene(img: Image.Image, rng: random.Random, hue: float) -> int:
    """Flat wall, a window with sky, a floor; returns the floor line."""
    w, h = img.size
    ground = int(h * rng.uniform(0.75, 0.92))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, w, ground], fill=hsv(hue + 0.1, 0.35, 0.85))
    draw.rectangle([0, ground, w, h], fill=hsv(hue + 0.05, 0.5, 0.45))
    wx, wy = int(w * rng.uniform(0.05, 0.55)), int(h * rng.uniform(0.08, 0.3))
    ww, wh = int(w * 0.3), int(h * 0.3)
    draw.rectangle([wx, wy, wx + ww, wy + wh], fill=hsv(hue + 0.5, 0.4, 0.95), outline=INK, width=5)
    draw.line([(wx + ww // 2, wy), (wx + ww // 2, wy + wh)], fill=INK, width=4)
    return ground


def draw_action_scene(img: Image.Image, rng: random.Random, hue: float) -> int:
    """Flat colour with speed lines bursting from a focal point; returns a ground line."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, w, h], fill=hsv(hue + 0.08, 0.6, 0.95))
    cx, cy = int(w * rng.uniform(0.3, 0.7)), int(h * rng.uniform(0.3, 0.7))
    reach = w + h
    for _ in range(rng.randint(24, 48)):
        angle = rng.uniform(0, 2 * np.pi)
        inner = rng.uniform(0.1, 0.3) * min(w, h)
        start = (cx + inner * np.cos(angle), cy + inner * np.sin(angle))
        end = (cx + reach * np.cos(angle), cy + reach * np.sin(angle))
        draw.line([start, end], fill=INK, width=rng.randint(2, 6))
    return int(h * 0.95)


def draw_closeup_scene(img: Image.Image, rng: random.Random, hue: float) -> int:
    """A face filling the panel against a flat colour: no room for full figures."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, w, h], fill=hsv(hue + 0.3, 0.45, 0.7))
    r = int(min(w, h) * rng.uniform(0.3, 0.45))
    cx, cy = int(w * rng.uniform(0.35, 0.65)), int(h * 0.6)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(236, 196, 160), outline=INK, width=6)
    for side in (-1, 1):
        ex = cx + side * r // 3
        draw.ellipse([ex - r // 8, cy - r // 4, ex + r // 8, cy - r // 12], fill=WHITE, outline=INK, width=3)
        draw.ellipse([ex - r // 20, cy - r // 5, ex + r // 20, cy - r // 8], fill=INK)
    draw.arc([cx - r // 3, cy + r // 8, cx + r // 3, cy + r // 2], 20, 160, fill=INK, width=5)
    return 0


SCENES = (draw_sky_scene, draw_interior_scene, draw_action_scene, draw_closeup_scene)


def draw_art(img: Image.Image, rng: random.Random, hue: float) -> None:
    """A scene, figures on its ground line, and sometimes a halftone dot screen over it."""
    w, h = img.size
    ground = rng.choice(SCENES)(img, rng, hue)
    draw = ImageDraw.Draw(img)
    if ground:
        for _ in range(rng.randint(0, 3)):
            tall = int(h * rng.uniform(0.35, 0.7))
            draw_figure(draw, rng, rng.randint(w // 8, w - w // 8), ground, tall, hue)
    if rng.random() < 0.4:
        spacing = rng.choice((8, 10, 14))
        region = (0, 0, w, rng.choice((h, h // 2)))
        mask = halftone_mask(spacing).crop(region)
        img.paste(hsv(hue + 0.5, 0.6, 0.5), region, mask)


def letter_caption(draw: ImageDraw.ImageDraw, text: str, y: int, width: int, size: int) -> int:
    """A narration box at the panel's top left; returns the y below it."""
    f = font(size)
    wrapped = "\n".join(textwrap.wrap(text, max(8, int(width * 0.85 / (0.55 * size)))))
    left, top, right, bottom = draw.multiline_textbbox((0, 0), wrapped, font=f)
    pad = size // 2
    box = [8, y, 8 + right - left + 2 * pad, y + bottom - top + 2 * pad]
    draw.rectangle(box, fill=CAPTION, outline=INK, width=3)
    draw.multiline_text((8 + pad - left, y + pad - top), wrapped, font=f, fill=INK)
    return box[3] + size // 2


def letter_balloon(
    draw: ImageDraw.ImageDraw, rng: random.Random, text: str, y: int, width: int, size: int, right: bool
) -> int:
    """A white speech balloon with a tail and centred capitals; returns the y below it."""
    f = font(size)
    wrapped = "\n".join(textwrap.wrap(text, max(8, int(width * 0.6 / (0.62 * size)))))
    left, top, rgt, bottom = draw.multiline_textbbox((0, 0), wrapped, font=f, align="center")
    bw, bh = int((rgt - left) * 1.35) + size, int((bottom - top) * 1.35) + size
    x0 = max(6, width - bw - 12) if right else 12
    cx, cy = x0 + bw // 2, y + bh // 2
    tail_x = cx + (-1 if right else 1) * rng.randint(bw // 8, bw // 3)
    tail = [(cx - bw // 10, cy), (cx + bw // 10, cy), (tail_x, y + bh + size)]
    draw.polygon(tail, fill=INK)
    draw.ellipse([x0, y, x0 + bw, y + bh], fill=INK)
    draw.ellipse([x0 + 3, y + 3, x0 + bw - 3, y + bh - 3], fill=WHITE)
    inner = [(cx - bw // 10 + 4, cy), (cx + bw // 10 - 4, cy), (tail_x, y + bh + size - 6)]
    draw.polygon(inner, fill=WHITE)
    draw.multiline_text((cx, cy), wrapped, font=f, fill=INK, anchor="mm", align="center")
    return y + bh + size


def letter_sfx(
    draw: ImageDraw.ImageDraw, rng: random.Random, text: str, size: tuple[int, int], hue: float, letter: int
) -> None:
    """A big outlined sound effect somewhere in the lower half."""
    w, h = size
    f = font(int(letter * rng.uniform(1.8, 2.6)))
    x, y = rng.randint(10, max(11, w // 2)), rng.randint(h // 2, max(h // 2 + 1, h - 3 * letter))
    draw.text((x, y), text, font=f, fill=hsv(hue + 0.15, 0.9, 1.0), stroke_width=4, stroke_fill=INK)


def draw_panel(
    rng: random.Random, size: tuple[int, int], text: dict[str, list[str]], hue: float, letter: int
) -> Image.Image:
    """One panel's art and lettering, drawn on its own image so that anything outside is clipped."""
    img = Image.new("RGB", size, PAPER)
    draw_art(img, rng, hue + rng.uniform(-0.1, 0.1))
    draw = ImageDraw.Draw(img)
    y = 10
    for line in text["narration"]:
        y = letter_caption(draw, line, y, size[0], letter)
    for n, line in enumerate(text["dialogue"]):
        y = letter_balloon(draw, rng, line, y, size[0], letter, right=(n % 2 == 1))
    for word in text["sfx"]:
        letter_sfx(draw, rng, word, size, hue, letter)
    return img


def draw_cover(img: Image.Image, rng: random.Random, book: str, hue: float) -> None:
    """A full-bleed cover with the series title and an issue number box."""
    draw_art(img, rng, hue)
    draw = ImageDraw.Draw(img)
    # The bundled font has no accented glyphs: letter "Rêve" as "REVE", as a letterer would.
    folded = unicodedata.normalize("NFKD", book.rsplit(" - ", 1)[0])
    title = folded.encode("ascii", "ignore").decode().upper()
    w = img.size[0]
    draw.rectangle([0, 0, w, 260], fill=hsv(hue, 0.8, 0.6))
    draw.text((w // 2, 130), title, font=font(110), fill=WHITE, anchor="mm", stroke_width=5, stroke_fill=INK)
    draw.rectangle([w - 230, 290, w - 60, 420], fill=WHITE, outline=INK, width=5)
    draw.text((w - 145, 355), f"#{rng.randint(1, 99)}", font=font(80), fill=INK, anchor="mm")


def scan_noise(img: Image.Image, rng: random.Random) -> Image.Image:
    """Add grey sensor noise to the whole page, as real scans have; numpy, no Python loops."""
    amplitude = rng.randint(3, 9)
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    w, h = img.size
    noise = noise_rng.integers(-amplitude, amplitude + 1, size=(h, w, 1), dtype=np.int16)
    pixels = np.asarray(img, dtype=np.int16) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def book_hue(seed: int, book: str) -> float:
    """A book's base hue, so that its pages share a palette as a real book's do."""
    return random.Random(f"{seed}:{book}").random()


# --- pages and corpus ----------------------------------------------------------------------


def relative_parts(job: PageJob, suffix: str) -> list[str]:
    """`<Book>/JPG4CBZ/0001<suffix>`: the same tree under images/ and dataspecs/."""
    return [job.book, CONTAINER, f"{job.number:04d}{suffix}"]


def make_page(job: PageJob) -> PageResult:
    """Draw, save and describe one page; runs in a pool worker for large corpora."""
    rng = random.Random(f"{job.seed}:{job.index}")
    hue = book_hue(job.seed, job.book)
    width, height = rng.randint(1650, 1988), rng.randint(2500, 3056)
    kind = page_kind(rng, job.index, job.number)
    page = Image.new("RGB", (width, height), PAPER)
    if kind == "cover":
        draw_cover(page, rng, job.book, hue)
    elif kind == "pinup":
        draw_art(page, rng, hue)
    panels = []
    letter = rng.randint(26, 31) if kind == "dense" else rng.randint(32, 40)
    draw = ImageDraw.Draw(page)
    for x, y, w, h in layout(rng, width, height, kind):
        text = sample_text.panel_text(rng)
        page.paste(draw_panel(rng, (w, h), text, hue, letter), (x, y))
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=INK, width=rng.randint(4, 7))
        panels.append({"panel_coords": [x, y, w, h], "text": text})
    page = scan_noise(page, rng)

    out = Path(job.out)
    image_rel = relative_parts(job, ".jpg")
    page.save(out.joinpath("images", *image_rel), "JPEG", quality=JPEG_QUALITY)
    image_path = "\\".join([WINDOWS_ROOT, *image_rel]) if job.windows_paths else "/".join(image_rel)
    spec = {"page_image_path": image_path, "panels": panels}
    spec_rel = relative_parts(job, ".json")
    spec_text = json.dumps(spec, indent=2, ensure_ascii=False) + "\n"
    out.joinpath("dataspecs", *spec_rel).write_text(spec_text, encoding="utf-8")
    separator = "\\" if rng.random() < BACKSLASH_LINES else "/"
    return PageResult(separator.join(["dataspecs", *spec_rel]), len(panels))


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="directory to write the corpus into")
    parser.add_argument("--pages", type=int, required=True, help="number of pages")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    parser.add_argument(
        "--windows-paths",
        action="store_true",
        help=f"write page_image_path as absolute Windows paths under {WINDOWS_ROOT} (needs --path-map)",
    )


def run(args: argparse.Namespace) -> int:
    summary = make_sample(args.out, args.pages, seed=args.seed, windows_paths=args.windows_paths)
    print(summary.report())
    return 0
