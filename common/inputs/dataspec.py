"""Reading one DataSpec JSON into a `PageSpec`.

Real DataSpecs come from several writers over years (docs/inputs.md, "DataSpec files"): other encodings, a list
around the page, other key names for the image and the panels, boxes as `panel_coords`, COCO
`bbox` or polygons, text as dicts, lists, strings or `speakers`. All of them are normalised here,
once, so that nothing downstream guesses. Anything that cannot be read is a `DataSpecError` that
names the file and the reason, so the producer can record the page as failed and go on.

A panel entry that cannot be read fails its page, its reason naming the entry, the field and the
value (the original embedded such a page as one full-page panel, with no error): a box that is not
4 finite numbers or has no area, a polygon of fewer than 3 points, text that is not a string, a
list of strings or a dict of those. A panel with no box at all (no box key, or null, or `[]`) is
dropped and counted, as are the panels past the first MAX_PANELS, whatever they hold.

Our own tools (the sample corpus, the DataSpec builder) write one form only, `DataSpecRecord`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from comix_embed.common.config import MAX_PANELS
from comix_embed.common.inputs.locations import RemoteURL
from comix_embed.common.inputs.pages import Box, PageSpec, PanelSpec
from comix_embed.common.inputs.read_errors import InputUnreadable
from comix_embed.common.inputs.reading import read_bytes
from comix_embed.common.inputs.user_text import decode_user_text

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
FRACTION_LIMIT = 1.1  # COCO boxes whose values are all <= this are fractions of the page
# A panel's box comes from the first of these keys it has, in this order
XYWH_KEYS = ("panel_coords", "bbox", "box")
POLYGON_KEYS = ("polygon", "segmentation")

_NARRATION = ("narrat", "caption")
_SFX = ("sfx", "sound", "onomatopoeia", "effect")


class PanelRecord(msgspec.Struct):
    """One panel as our tools write it: an x, y, w, h box in pixels and its text by kind."""

    panel_coords: list[int]
    text: dict[str, list[str]]


class DataSpecRecord(msgspec.Struct):
    """The DataSpec form our tools write (docs/inputs.md, "DataSpec files"), read back like any other."""

    page_image_path: str
    panels: list[PanelRecord]


class DataSpecError(Exception):
    """A DataSpec that cannot be used; the message names the file and the field or reason."""


class PanelError(ValueError):
    """A panel entry that cannot be read; the message names the entry, the field and the value."""


@dataclass
class DataSpecRead:
    """A DataSpec's page, and how many of its panels had no usable box and were dropped."""

    spec: PageSpec
    dropped_panels: int = 0


def read_dataspec(path: Path | RemoteURL) -> PageSpec:
    """The page a DataSpec file describes (see `load_dataspec` for the dropped-panel count)."""
    return load_dataspec(path).spec


def load_dataspec(path: Path | RemoteURL) -> DataSpecRead:
    """Read and normalise a DataSpec file or object; raise DataSpecError naming it on bad input."""
    try:
        raw = read_bytes(path)
    except InputUnreadable as exc:
        raise DataSpecError(f"DataSpec {exc.where}: cannot read: {exc.reason}") from exc
    text = decode_user_text(raw)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataSpecError(
            f"DataSpec {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    return parse_dataspec(data, str(path))


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
    key, raw_panels = _panel_list(data)
    panels: list[PanelSpec] = []
    dropped = 0
    for i, item in enumerate(raw_panels):
        try:
            panel = _panel(item, f"{key}[{i}]")
        except PanelError as exc:
            if len(panels) >= MAX_PANELS:  # past the cap: dropped and counted, whatever it holds
                dropped += 1
                continue
            raise DataSpecError(f"DataSpec {name}: {exc}") from None
        if panel is None:
            dropped += 1
        else:
            panels.append(panel)
    return DataSpecRead(PageSpec(image=image, panels=panels), dropped_panels=dropped)


def _panel_list(data: dict[str, Any]) -> tuple[str, list[Any]]:
    """(key, list) of the first of PANEL_LIST_KEYS holding a list with at least one object.

    Only these keys are read: guessing from any list of objects would take a page-level
    `characters` or `faces` list for panels.
    """
    for key in PANEL_LIST_KEYS:
        value = data.get(key)
        if isinstance(value, list) and any(isinstance(item, dict) for item in value):
            return key, value
    return "panels", []


def _panel(item: Any, where: str) -> PanelSpec | None:
    """The panel of one entry of the panel list (`where` names it), None when it has no box.

    Raises PanelError for an entry that cannot be read.
    """
    if not isinstance(item, dict):
        raise PanelError(f"{where} is {_shown(item)}, not an object")
    found = _box(item, where)
    if found is None:
        return None
    box, fraction, source = found
    _check_text(item, where)
    return PanelSpec(box=box, text=panel_text(item), fraction=fraction, characters=_characters(item), source=source)


def _numbers(value: Any) -> list[float] | None:
    """`value` as a list of finite numbers, or None (booleans and numeric strings refused)."""
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return list(value)


def _box(item: dict[str, Any], where: str) -> tuple[Box, bool, str] | None:
    """([x, y, w, h], fraction, source) from the first box key the entry has, None if it has none.

    `panel_coords` is pixels; `bbox`/`box` are COCO xywh, fractions of the page when every value
    is <= FRACTION_LIMIT; `polygon`/`segmentation` give their bounding box. Pixel values are
    truncated with int() as the original did for `panel_coords` (the crop and the composition
    features depend on it); fractions stay floats. `source` names the field, for later errors.
    """
    key = next((k for k in (*XYWH_KEYS, *POLYGON_KEYS) if item.get(k) not in (None, [])), None)
    if key is None:
        return None
    value, source = item[key], f"{where}.{key}"
    if key in XYWH_KEYS:
        coords = _numbers(value)
        if coords is None or len(coords) != 4:
            raise PanelError(f"{source} is {_shown(value)}: expected 4 finite numbers [x, y, w, h]")
        fraction = key != "panel_coords" and max(coords) <= FRACTION_LIMIT
    else:
        points = _flatten(value)
        if points is None or len(points) % 2:
            raise PanelError(f"{source} is {_shown(value)}: expected x, y pairs of finite numbers")
        if len(points) < 6:
            raise PanelError(f"{source} is {_shown(value)}: a polygon needs at least 3 points")
        xs, ys = points[0::2], points[1::2]
        coords = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        fraction = max(points) <= FRACTION_LIMIT
    box = [float(v) if fraction else float(int(v)) for v in coords]
    if box[2] <= 0 or box[3] <= 0:
        what = "box" if key in XYWH_KEYS else "bounding box " + _shown(box)
        raise PanelError(f"{source} is {_shown(value)}: its {what} has no area (width and height must be > 0)")
    return box, fraction, source


def _shown(value: Any, limit: int = 80) -> str:
    """A value as JSON for an error message (NaN shown as NaN), cut to `limit` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _flatten(value: Any) -> list[float] | None:
    """Numbers of a flat `[x1, y1, ...]`, point `[[x, y], ...]` or COCO `[[x1, y1, ...], ...]` list."""
    if not isinstance(value, list):
        return None
    flat: list[Any] = []
    for v in value:
        flat.extend(v if isinstance(v, list) else [v])
    return _numbers(flat)


def _check_text(item: dict[str, Any], where: str) -> None:
    """Refuse panel text that is not a string, a list of strings or a dict of those (null: none).

    The text of `speakers` entries is held to the same rule.
    """
    text = item.get("text")
    if isinstance(text, dict):
        for key, value in text.items():
            _check_strings(value, f"{where}.text.{key}")
    else:
        _check_strings(text, f"{where}.text", "a string, a list of strings, or a dict of those")
    speakers = item.get("speakers")
    if speakers is None:
        return
    if not isinstance(speakers, list):
        raise PanelError(f"{where}.speakers is {_shown(speakers)}: expected a list of objects")
    for j, speaker in enumerate(speakers):
        if not isinstance(speaker, dict):
            raise PanelError(f"{where}.speakers[{j}] is {_shown(speaker)}: expected an object")
        for key in ("dialogue", "text"):
            _check_strings(speaker.get(key), f"{where}.speakers[{j}].{key}")


def _check_strings(value: Any, field: str, expected: str = "a string or a list of strings") -> None:
    if value is None or isinstance(value, str):
        return
    if isinstance(value, list) and all(v is None or isinstance(v, str) for v in value):
        return
    raise PanelError(f"{field} is {_shown(value)}: expected {expected}")


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
