"""The VLM JSON of a page: its panels in reading order, and each panel's text by kind.

The text is folded as the users' DataSpec writer folded it (`text` and `speakers`, then the
panel's `caption` and `description` as narration), with the DataSpec reader's own `panel_text`,
so that a DataSpec written here reads back as the VLM said.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from comix_embed.common.config import TEXT_KEYS
from comix_embed.common.inputs.dataspec import panel_text as read_panel_text
from comix_embed.common.inputs.dataspec import strings
from comix_embed.common.inputs.locations import RemoteURL
from comix_embed.common.inputs.read_errors import InputNotFound, InputUnreadable
from comix_embed.common.inputs.reading import read_bytes
from comix_embed.tools.dataspec_builder.mapping import input_location
from comix_embed.tools.dataspec_builder.report import Drop

VLM_PANEL_KEYS = ("panels", "VLM_panels", "vlm_panels")


def vlm_panels(vlm_path: str, mapping_dir: Path | RemoteURL) -> list[dict[str, Any]]:
    """The VLM's panels in file order, or Drop (vlm_missing / vlm_unreadable) naming the file."""
    path = input_location(vlm_path, mapping_dir) if vlm_path else None
    if path is None:
        raise Drop("vlm_missing", f"VLM JSON path cannot be read on this machine: {vlm_path!r}")
    try:
        data = json.loads(read_bytes(path).decode("utf-8-sig"))
    except InputNotFound:
        raise Drop("vlm_missing", f"VLM JSON not found: {path}") from None
    except InputUnreadable as exc:
        raise Drop("vlm_unreadable", f"VLM JSON {path}: cannot read: {exc.reason}") from None
    except UnicodeDecodeError as exc:
        raise Drop("vlm_unreadable", f"VLM JSON {path}: not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise Drop("vlm_unreadable", f"VLM JSON {path}: invalid JSON at {where}: {exc.msg}") from None
    lists = (data.get(key) for key in VLM_PANEL_KEYS) if isinstance(data, dict) else ()
    panels = next((value for value in lists if isinstance(value, list)), None)
    if panels is None:
        raise Drop("vlm_unreadable", f"VLM JSON {path}: no panel list (tried keys {', '.join(VLM_PANEL_KEYS)})")
    bad = next((i for i, panel in enumerate(panels) if not isinstance(panel, dict)), None)
    if bad is not None:
        raise Drop("vlm_unreadable", f"VLM JSON {path}: panel {bad} is not an object")
    return panels


def panel_text(panel: dict[str, Any]) -> dict[str, list[str]]:
    """A VLM panel's text by kind, as the users' DataSpec writer folded it.

    `text` and `speakers` as the DataSpec reader reads them, then the panel's `caption` and
    `description` as narration: the VLM's descriptions are what most pages' narration holds in
    the embedded corpus. Empty strings are dropped.
    """
    out = read_panel_text(panel)
    for key in ("caption", "description"):
        out["narration"].extend(strings(panel.get(key)))
    return {key: [t for t in out.get(key, []) if t] for key in TEXT_KEYS}
