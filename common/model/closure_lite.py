"""Closure-Lite: ViT and RoBERTa fused per panel, attention-pooled per page.

Module and parameter names follow the users' checkpoints exactly (docs/model.md, "State-dict
layout"), so `load_state_dict` maps their weights one to one. Backbones are built from configs,
never downloaded: the checkpoint holds their complete fine-tuned weights.

Two forward paths share every module:
- `encode_panels` + `pool`: only valid panels go through the encoders (what the workers run);
- `forward_all_slots`: all max_panels slots through both encoders, as the original did (kept for
  the equivalence test and the baseline benchmark).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import RobertaConfig, RobertaModel, ViTConfig, ViTModel

from comix_embed.common import config


@dataclass
class ModelConfig:
    """Everything needed to build the network; inferred from a checkpoint's shapes when absent."""

    d: int = 384
    vit: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    han_heads: int = 4
    comp_hidden: int = 256
    temperature: float = config.ATTENTION_TEMPERATURE
    vit_pooler: bool = True
    text_pooler: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def vit_config(**overrides: Any) -> ViTConfig:
    """google/vit-base-patch16-224 shapes unless overridden."""
    base = dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=config.IMAGE_SIZE,
        patch_size=16,
        num_channels=3,
        qkv_bias=True,
        layer_norm_eps=1e-12,
    )
    base.update(overrides)
    return ViTConfig(**base)


def roberta_config(**overrides: Any) -> RobertaConfig:
    """roberta-base shapes unless overridden."""
    base = dict(
        vocab_size=50265,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
    )
    base.update(overrides)
    return RobertaConfig(**base)


class VisionEncoder(nn.Module):
    """ViT on a 224x224 crop in [0, 1]; the CLS token projected to d."""

    def __init__(self, cfg: ViTConfig, d: int, pooler: bool) -> None:
        super().__init__()
        self.vit = ViTModel(cfg, add_pooling_layer=pooler)
        self.proj = nn.Linear(cfg.hidden_size, d)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.vit(pixel_values=images).last_hidden_state[:, 0])


class TextEncoder(nn.Module):
    """RoBERTa on a panel's text; the `<s>` token projected to d."""

    def __init__(self, cfg: RobertaConfig, d: int, pooler: bool) -> None:
        super().__init__()
        self.lm = RobertaModel(cfg, add_pooling_layer=pooler)
        self.proj = nn.Linear(cfg.hidden_size, d)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.proj(out[:, 0])


class CompositionEncoder(nn.Module):
    """The 7 layout features of a panel to d."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(7, hidden), nn.ReLU(), nn.Linear(hidden, d))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(feats)


class GatedFusion(nn.Module):
    """Softmax gate over the three modalities of a panel."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate = nn.Linear(3 * d, 3)

    def forward(self, v: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        alpha = torch.softmax(self.gate(torch.cat([v, t, c], dim=-1)), dim=-1)
        return alpha[..., 0:1] * v + alpha[..., 1:2] * t + alpha[..., 2:3] * c


class PanelAtom(nn.Module):
    """Per-panel encoders and their fusion (`atom.*` in checkpoints)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.vision = VisionEncoder(vit_config(**cfg.vit), cfg.d, cfg.vit_pooler)
        self.text = TextEncoder(roberta_config(**cfg.text), cfg.d, cfg.text_pooler)
        self.comp = CompositionEncoder(cfg.d, cfg.comp_hidden)
        self.fuse = GatedFusion(cfg.d)


class SimpleAttention(nn.Module):
    """Multi-head content attention pooling of panels into a page (`han.attention.*`)."""

    def __init__(self, d: int, num_heads: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.heads = nn.ModuleList([nn.Linear(d, d // num_heads) for _ in range(num_heads)])
        self.content_scorers = nn.ModuleList([nn.Linear(d // num_heads, 1) for _ in range(num_heads)])
        self.pos_bias = nn.Parameter(torch.zeros(1, 1, d))
        self.out_proj = nn.Linear(d, d)

    def forward(self, panels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """panels (B, N, d), mask (B, N) bool -> page (B, d), attention (B, N)."""
        n = panels.shape[1]
        # pos_bias has length 1 in every checkpoint: one constant added to every score, kept for exactness
        bias = self.pos_bias[:, :n, :].mean(-1)
        outputs, weights = [], []
        for head, scorer in zip(self.heads, self.content_scorers):
            scores = scorer(head(panels)).squeeze(-1) + bias
            scores = scores.masked_fill(~mask, float("-inf"))
            attn = torch.softmax(scores / self.temperature, dim=-1)
            outputs.append(torch.einsum("bn,bnd->bd", attn, panels))
            weights.append(attn)
        page = self.out_proj(torch.stack(outputs).mean(0))
        return page, torch.stack(weights).mean(0)


class PageAggregator(nn.Module):
    """`han.*` in checkpoints."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention = SimpleAttention(cfg.d, cfg.han_heads, cfg.temperature)


class NextPanelHead(nn.Module):
    """Bilinear score of panel j following panel i (`next_head.*`)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.scorer = nn.Bilinear(d, d, 1)

    def forward(self, panels: torch.Tensor) -> torch.Tensor:
        """panels (B, N, d) -> logits (B, N, N)."""
        b, n, d = panels.shape
        left = panels.unsqueeze(2).expand(b, n, n, d).reshape(-1, d)
        right = panels.unsqueeze(1).expand(b, n, n, d).reshape(-1, d)
        return self.scorer(left, right).view(b, n, n)


class ClosureLite(nn.Module):
    """The inference part of the users' Closure-Lite Simple model."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.atom = PanelAtom(cfg)
        self.han = PageAggregator(cfg)
        self.next_head = NextPanelHead(cfg.d)

    def panel_vectors(
        self,
        mode: str,
        images: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        comp: torch.Tensor,
    ) -> torch.Tensor:
        """P for a flat set of panels under one encoder mode; unused encoders are not run."""
        if mode == "vision":
            return self.atom.vision(images)
        if mode == "text":
            return self.atom.text(input_ids, attention_mask)
        if mode == "comp":
            return self.atom.comp(comp)
        v = self.atom.vision(images)
        t = self.atom.text(input_ids, attention_mask)
        return self.atom.fuse(v, t, self.atom.comp(comp))

    def pool(self, panels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded panels (B, N, d) -> page (B, d), attention (B, N), reading order (B, N).

        Reading order is the argmax over valid slots only, -1 in padded slots.
        """
        page, attention = self.han.attention(panels, mask)
        logits = self.next_head(panels)
        logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
        order = logits.argmax(-1)
        order = torch.where(mask, order, torch.full_like(order, -1))
        return page, attention, order

    def forward_all_slots(
        self,
        mode: str,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        comp: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The original's pass: every slot (B, N, ...) through the encoders, padding included."""
        b, n = mask.shape
        panels = self.panel_vectors(
            mode,
            images.flatten(0, 1),
            input_ids.flatten(0, 1),
            attention_mask.flatten(0, 1),
            comp.flatten(0, 1),
        ).view(b, n, -1)
        page, attention, order = self.pool(panels, mask)
        return panels, page, attention, order
