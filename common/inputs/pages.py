"""The page as it travels from the list to the worker.

A `PageSpec` is what a DataSpec JSON says about a page once its many real-world forms are
normalised (docs/inputs.md, "DataSpec files"). A `PageTask` is one page of a batch as the producer sends it to a
worker: its store row, its identity, where its image is (relative to an image root), its panels,
or the reason it already failed. Both are plain JSON so that no pickle ever crosses the broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Box = list[float]  # [x, y, w, h]


@dataclass
class PanelSpec:
    """One panel: its box, its text by kind, and the character boxes inside it.

    `fraction` marks a box given as fractions of the page size (COCO `bbox` values <= 1.1);
    it is turned into pixels once the image size is known. Character boxes use the same units.
    `source` names the DataSpec field the box came from (`panels[3].panel_coords`), for the
    errors found only once the image is open (a box entirely outside it).
    """

    box: Box
    text: dict[str, list[str]] = field(default_factory=lambda: {"dialogue": [], "narration": [], "sfx": []})
    fraction: bool = False
    characters: list[Box] = field(default_factory=list)
    source: str = field(default="", compare=False)  # where it came from, not what it is


@dataclass
class PageSpec:
    """A DataSpec page: the image path as written in the file, and its panels in reading order."""

    image: str
    panels: list[PanelSpec] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        # built by hand: dataclasses.asdict deep-copies, and a large job sends many pages
        return {
            "image": self.image,
            "panels": [
                {"box": p.box, "text": p.text, "fraction": p.fraction, "characters": p.characters, "source": p.source}
                for p in self.panels
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PageSpec:
        return cls(image=data["image"], panels=[PanelSpec(**p) for p in data["panels"]])


@dataclass
class PageTask:
    """One page of a batch, as a worker receives it.

    `image` is relative to the worker's image root (forward slashes) once the producer applied
    the path maps; `error` is non-empty when the page already failed at the producer (missing or
    unreadable DataSpec, image outside every root), in which case the worker records it as is.
    """

    row: int
    page_id: str
    image: str = ""
    root: int = 0  # index of the image root the path is relative to
    spec: PageSpec | None = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "page_id": self.page_id,
            "image": self.image,
            "root": self.root,
            "spec": self.spec.to_json() if self.spec is not None else None,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PageTask:
        spec = PageSpec.from_json(data["spec"]) if data.get("spec") else None
        return cls(
            row=data["row"],
            page_id=data["page_id"],
            image=data.get("image", ""),
            root=data.get("root", 0),
            spec=spec,
            error=data.get("error", ""),
        )
