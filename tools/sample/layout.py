"""Where a page's panels go: the page's kind, and its panel boxes in reading order."""

from __future__ import annotations

import random

Box = tuple[int, int, int, int]  # x, y, w, h

DENSE_EVERY, DENSE_AT = 25, 12  # page indices 12, 37, 62, ... have 13-14 panels


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
    edges = [0.0]
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
