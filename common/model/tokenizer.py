"""The RoBERTa BPE tokenizer, from local files only.

It is not inside the users' checkpoints. Where it comes from, in order: the directory the user
names; the directory `init-checkpoint` writes beside a checkpoint; `roberta-base` in the local
Hugging Face cache. Never the network.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from comix_embed.common.errors import UsageError

if TYPE_CHECKING:  # transformers takes seconds to import: only what loads a tokenizer pays for it
    from transformers import PreTrainedTokenizerFast

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")


# A tokenizer's identity is its content: this prefix, then the SHA-256 of its normalised content.
CONTENT_PREFIX = "content-sha256:"


@dataclass
class LoadedTokenizer:
    tokenizer: PreTrainedTokenizerFast
    # recorded in the store and in every job and result: the hash of what the tokenizer does
    # (content_identity), the same for the same tokenizer saved twice or in two folders
    identity: str
    # the form stores written before recorded, `<folder name> sha256:<16 hex>` of the raw files:
    # known only where the files are at hand, so that such a store can be matched and migrated
    legacy_identity: str = ""


def content_identity(tokenizer: PreTrainedTokenizerFast) -> str:
    """The hash of a loaded tokenizer's vocabulary, merges, special tokens and pre/post-processing.

    Taken from the loaded tokenizer, not from its files, so the file layout (tokenizer.json or
    vocab.json + merges.txt), key order and formatting do not count; padding and truncation are
    run-time settings and are left out. Merges are pairs whichever way the file spelled them.
    """
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    for runtime in ("version", "truncation", "padding"):
        data.pop(runtime, None)
    model = data.get("model", {})
    if isinstance(model.get("merges"), list):
        model["merges"] = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model["merges"]]
    data["added_tokens"] = sorted(data.get("added_tokens", []), key=lambda t: t.get("id", 0))
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return CONTENT_PREFIX + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def tokenizer_dir_beside(checkpoint: Path) -> Path:
    """Where `init-checkpoint` puts the tokenizer of `checkpoint` (`model.pt` -> `model.tokenizer/`)."""
    return checkpoint.with_name(checkpoint.stem + ".tokenizer")


def _legacy_identity(name: str, directory: Path) -> str:
    digest = hashlib.sha256()
    for fname in TOKENIZER_FILES:
        f = directory / fname
        if f.is_file():
            digest.update(f.read_bytes())
    return f"{name} sha256:{digest.hexdigest()[:16]}"


def _from_dir(directory: Path, name: str) -> LoadedTokenizer:
    if not any((directory / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        raise UsageError(f"tokenizer directory {directory} has neither tokenizer.json nor vocab.json + merges.txt")
    from transformers import RobertaTokenizerFast

    tok = RobertaTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    return LoadedTokenizer(tok, content_identity(tok), _legacy_identity(name, directory))


def _hf_cache_roberta() -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download("roberta-base", local_files_only=True, allow_patterns=list(TOKENIZER_FILES)))
    except Exception:
        return None


def load_tokenizer(tokenizer_dir: str | Path | None, checkpoint: str | Path | None = None) -> LoadedTokenizer:
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
