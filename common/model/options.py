"""The command-line options that choose the model, shared by every command that loads a checkpoint.

One definition, so that `run`, `worker`, `enqueue`, `query` (and any later command) spell and
document them alike, and `--trust-checkpoint` is never forgotten by one of them. Kept free of
torch: building a parser must not import it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from comix_embed.common import config

TRUST_FLAG = "--trust-checkpoint"


def add_model_arguments(
    parser: argparse.ArgumentParser,
    *,
    required: bool = True,
    encoder_mode: bool = True,
    checkpoint_help: str = "the trained checkpoint (.pth / .pt)",
) -> None:
    """--checkpoint, --tokenizer, --encoder-mode (unless `encoder_mode` is False) and --trust-checkpoint."""
    parser.add_argument("--checkpoint", type=Path, required=required, help=checkpoint_help)
    parser.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: found beside the checkpoint)")
    if encoder_mode:
        parser.add_argument("--encoder-mode", choices=config.ENCODER_MODES, default="fused")
    parser.add_argument(
        TRUST_FLAG,
        dest="trust_checkpoint",
        action="store_true",
        help="load a checkpoint that the safe loader (torch.load weights_only=True) refuses, by unpickling it "
        "fully: that can run code stored in the file, so pass it only for files you trust",
    )
