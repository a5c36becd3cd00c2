"""The COCO predictions file: each image's panel boxes and their scores, by image id.

Detections come as a COCO object (`images` and `annotations`) or as a bare list of annotations;
only panels (`category_id` 1) are kept, and an annotation that cannot be used is counted, not
silently skipped.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.locations import RemoteURL
from comix_embed.common.inputs.read_errors import InputNotFound, InputUnreadable
from comix_embed.common.inputs.reading import read_bytes

PANEL_CATEGORY = 1
_INTEGRAL = re.compile(r"^-?\d+\.0*$")

Box = list[float]


@dataclass
class Predictions:
    """Panel boxes `(bbox, score)` by image id; every id seen has an entry, even with no panel."""

    panels: dict[str, list[tuple[Box, float]]]
    unusable: int = 0  # annotations without an image id or a 4-number bbox, or with a bad score


def read_predictions(path: Path | RemoteURL) -> Predictions:
    """Index a COCO predictions file by image id; raise UsageError if it cannot be used at all."""
    data = _read_json_input(path, "predictions file")
    images: Any  # whatever the file holds under "images": only a list of objects with an id is used
    annotations: list[Any]
    if isinstance(data, list):
        images, annotations = [], data
    elif isinstance(data, dict) and isinstance(data.get("annotations"), list):
        images, annotations = data.get("images") or [], data["annotations"]
    else:
        raise UsageError(
            f"Predictions file {path}: expected an object with an 'annotations' list, or a list of annotations"
        )
    found = Predictions(panels={})
    for image in images if isinstance(images, list) else []:
        if isinstance(image, dict) and image.get("id") is not None:
            found.panels.setdefault(id_key(image["id"]), [])
    for ann in annotations:
        parsed = _annotation(ann)
        if parsed is None:
            found.unusable += 1
            continue
        key, category, bbox, score = parsed
        boxes = found.panels.setdefault(key, [])
        if category == str(PANEL_CATEGORY):
            boxes.append((bbox, score))
    return found


def _annotation(ann: Any) -> tuple[str, str, Box, float] | None:
    """(image id, category, bbox, score) of one annotation, or None when it is unusable."""
    if not isinstance(ann, dict) or ann.get("image_id") is None:
        return None
    bbox, score = ann.get("bbox"), ann.get("score", 1.0)
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return None
    if not _is_number(score):
        return None
    return id_key(ann["image_id"]), id_key(ann.get("category_id")), [float(v) for v in bbox], float(score)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def id_key(value: Any) -> str:
    """An id as comparable text: 12, 12.0, "12" and "12.0" are one image (spreadsheets write 12.0)."""
    text = str(value).strip()
    return text.split(".")[0] if _INTEGRAL.match(text) else text


def _read_json_input(path: Path | RemoteURL, what: str) -> Any:
    try:
        return json.loads(read_bytes(path).decode("utf-8-sig"))
    except InputNotFound:
        raise UsageError(f"{what.capitalize()} not found: {path}") from None
    except InputUnreadable as exc:
        raise UsageError(f"Cannot read {what} {path}: {exc.reason}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what.capitalize()} {path} is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{what.capitalize()} {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
