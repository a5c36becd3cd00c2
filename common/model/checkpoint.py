"""Loading the users' checkpoints (and writing ours) without changing a number.

The users' training code saved `{"epoch", "model_state_dict", "optimizer_state_dict", ...}` with no
architecture: it is inferred here from tensor shapes. Unlike the original (`strict=False`, which
silently ran half-random when a key was missing), every inference key must be present.

A checkpoint is read with torch's safe loader (`weights_only=True`): tensors, numbers, strings and
containers only. Full unpickling can run any code stored in the file, so it happens only when the
user says the file is trusted (`--trust-checkpoint`); otherwise the refusal names the file, what
was refused, and the flag.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from comix_embed.common.digest import file_sha256
from comix_embed.common.errors import UsageError
from comix_embed.common.model.closure_lite import ClosureLite, ModelConfig
from comix_embed.common.model.options import TRUST_FLAG

log = logging.getLogger(__name__)

TRAINING_ONLY_PREFIXES = ("pop_classifier.", "denoise_head.", "context_head.")
# Buffers some transformers versions saved; they are recomputed, never learned.
IGNORABLE_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")


class CheckpointError(UsageError):
    """A checkpoint that cannot be used: the message names the file and the key at fault."""


@dataclass
class LoadedModel:
    model: ClosureLite
    config: ModelConfig
    sha256: str
    path: Path


def read_checkpoint(path: Path, trust: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, config entry or None) from a training checkpoint or a bare state dict.

    `trust` allows full unpickling when the safe loader refuses the file.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
        if not trust:
            raise CheckpointError(
                f"checkpoint {path}: the safe loader (torch.load weights_only=True) refused {_refused(str(exc))}; "
                f"loading it fully could run code stored in the file. If you trust this file, pass {TRUST_FLAG}"
            ) from None
        log.warning("%s: loading fully (%s): %s", path, TRUST_FLAG, _refused(str(exc)))
        try:
            raw = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc2}") from exc2
    except Exception as exc:  # truncated or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(raw).__name__}, not a dict")
    cfg = raw.get("config") if isinstance(raw.get("config"), dict) else None
    state = raw.get("model_state_dict", raw)
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} has no model_state_dict and is not a state dict")
    return {k: v for k, v in state.items() if torch.is_tensor(v)}, cfg


def _refused(message: str) -> str:
    """What the safe loader refused, from torch's message (e.g. "the object argparse.Namespace")."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if found:
        return f"the object {found.group(1)}"
    detail = next((ln.strip() for ln in message.splitlines() if "WeightsUnpickler error" in ln), "")
    return f"part of the file ({detail})" if detail else "part of the file"


def _need(state: dict[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"checkpoint {path} is missing the inference key {key!r}")
    return state[key]


def _layer_count(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def infer_config(state: dict[str, torch.Tensor], path: Path) -> ModelConfig:
    """The architecture from tensor shapes; head counts as hidden/64 (not recoverable)."""
    v = "atom.vision.vit."
    t = "atom.text.lm."
    d = _need(state, "atom.vision.proj.weight", path).shape[0]
    cls = _need(state, v + "embeddings.cls_token", path)
    vit_hidden = cls.shape[-1]
    patch = _need(state, v + "embeddings.patch_embeddings.projection.weight", path)
    positions = _need(state, v + "embeddings.position_embeddings", path).shape[1] - 1
    patch_size = patch.shape[-1]
    vit_layers = _layer_count(state, v + "encoder.layer.")
    vit = dict(
        hidden_size=vit_hidden,
        num_hidden_layers=vit_layers,
        num_attention_heads=max(1, vit_hidden // 64),
        intermediate_size=_need(state, v + "encoder.layer.0.intermediate.dense.weight", path).shape[0],
        patch_size=patch_size,
        image_size=patch_size * math.isqrt(positions),
        num_channels=patch.shape[1],
    )
    words = _need(state, t + "embeddings.word_embeddings.weight", path)
    text_hidden = words.shape[1]
    text = dict(
        vocab_size=words.shape[0],
        hidden_size=text_hidden,
        num_hidden_layers=_layer_count(state, t + "encoder.layer."),
        num_attention_heads=max(1, text_hidden // 64),
        intermediate_size=_need(state, t + "encoder.layer.0.intermediate.dense.weight", path).shape[0],
        max_position_embeddings=_need(state, t + "embeddings.position_embeddings.weight", path).shape[0],
        type_vocab_size=_need(state, t + "embeddings.token_type_embeddings.weight", path).shape[0],
    )
    return ModelConfig(
        d=d,
        vit=vit,
        text=text,
        han_heads=_layer_count(state, "han.attention.heads."),
        comp_hidden=_need(state, "atom.comp.mlp.0.weight", path).shape[0],
        vit_pooler=(v + "pooler.dense.weight") in state,
        text_pooler=(t + "pooler.dense.weight") in state,
    )


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu", trust: bool = False) -> LoadedModel:
    """Build the model for a checkpoint and load every inference weight, strictly.

    `trust` (the user's --trust-checkpoint) allows full unpickling; see `read_checkpoint`.
    """
    path = Path(path)
    state, cfg_entry = read_checkpoint(path, trust)
    cfg = infer_config(state, path)
    if cfg_entry:
        # our checkpoints carry their config: head counts cannot be inferred from shapes
        saved = ModelConfig.from_dict(cfg_entry)
        for part, saved_part in ((cfg.vit, saved.vit), (cfg.text, saved.text)):
            part["num_attention_heads"] = saved_part.get("num_attention_heads", part["num_attention_heads"])
        cfg.temperature = saved.temperature
    model = ClosureLite(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(IGNORABLE_SUFFIXES)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint {path} is missing the inference key {missing[0]!r}{more}")
    unknown = [
        k
        for k in state
        if k not in expected and not k.startswith(TRAINING_ONLY_PREFIXES) and not k.endswith(IGNORABLE_SUFFIXES)
    ]
    if unknown:
        log.warning("%s: ignoring %d keys the model does not use, e.g. %s", path, len(unknown), unknown[0])
    usable = {k: v for k, v in state.items() if k in expected}
    for key, tensor in usable.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"checkpoint {path}: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
            )
    model.load_state_dict(usable, strict=False)
    model.eval().to(device)
    return LoadedModel(model=model, config=cfg, sha256=file_sha256(path), path=path)


def save_checkpoint(model: ClosureLite, path: Path, note: str) -> None:
    """Write a checkpoint in the users' format, plus the config entry ours always carry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"epoch": 0, "model_state_dict": model.state_dict(), "config": model.cfg.to_dict(), "note": note},
        path,
    )
