"""The users' original forward pass, kept as the yardstick.

Every one of the max_panels slots goes through both encoders (black image, empty text and zero
composition in padded slots), texts padded to 128 tokens, fp32. Tests check that the workers'
faster path gives the same valid-slot numbers; the throughput benchmark times it as the baseline.
"""

from __future__ import annotations

import numpy as np
import torch

from comix_embed.common import config
from comix_embed.common.model.closure_lite import ClosureLite
from comix_embed.common.model.preprocess import PreparedPage


def padded_inputs(
    pages: list[PreparedPage], tokenizer
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, input_ids, attention_mask, comp, mask) with every page padded to max_panels."""
    b, p, s = len(pages), config.MAX_PANELS, config.IMAGE_SIZE
    images = torch.zeros((b, p, 3, s, s))
    comp = torch.zeros((b, p, 7))
    mask = torch.zeros((b, p), dtype=torch.bool)
    texts = []
    for i, page in enumerate(pages):
        n = len(page.crops)
        images[i, :n] = torch.from_numpy(page.crops).permute(0, 3, 1, 2).float() / 255.0
        comp[i, :n] = torch.from_numpy(page.comp)
        mask[i, :n] = True
        texts.extend(page.texts + [""] * (p - n))
    tok = tokenizer(
        texts, padding="max_length", truncation=True, max_length=config.TEXT_MAX_TOKENS, return_tensors="pt"
    )
    ids = tok["input_ids"].view(b, p, -1)
    attn = tok["attention_mask"].view(b, p, -1)
    return images, ids, attn, comp, mask


def reference_embed(
    model: ClosureLite, tokenizer, pages: list[PreparedPage], mode: str = "fused"
) -> dict[str, np.ndarray]:
    """Panel (all slots), page, attention and reading order as the original computed them."""
    images, ids, attn, comp, mask = padded_inputs(pages, tokenizer)
    with torch.no_grad():
        panels, page, attention, order = model.forward_all_slots(mode, images, ids, attn, comp, mask)
    return {
        "panel_embeddings": panels.numpy(),
        "page_embeddings": page.numpy(),
        "attention_weights": attention.numpy(),
        "reading_order": order.numpy(),
    }
