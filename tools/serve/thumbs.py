"""Page thumbnails, made on the fly and kept in a bounded least-recently-used cache.

A thumbnail is the page upright (EXIF orientation applied, as the workers read it, so that panel
boxes in original pixels land where they belong), scaled to fit a square, optionally with one
panel outlined, as JPEG. JPEGs are decoded at reduced scale (Pillow's draft mode: libjpeg's DCT
scaling), so a thumbnail of a 6-megapixel scan costs a fraction of a full decode. The image is
checked as the workers check it (`open_image`: size limit, decompression bombs).

The cache holds encoded thumbnails up to a byte budget (256 MB by default: ~20,000 grid
thumbnails); the least recently used go first. Several server threads share it under one lock;
two threads asking for the same missing thumbnail may both make it (harmless, and cheaper than
holding the lock while decoding).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageOps

from comix_embed.common.model.preprocess import EXIF_ORIENTATION, PageImageError, open_image

DEFAULT_CACHE_BYTES = 256 << 20
GRID_SIZE = 256  # result grid
PAGE_SIZE = 1600  # the page view
MIN_SIZE, MAX_SIZE = 32, 2048
JPEG_QUALITY = 85
OUTLINE = (255, 64, 32)


@dataclass(frozen=True)
class Thumbnail:
    """An encoded thumbnail and the page's upright size in original pixels (boxes' coordinates)."""

    jpeg: bytes
    page_size: tuple[int, int]


def render(data: bytes, name: str, size: int, box: list[float] | None = None) -> Thumbnail:
    """The page image `data` (`name` for errors) fitted into size x size, `box` (x, y, w, h,
    original pixels) outlined.

    Raises PageImageError when the bytes are not a usable image.
    """
    img = open_image(data, name)
    width, height = img.size  # boxes are in the upright page's pixels, as the workers saw it
    if img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
        width, height = height, width
    try:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # decode at the smallest scale that still covers `size`
        upright = ImageOps.exif_transpose(img).convert("RGB")
        upright.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    except Exception as exc:  # truncated or damaged data: Pillow says why
        raise PageImageError(f"cannot decode image {name}: {exc}") from exc
    if box is not None:
        sx, sy = upright.size[0] / width, upright.size[1] / height
        x, y, w, h = box
        line = max(3, round(min(upright.size) / 80))
        rect = (x * sx, y * sy, max(x * sx + 1, (x + w) * sx - 1), max(y * sy + 1, (y + h) * sy - 1))
        ImageDraw.Draw(upright).rectangle(rect, outline=OUTLINE, width=line)
    out = io.BytesIO()
    upright.save(out, format="JPEG", quality=JPEG_QUALITY)
    return Thumbnail(out.getvalue(), (width, height))


class ThumbnailCache:
    """Thumbnails by key, least recently used dropped first once `max_bytes` is exceeded."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Hashable, Thumbnail] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, make: Callable[[], Thumbnail]) -> Thumbnail:
        """The cached thumbnail of `key`, or `make()`'s, cached within the budget."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        made = make()
        with self._lock:
            if key not in self._items and len(made.jpeg) <= self.max_bytes:
                self._items[key] = made
                self.bytes += len(made.jpeg)
                while self.bytes > self.max_bytes:
                    _, dropped = self._items.popitem(last=False)
                    self.bytes -= len(dropped.jpeg)
        return made
