"""A page turned into model inputs, exactly as docs/model.md, "Turning a page into inputs", says.

Per valid panel: a 224x224 RGB crop (uint8 here; the device divides by 255, no mean/std
normalisation), the joined text, 7 composition features and the box in original pixels.

Reduced-size decoding (`fast_decode`): libjpeg-turbo (through simplejpeg) decodes a JPEG at M/8
of its size for a fraction of the work. We use the smallest size at which every crop of the page
still has at least `IMAGE_SIZE` pixels on each side, so the final resize still only shrinks. Outputs then differ
from the exact path by resampling noise only (see benchmarks/RESULTS.md for the measured cosine).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field

import numpy as np
import simplejpeg
from PIL import Image, ImageOps

from comix_embed.common import config
from comix_embed.common.inputs.pages import PageSpec, PanelSpec
from comix_embed.common.store.schema import STATUS_FULL_PAGE, STATUS_OK

# We check the pixel count ourselves (below) with a clear message; Pillow's own guard stays as a
# second line of defence at the same bound.
Image.MAX_IMAGE_PIXELS = config.MAX_IMAGE_PIXELS
EXIF_ORIENTATION = 0x0112
REDUCING_GAP = 3.0


class PageImageError(Exception):
    """The page's image cannot be used; the message is recorded as the page's error."""


class PanelOutsideImage(PageImageError):
    """A panel box that misses the image entirely: known only once the image's size is, so the
    page fails here rather than when its DataSpec is read (a box partly outside is clipped)."""


@dataclass
class PreparedPage:
    """Model inputs of one page's valid panels (n = number of panels, 1..MAX_PANELS)."""

    crops: np.ndarray  # (n, 224, 224, 3) uint8
    texts: list[str]
    comp: np.ndarray  # (n, 7) float32
    coords: np.ndarray  # (n, 4) float32, x y w h in original pixels
    text_json: list[str]  # per panel, JSON of its text by kind
    page_text: str
    status: int
    dropped_panels: int = 0
    size: tuple[int, int] = (0, 0)
    timings: dict[str, float] = field(default_factory=dict)


def empty_text() -> dict[str, list[str]]:
    return {k: [] for k in config.TEXT_KEYS}


def join_text(text: dict[str, list[str]]) -> str:
    """Non-empty stripped strings of dialogue, narration, sfx in that order, joined by ' | '."""
    parts = []
    for key in config.TEXT_KEYS:
        for value in text.get(key, []):
            if isinstance(value, str) and value.strip():
                parts.append(value.strip())
    return config.TEXT_JOINER.join(parts)


def text_to_json(text: dict[str, list[str]]) -> str:
    return json.dumps({k: list(text.get(k, [])) for k in config.TEXT_KEYS}, ensure_ascii=False)


def page_text_json(panels: list[PanelSpec]) -> str:
    """The page's text as one JSON object, every panel's strings in panel order."""
    merged = empty_text()
    for panel in panels:
        for key in config.TEXT_KEYS:
            merged[key].extend(panel.text.get(key, []))
    return text_to_json(merged)


def pixel_box(box: list[float], fraction: bool, width: int, height: int) -> list[float]:
    """A box in original pixels, from pixels or from fractions of the page."""
    if not fraction:
        return [float(v) for v in box]
    return [box[0] * width, box[1] * height, box[2] * width, box[3] * height]


def composition_features(box: list[float], width: int, height: int, characters: list[list[float]]) -> np.ndarray:
    """[aspect, size_ratio, char_count, shot_mean, shot_max, mean_cx, mean_cy] from the unclamped box."""
    x, y, w, h = box
    aspect = (w + 1e-6) / (h + 1e-6)
    size_ratio = w * h / (width * height + 1e-6)
    if not characters:
        return np.array([aspect, size_ratio, 0.0, 0.0, 0.0, 0.5, 0.5], dtype=np.float32)
    shots = [cw * ch / (w * h + 1e-6) for _, _, cw, ch in characters]
    cxs = [(cx + cw / 2 - x) / (w + 1e-6) for cx, _, cw, _ in characters]
    cys = [(cy + ch / 2 - y) / (h + 1e-6) for _, cy, _, ch in characters]
    return np.array(
        [aspect, size_ratio, len(characters), np.mean(shots), np.max(shots), np.mean(cxs), np.mean(cys)],
        dtype=np.float32,
    )


def overlaps(box: list[float], width: int, height: int) -> bool:
    """Whether a pixel box [x, y, w, h] shares any area with the width x height image."""
    x, y, w, h = box
    return x < width and y < height and x + w > 0 and y + h > 0


def crop_box(box: list[float], width: int, height: int) -> tuple[int, int, int, int]:
    """The clamped crop rectangle (x, y, x2, y2) (docs/model.md, "Turning a page into inputs")."""
    x = min(max(int(box[0]), 0), width - 1)
    y = min(max(int(box[1]), 0), height - 1)
    w = max(1, int(box[2]))
    h = max(1, int(box[3]))
    return x, y, max(x + 1, min(x + w, width)), max(y + 1, min(y + h, height))


_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _decode(img: Image.Image, data: bytes, orientation: int, smallest_crop: int, fast: bool, name: str) -> Image.Image:
    """The page, upright and RGB. With `fast`, a JPEG is decoded by libjpeg-turbo's DCT scaling
    at the smallest size where the smallest crop keeps IMAGE_SIZE pixels on each side (M/8 steps)."""
    if fast and img.format == "JPEG":
        factor = min(1.0, config.IMAGE_SIZE / max(1, smallest_crop))
        try:
            pixels = simplejpeg.decode_jpeg(
                data,
                colorspace="RGB",
                min_width=math.ceil(img.size[0] * factor),
                min_height=math.ceil(img.size[1] * factor),
            )
        except ValueError:
            pass  # CMYK, odd or damaged JPEGs: Pillow decodes them or says why not
        else:
            page = Image.fromarray(pixels)
            return page.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else page
    try:
        page = ImageOps.exif_transpose(img)
        if page.mode != "RGB":
            page = page.convert("RGB")
        page.load()
    except Exception as exc:
        raise PageImageError(f"cannot decode image {name}: {exc}") from exc
    return page


def open_image(data: bytes, name: str) -> Image.Image:
    """Header only: size and format checked before any pixel is decoded."""
    if not data:
        raise PageImageError(f"image file is empty (0 bytes): {name}")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise PageImageError(f"image refused as a decompression bomb: {name}: {exc}") from exc
    except Image.UnidentifiedImageError:
        raise PageImageError(f"not a readable image (unknown or corrupt format): {name}") from None
    except Exception as exc:
        raise PageImageError(f"not a readable image: {name}: {exc}") from exc
    pixels = img.size[0] * img.size[1]
    if pixels > config.MAX_IMAGE_PIXELS:
        raise PageImageError(
            f"image refused as a decompression bomb: {name} is {img.size[0]}x{img.size[1]} "
            f"= {pixels} pixels, over the limit of {config.MAX_IMAGE_PIXELS} (COMIX_MAX_IMAGE_PIXELS)"
        )
    return img


def prepare_page(spec: PageSpec, data: bytes, name: str, fast_decode: bool = False) -> PreparedPage:
    """Decode the image bytes and build the inputs of every valid panel.

    A page without panels becomes one full-page panel (status 3), never a NaN page.
    """
    img = open_image(data, name)
    orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    width, height = img.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    panels = spec.panels[: config.MAX_PANELS]
    dropped = max(0, len(spec.panels) - config.MAX_PANELS)
    status = STATUS_OK
    if not panels:
        panels = [PanelSpec(box=[0, 0, width, height])]
        status = STATUS_FULL_PAGE
    boxes = [pixel_box(p.box, p.fraction, width, height) for p in panels]
    for i, (panel, box) in enumerate(zip(panels, boxes)):
        if not overlaps(box, width, height):
            units = "fractions of the page" if panel.fraction else "pixels"
            raise PanelOutsideImage(
                f"{panel.source or f'panel {i}'}: box [{', '.join(f'{v:g}' for v in panel.box)}] (x, y, w, h in "
                f"{units}) lies entirely outside the {width}x{height} image {name}"
            )
    rects = [crop_box(b, width, height) for b in boxes]
    smallest = min(min(x2 - x, y2 - y) for x, y, x2, y2 in rects)
    img = _decode(img, data, orientation, smallest, fast_decode, name)
    sx, sy = img.size[0] / width, img.size[1] / height
    size = (config.IMAGE_SIZE, config.IMAGE_SIZE)
    crops = np.empty((len(rects), config.IMAGE_SIZE, config.IMAGE_SIZE, 3), dtype=np.uint8)
    for i, (x, y, x2, y2) in enumerate(rects):
        if not fast_decode:
            out = img.crop((x, y, x2, y2)).resize(size, Image.Resampling.BILINEAR)
        else:
            # reducing_gap: shrink by an integer factor first (cheap box filter), then bilinear
            out = img.resize(
                size, Image.Resampling.BILINEAR, box=(x * sx, y * sy, x2 * sx, y2 * sy), reducing_gap=REDUCING_GAP
            )
        crops[i] = np.asarray(out)
    comp = np.stack(
        [
            composition_features(b, width, height, [pixel_box(c, p.fraction, width, height) for c in p.characters])
            for b, p in zip(boxes, panels)
        ]
    )
    return PreparedPage(
        crops=crops,
        texts=[join_text(p.text) for p in panels],
        comp=comp,
        coords=np.array(boxes, dtype=np.float32),
        text_json=[text_to_json(p.text) for p in panels],
        page_text=page_text_json(spec.panels),
        status=status,
        dropped_panels=dropped,
        size=(width, height),
    )
