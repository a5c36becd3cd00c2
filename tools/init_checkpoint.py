"""`comix-embed init-checkpoint`: an UNTRAINED checkpoint in the users' format, and a tokenizer.

For trying the system and for tests: real code paths, random weights. `base` has the real shapes
(ViT-B/16, RoBERTa-base, d = 384); `tiny` runs on two CPU cores. The tokenizer is a byte-level
BPE trained here on the sample corpus's text, written beside the checkpoint, where every command
that takes `--checkpoint` finds it by itself.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaTokenizerFast

from comix_embed.common.errors import EXIT_OK
from comix_embed.common.model.checkpoint import save_checkpoint
from comix_embed.common.model.closure_lite import ClosureLite, ModelConfig
from comix_embed.common.model.tokenizer import tokenizer_dir_beside
from comix_embed.tools.sample.text import corpus_sentences

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4
UNTRAINED_NOTE = "UNTRAINED: random weights written by comix-embed init-checkpoint; embeddings carry no meaning"


def model_config(size: str, vocab_size: int) -> ModelConfig:
    if size == "base":
        return ModelConfig(
            d=384,
            vit=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
            text=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
        )
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    return ModelConfig(
        d=32,
        vit=dict(small),
        text=dict(small, vocab_size=vocab_size, max_position_embeddings=130),
        comp_hidden=64,
    )


def train_tokenizer(out_dir: Path, vocab_size: int, seed: int) -> RobertaTokenizerFast:
    """A byte-level BPE with RoBERTa's special tokens, saved in both file layouts."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus_sentences(20000, seed),
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        tok = RobertaTokenizerFast(vocab_file=f"{tmp}/vocab.json", merges_file=f"{tmp}/merges.txt")
        tok.model_max_length = 512
        tok.save_pretrained(str(out_dir))
    return tok


def init_checkpoint(out: Path, size: str = "tiny", seed: int = 0) -> tuple[Path, Path]:
    """Write the checkpoint and its tokenizer directory; returns both paths."""
    tok_dir = tokenizer_dir_beside(out)
    tok = train_tokenizer(tok_dir, vocab_size=2000, seed=seed)
    torch.manual_seed(seed)
    model = ClosureLite(model_config(size, vocab_size=len(tok)))
    save_checkpoint(model, out, UNTRAINED_NOTE)
    return out, tok_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="checkpoint file to write, e.g. model.pt")
    parser.add_argument("--size", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    ckpt, tok_dir = init_checkpoint(args.out, args.size, args.seed)
    params = sum(t.numel() for t in torch.load(ckpt, weights_only=True)["model_state_dict"].values())
    print(f"wrote {ckpt} ({args.size}, {params / 1e6:.1f}M parameters) and tokenizer {tok_dir}/")
    print("NOTE: this checkpoint is UNTRAINED (random weights): use it to try the pipeline, not for search.")
    return EXIT_OK
