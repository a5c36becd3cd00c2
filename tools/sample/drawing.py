"""The art of a page: its palette, scenes, figures, halftone screens and scan noise.

Everything is drawn with Pillow and numpy from the `random.Random` the caller owns, so the same
RNG state draws the same pixels; nothing loops over pixels in Python.
"""

from __future__ import annotations

import colorsys
import random
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

INK: RGB = (18, 16, 20)
WHITE: RGB = (252, 252, 250)
CAPTION: RGB = (255, 242, 186)
PAPER: RGB = (246, 242, 230)


def hsv(hue: float, sat: float, val: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, sat, val)
    return (int(r * 255), int(g * 255), int(b * 255))


def book_hue(seed: int, book: str) -> float:
    """A book's base hue, so that its pages share a palette as a real book's do."""
    return random.Random(f"{seed}:{book}").random()


@lru_cache(maxsize=8)
def halftone_mask(spacing: int, width: int = 2000, height: int = 3100) -> Image.Image:
    """A page-sized mask of round dots, made once per process and cropped per panel."""
    yy, xx = np.ogrid[:height, :width]
    half = spacing / 2
    dots = (xx % spacing - half) ** 2 + (yy % spacing - half) ** 2 < (spacing * 0.3) ** 2
    return Image.fromarray((dots * 170).astype(np.uint8), "L")


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


def scan_noise(img: Image.Image, rng: random.Random) -> Image.Image:
    """Add grey sensor noise to the whole page, as real scans have; numpy, no Python loops."""
    amplitude = rng.randint(3, 9)
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    w, h = img.size
    noise = noise_rng.integers(-amplitude, amplitude + 1, size=(h, w, 1), dtype=np.int16)
    pixels = np.asarray(img, dtype=np.int16) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
