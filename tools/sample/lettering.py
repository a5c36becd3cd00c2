"""The lettering of a panel: narration captions, speech balloons and sound effects, in Pillow's font.

Pillow's bundled font has no accented glyphs, which is why the sample text is ASCII (`text.py`).
Text boxes are measured in floats (Pillow's bounding boxes), so the y positions are floats too.
"""

from __future__ import annotations

import random
import textwrap
from functools import lru_cache

from PIL import ImageDraw, ImageFont

from comix_embed.tools.sample.drawing import CAPTION, INK, WHITE, hsv

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=64)
def font(size: int) -> Font:
    """Pillow's bundled font at `size` px, cached because loading it costs more than drawing."""
    return ImageFont.load_default(size=size)


def letter_caption(draw: ImageDraw.ImageDraw, text: str, y: float, width: int, size: int) -> float:
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
    draw: ImageDraw.ImageDraw, rng: random.Random, text: str, y: float, width: int, size: int, right: bool
) -> float:
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
