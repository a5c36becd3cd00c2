"""One page of the corpus: drawn, lettered, saved as a JPEG, and described by its DataSpec.

A page is made from its `PageJob` alone (its RNG is seeded by the corpus seed and the page's
index), so that a pool worker draws the same bytes as the parent would.
"""

from __future__ import annotations

import json
import random
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import msgspec
from PIL import Image, ImageDraw

from comix_embed.common.inputs.dataspec import DataSpecRecord, PanelRecord
from comix_embed.tools.sample.drawing import INK, PAPER, WHITE, book_hue, draw_art, hsv, scan_noise
from comix_embed.tools.sample.layout import layout, page_kind
from comix_embed.tools.sample.lettering import font, letter_balloon, letter_caption, letter_sfx
from comix_embed.tools.sample.text import panel_text

WINDOWS_ROOT = "E:\\CalibreComics_extracted"
CONTAINER = "JPG4CBZ"
BACKSLASH_LINES = 0.08  # share of list lines written with Windows separators
JPEG_QUALITY = 85


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


def draw_panel(
    rng: random.Random, size: tuple[int, int], text: dict[str, list[str]], hue: float, letter: int
) -> Image.Image:
    """One panel's art and lettering, drawn on its own image so that anything outside is clipped."""
    img = Image.new("RGB", size, PAPER)
    draw_art(img, rng, hue + rng.uniform(-0.1, 0.1))
    draw = ImageDraw.Draw(img)
    y: float = 10
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
        text = panel_text(rng)
        page.paste(draw_panel(rng, (w, h), text, hue, letter), (x, y))
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=INK, width=rng.randint(4, 7))
        panels.append(PanelRecord(panel_coords=[x, y, w, h], text=text))
    page = scan_noise(page, rng)

    out = Path(job.out)
    image_rel = relative_parts(job, ".jpg")
    page.save(out.joinpath("images", *image_rel), "JPEG", quality=JPEG_QUALITY)
    image_path = "\\".join([WINDOWS_ROOT, *image_rel]) if job.windows_paths else "/".join(image_rel)
    spec = DataSpecRecord(page_image_path=image_path, panels=panels)
    spec_rel = relative_parts(job, ".json")
    spec_text = json.dumps(msgspec.to_builtins(spec), indent=2, ensure_ascii=False) + "\n"
    out.joinpath("dataspecs", *spec_rel).write_text(spec_text, encoding="utf-8")
    separator = "\\" if rng.random() < BACKSLASH_LINES else "/"
    return PageResult(separator.join(["dataspecs", *spec_rel]), len(panels))
