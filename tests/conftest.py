"""Shared fixtures: a tiny untrained checkpoint with its tokenizer, and a small sample corpus.

Both are made here by the project's own commands' code (nothing is downloaded), once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.init_checkpoint import init_checkpoint
from common.sample import make_sample


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    init_checkpoint(out, size="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic pages (with a 0-panel page and a >12-panel page among them)."""
    out = tmp_path_factory.mktemp("corpus")
    make_sample(out, pages=24, seed=1)
    return out
