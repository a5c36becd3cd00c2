"""Users' checkpoints load unchanged and give the same numbers; a missing key is named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from comix_embed.common.model.checkpoint import CheckpointError, load_model
from comix_embed.common.model.closure_lite import ClosureLite, ModelConfig


def users_model(seed: int = 3) -> ClosureLite:
    """A small model whose head counts follow the hidden/64 rule, as inference assumes."""
    torch.manual_seed(seed)
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=96)
    cfg = ModelConfig(
        d=16,
        vit=dict(small, patch_size=32),
        text=dict(small, vocab_size=300, max_position_embeddings=40),
        comp_hidden=24,
    )
    return ClosureLite(cfg).eval()


def save_users_format(model: ClosureLite, path: Path, extra: dict[str, torch.Tensor] | None = None) -> None:
    """As the users' training code saved: epoch, model and optimizer state, no config."""
    state = dict(model.state_dict())
    state.update(extra or {})
    torch.save(
        {
            "epoch": 4,
            "model_state_dict": state,
            "optimizer_state_dict": {"state": {}, "param_groups": []},
            "loss": 0.32,
        },
        path,
    )


def outputs(model: ClosureLite) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 12, 3, 224, 224, generator=g)
    ids = torch.randint(5, 300, (2, 12, 9), generator=g)
    attn = torch.ones_like(ids)
    comp = torch.rand(2, 12, 7, generator=g)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, :12] = True
    with torch.no_grad():
        return model.forward_all_slots("fused", images, ids, attn, comp, mask)


def test_users_checkpoint_loads_with_training_keys_and_gives_same_numbers(tmp_path: Path) -> None:
    model = users_model()
    extra = {
        "denoise_head.0.weight": torch.zeros(768, 16),
        "context_head.0.weight": torch.zeros(768, 23),
        "pop_classifier.clf.0.weight": torch.zeros(256, 48),
    }
    path = tmp_path / "best_checkpoint.pth"
    save_users_format(model, path, extra)
    loaded = load_model(path)
    cfg = loaded.config
    assert cfg.d == 16 and cfg.han_heads == 4 and cfg.comp_hidden == 24
    assert cfg.vit["patch_size"] == 32 and cfg.vit["num_hidden_layers"] == 2
    assert cfg.text["vocab_size"] == 300 and cfg.text["max_position_embeddings"] == 40
    for want, got in zip(outputs(model), outputs(loaded.model)):
        assert torch.equal(want, got)
    assert len(loaded.sha256) == 64


def test_bare_state_dict_loads(tmp_path: Path) -> None:
    model = users_model()
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model(path)
    assert torch.equal(outputs(model)[1], outputs(loaded.model)[1])


def test_missing_inference_key_is_named(tmp_path: Path) -> None:
    state = dict(users_model().state_dict())
    del state["han.attention.out_proj.weight"]
    path = tmp_path / "broken.pth"
    torch.save({"epoch": 1, "model_state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"han\.attention\.out_proj\.weight"):
        load_model(path)


def test_missing_file_and_foreign_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_model(junk)


def test_our_checkpoint_keeps_head_counts(tiny_checkpoint: Path) -> None:
    loaded = load_model(tiny_checkpoint)
    assert loaded.config.vit["num_attention_heads"] == 2
    assert loaded.config.text["num_attention_heads"] == 2
