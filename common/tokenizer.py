"""The RoBERTa BPE tokenizer, from local files only.

It is not inside the users' checkpoints. Where it comes from, in order: the directory the user
names; the directory `init-checkpoint` writes beside a checkpoint; `roberta-base` in the local
Hugging Face cache. Never the network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerFast, RobertaTokenizerFast

from comix_embed.common.errors import UsageError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")


@dataclass
class LoadedTokenizer:
    tokenizer: PreTrainedTokenizerFast
    # recorded in the store: a name plus a hash of the vocabulary, so stores never mix tokenizers
    identity: str


def tokenizer_dir_beside(checkpoint: Path) -> Path:
    """Where `init-checkpoint` puts the tokenizer of `checkpoint` (`model.pt` -> `model.tokenizer/`)."""
    return checkpoint.with_name(checkpoint.stem + ".tokenizer")


def _identity(name: str, directory: Path) -> str:
    digest = hashlib.sha256()
    for fname in TOKENIZER_FILES:
        f = directory / fname
        if f.is_file():
            digest.update(f.read_bytes())
    return f"{name} sha256:{digest.hexdigest()[:16]}"


def _from_dir(directory: Path, name: str) -> LoadedTokenizer:
    if not any((directory / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        raise UsageError(f"tokenizer directory {directory} has neither tokenizer.json nor vocab.json + merges.txt")
    tok = RobertaTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    return LoadedTokenizer(tok, _identity(name, directory))


def _hf_cache_roberta() -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download("roberta-base", local_files_only=True, allow_patterns=list(TOKENIZER_FILES)))
    except Exception:
        return None


def load_tokenizer(tokenizer_dir: Path | None, checkpoint: Path | None = None) -> LoadedTokenizer:
    """The tokenizer to use with `checkpoint`, or a UsageError that says what to pass."""
    if tokenizer_dir is not None:
        directory = Path(tokenizer_dir)
        if not directory.is_dir():
            raise UsageError(f"--tokenizer {directory}: no such directory")
        return _from_dir(directory, directory.name)
    if checkpoint is not None:
        beside = tokenizer_dir_beside(Path(checkpoint))
        if beside.is_dir():
            return _from_dir(beside, beside.name)
    cached = _hf_cache_roberta()
    if cached is not None:
        return _from_dir(cached, "roberta-base")
    raise UsageError(
        "no tokenizer found: pass --tokenizer DIR (a directory with vocab.json + merges.txt or "
        "tokenizer.json, e.g. a saved roberta-base tokenizer); none was found beside the checkpoint "
        "nor as roberta-base in the local Hugging Face cache"
    )
