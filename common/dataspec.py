"""Reading one DataSpec JSON into a `PageSpec`.

Real DataSpecs come from several writers over years (spec/dataspec.md): other encodings, a list
around the page, other key names for the image and the panels, boxes as `panel_coords`, COCO
`bbox` or polygons, text as dicts, lists, strings or `speakers`. All of them are normalised here,
once, so that nothing downstream guesses. Anything that cannot be read is a `DataSpecError` that
names the file and the reason, so the producer can record the page as failed and go on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comix_embed.common.pages import Box, PageSpec, PanelSpec

IMAGE_KEYS = ("page_image_path", "image_path", "image", "IMAGE_PATH")
PANEL_LIST_KEYS = (
    "panels",
    "VLM_panels",
    "vlm_panels",
    "panels_vlm",
    "panel_detections",
    "rcnn_panels",
    "panel_boxes",
    "panel_list",
    "detections",
    "boxes",
    "segments",
    "annotations",
)
# The original tried utf-8, utf-8-sig, cp1252, latin-1, then utf-8 with replacement. utf-8-sig
# succeeds exactly when utf-8 does (we strip a BOM ourselves), and latin-1 decodes any bytes,
# so this chain reads every file the original read, the same way.
ENCODINGS = ("utf-8", "cp1252", "latin-1")
FRACTION_LIMIT = 1.1  # COCO boxes whose values are all <= this are fractions of the page

_NARRATION = ("narrat", "caption")
_SFX = ("sfx", "sound", "onomatopoeia", "effect")


class DataSpecError(Exception):
    """A DataSpec that cannot be used; the message names the file and the field or reason."""


@dataclass
class DataSpecRead:
    """A DataSpec's page, and how many of its panels had no usable box and were dropped."""

    spec: PageSpec
    dropped_panels: int = 0


def read_dataspec(path: Path) -> PageSpec:
    """The page a DataSpec file describes (see `load_dataspec` for the dropped-panel count)."""
    return load_dataspec(path).spec


def load_dataspec(path: Path) -> DataSpecRead:
    """Read and normalise a DataSpec file; raise DataSpecError naming the file on bad input."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DataSpecError(f"DataSpec {path}: cannot read: {exc.strerror or exc}") from exc
    text = _decode(raw)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataSpecError(
            f"DataSpec {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    return parse_dataspec(data, str(path))


def _decode(raw: bytes) -> str:
    """Text of the file: the first of ENCODINGS that decodes it strictly, without a BOM."""
    for encoding in ENCODINGS[:-1]:
        try:
            return raw.decode(encoding).removeprefix("\ufeff")
        except UnicodeDecodeError:
            continue
    return raw.decode(ENCODINGS[-1])  # latin-1 decodes any bytes


def parse_dataspec(data: Any, name: str) -> DataSpecRead:
    """Normalise already-decoded DataSpec JSON; `name` (the file) is used in error messages."""
    if isinstance(data, list):
        if not data:
            raise DataSpecError(f"DataSpec {name}: top-level list is empty")
        data = data[0]
    if not isinstance(data, dict):
        raise DataSpecError(f"DataSpec {name}: expected a JSON object (or a list of them), got {type(data).__name__}")
    image = next((v.strip() for k in IMAGE_KEYS if isinstance(v := data.get(k), str) and v.strip()), None)
    if image is None:
        raise DataSpecError(f"DataSpec {name}: no image path (tried keys {', '.join(IMAGE_KEYS)})")
    raw_panels = _panel_list(data)
    panels = [p for p in map(_panel, raw_panels) if p is not None]
    return DataSpecRead(PageSpec(image=image, panels=panels), dropped_panels=len(raw_panels) - len(panels))


def _panel_list(data: dict[str, Any]) -> list[Any]:
    """The first of PANEL_LIST_KEYS holding a non-empty list with at least one object.

    Only these keys are read: guessing from any list of objects would take a page-level
    `characters` or `faces` list for panels.
    """
    for key in PANEL_LIST_KEYS:
        value = data.get(key)
        if isinstance(value, list) and any(isinstance(item, dict) for item in value):
            return value
    return []


def _panel(item: Any) -> PanelSpec | None:
    if not isinstance(item, dict):
        return None
    found = _box(item)
    if found is None:
        return None
    box, fraction = found
    return PanelSpec(box=box, text=panel_text(item), fraction=fraction, characters=_characters(item))


def _numbers(value: Any) -> list[float] | None:
    """`value` as a list of finite numbers, or None (booleans and numeric strings refused)."""
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return list(value)


def _box(item: dict[str, Any]) -> tuple[Box, bool] | None:
    """([x, y, w, h], fraction) from `panel_coords`, `bbox`/`box` (xywh) or `polygon`/`segmentation`.

    Pixel values are truncated with int() as the original did for `panel_coords` (the crop and
    the composition features depend on it); fractions stay floats. A negative width or height
    makes the box unusable.
    """
    coords = _numbers(item.get("panel_coords"))
    if coords is not None and len(coords) == 4:
        return _checked(coords, fraction=False)
    for key in ("bbox", "box"):
        coords = _numbers(item.get(key))
        if coords is not None and len(coords) == 4:
            return _checked(coords, fraction=max(coords) <= FRACTION_LIMIT)
    for key in ("polygon", "segmentation"):
        points = _flatten(item.get(key))
        if points is not None and len(points) >= 4 and len(points) % 2 == 0:
            xs, ys = points[0::2], points[1::2]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            return _checked(box, fraction=max(points) <= FRACTION_LIMIT)
    return None


def _checked(box: list[float], fraction: bool) -> tuple[Box, bool] | None:
    if box[2] < 0 or box[3] < 0:
        return None
    return [float(v) if fraction else float(int(v)) for v in box], fraction


def _flatten(value: Any) -> list[float] | None:
    """Numbers of a flat `[x1, y1, ...]`, point `[[x, y], ...]` or COCO `[[x1, y1, ...], ...]` list."""
    if not isinstance(value, list):
        return None
    flat: list[Any] = []
    for v in value:
        flat.extend(v if isinstance(v, list) else [v])
    return _numbers(flat)


def strings(value: Any) -> list[str]:
    """Stripped strings of a string or a list; None and non-strings are dropped, empties kept."""
    if isinstance(value, str):
        return [value.strip()]
    if isinstance(value, list):
        return [v.strip() for v in value if isinstance(v, str)]
    return []


def panel_text(item: dict[str, Any]) -> dict[str, list[str]]:
    """Panel text by kind, in file order: the `text` field first, then `speakers`.

    Shared with `comix-embed dataspec`, which folds VLM panels into DataSpec text the same way.
    """
    out: dict[str, list[str]] = {"dialogue": [], "narration": [], "sfx": []}
    text = item.get("text")
    if isinstance(text, dict):
        for key, value in text.items():
            kind = {"narration": "narration", "caption": "narration", "sfx": "sfx"}.get(key, "dialogue")
            out[kind].extend(strings(value))
    else:
        out["dialogue"].extend(strings(text))
    speakers = item.get("speakers")
    for speaker in speakers if isinstance(speakers, list) else []:
        if not isinstance(speaker, dict):
            continue
        said = speaker.get("dialogue")
        if said is None:
            said = speaker.get("text")
        kind = str(speaker.get("speech_type") or "").lower()
        if any(word in kind for word in _NARRATION):
            bucket = "narration"
        elif any(word in kind for word in _SFX):
            bucket = "sfx"
        else:
            bucket = "dialogue"
        out[bucket].extend(strings(said))
    return out


def _characters(item: dict[str, Any]) -> list[Box]:
    """Character boxes [x, y, w, h] of a panel, from `characters`, else `faces` (`bbox` or `box`)."""
    for key in ("characters", "faces"):
        entries = item.get(key)
        if not isinstance(entries, list) or not entries:
            continue
        boxes: list[Box] = []
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            coords = _numbers(entry.get("bbox"))
            if coords is None or len(coords) != 4:
                coords = _numbers(entry.get("box"))
            if coords is not None and len(coords) == 4:
                boxes.append([float(v) for v in coords])
        return boxes
    return []
