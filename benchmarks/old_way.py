"""The users' old way, kept only as the benchmarks' yardstick: per-page inputs and per-page writes.

Their script wrote each page separately into arrays chunked 1000 pages deep and compressed with
Blosc-zstd (level 6, bit shuffle): for every array, first zero the page's row, then write it.
Each write re-encodes the whole 1000-row chunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr
from PIL import Image, ImageOps
from zarr.codecs import BloscCodec

from comix_embed.common import config
from comix_embed.common.inputs.pages import PageSpec, PanelSpec
from comix_embed.common.model.preprocess import composition_features, crop_box, join_text, pixel_box
from comix_embed.common.store.schema import RESULT_ARRAYS

CHUNK_PAGES = 1000


class OldPatternStore:
    """Arrays of RESULT_ARRAYS with 1000-row compressed chunks, written one page at a time."""

    def __init__(self, path: Path, d: int, rows: int = CHUNK_PAGES) -> None:
        group = zarr.open_group(path, mode="w", zarr_format=3)
        blosc = BloscCodec(cname="zstd", clevel=6, shuffle="bitshuffle")
        dims = {"d": d, "P": config.MAX_PANELS, "4": 4}
        self.arrays = {}
        for name, (shape_dims, dtype) in RESULT_ARRAYS.items():
            shape = (rows, *(dims[x] for x in shape_dims))
            self.arrays[name] = group.create_array(
                name,
                shape=shape,
                chunks=(CHUNK_PAGES, *shape[1:]),
                dtype=str if dtype == "str" else dtype,
                compressors=None if dtype == "str" else blosc,
            )

    def fill(self, rows: int, arrays: dict[str, np.ndarray]) -> None:
        """Rows 0..rows from `arrays` in one go (a chunk part-way through its life)."""
        for name, arr in self.arrays.items():
            arr[:rows] = np.asarray(arrays[name][:rows], dtype=object if RESULT_ARRAYS[name][1] == "str" else None)

    def write_page(self, row: int, page: dict[str, np.ndarray]) -> None:
        """One page as the old script wrote it: zero the row of every array, then write it."""
        for name, arr in self.arrays.items():
            value = page[name]
            arr[row] = "" if RESULT_ARRAYS[name][1] == "str" else np.zeros_like(value)
            arr[row] = value


def old_page_inputs(spec: PageSpec, image_path: Path, tokenizer) -> dict[str, torch.Tensor]:
    """One page's tensors as the users' Dataset built them in `__getitem__`.

    Full decode, EXIF transpose and RGB conversion; every panel cropped and resized at full
    resolution and turned into a float tensor on its own; the 12 slots filled with black images,
    empty texts and zero features; the page's 12 texts tokenized and padded to 128 there and then.
    """
    img = ImageOps.exif_transpose(Image.open(image_path)).convert("RGB")
    img.load()
    width, height = img.size
    slots = config.MAX_PANELS
    images = torch.zeros((slots, 3, config.IMAGE_SIZE, config.IMAGE_SIZE))
    comp = torch.zeros((slots, 7))
    texts = [""] * slots
    panels = spec.panels[:slots] or [PanelSpec(box=[0, 0, width, height])]
    for i, panel in enumerate(panels):
        box = pixel_box(panel.box, panel.fraction, width, height)
        crop = img.crop(crop_box(box, width, height)).resize((config.IMAGE_SIZE, config.IMAGE_SIZE), Image.BILINEAR)
        images[i] = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float().div(255.0)
        chars = [pixel_box(c, panel.fraction, width, height) for c in panel.characters]
        comp[i] = torch.from_numpy(composition_features(box, width, height, chars))
        texts[i] = join_text(panel.text)
    tok = tokenizer(
        texts, padding="max_length", truncation=True, max_length=config.TEXT_MAX_TOKENS, return_tensors="pt"
    )
    mask = torch.zeros(slots, dtype=torch.bool)
    mask[: len(panels)] = True
    return {
        "images": images,
        "input_ids": tok["input_ids"],
        "attention_mask": tok["attention_mask"],
        "comp": comp,
        "mask": mask,
    }


def old_collate(pages: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([p[key] for p in pages]) for key in pages[0]}
