"""Which model made which embeddings: the one place that decides "same model", and its queue.

A job is bound to one `ModelIdentity` when it is enqueued (checkpoint SHA-256, tokenizer content
hash, encoder mode, model name, d, max_panels). `run`, `enqueue`, the writer, the worker and
`query` all compare identities with `check_same_model`, and batches travel on the queue of their
job's identity (`queue_name`), which a worker consumes only when its own model has that identity.

Stores written before tokenizers were hashed by content record the old form
`<folder name> sha256:<16 hex>` (a hash of the raw files). Where the tokenizer files are at hand
(the producer, a worker, `query`) the old form of the same files is computed too
(`tokenizer_legacy`), so an old store is matched through it; the writer then migrates the store's
attribute to the content form.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.messages import ModelIdentity
from comix_embed.common.model.tokenizer import CONTENT_PREFIX
from comix_embed.common.store.v2 import GENERATOR, NO_CHECKPOINT

IDENTITY_KEYS = ("model_name", "embedding_dim", "max_panels", "encoder_mode", "checkpoint_sha256", "tokenizer")


class ModelMismatch(UsageError):
    """A result, a worker or a run uses another model than the job's or the store's."""


def identity_of(model: ModelIdentity | Mapping[str, Any]) -> ModelIdentity:
    """An identity from a result's, a job's or the store's attributes; one that lacks a key is refused."""
    if isinstance(model, ModelIdentity):
        return model
    missing = [k for k in IDENTITY_KEYS if k not in model]
    if missing:
        raise ModelMismatch(f"the model {dict(model)} lacks {', '.join(missing)}: cannot tell which model it is")
    return ModelIdentity(
        model_name=str(model["model_name"]),
        embedding_dim=int(model["embedding_dim"]),
        max_panels=int(model["max_panels"]),
        encoder_mode=str(model["encoder_mode"]),
        checkpoint_sha256=str(model["checkpoint_sha256"]),
        tokenizer=str(model["tokenizer"]),
        tokenizer_legacy=str(model.get("tokenizer_legacy", "") or ""),
    )


def make_identity(checkpoint_sha256: str, d: int, encoder_mode: str, tokenizer: str, legacy: str = "") -> ModelIdentity:
    return ModelIdentity(
        model_name=config.MODEL_NAME,
        embedding_dim=int(d),
        max_panels=config.MAX_PANELS,
        encoder_mode=encoder_mode,
        checkpoint_sha256=checkpoint_sha256,
        tokenizer=tokenizer,
        tokenizer_legacy=legacy,
    )


def is_legacy_tokenizer(value: str) -> bool:
    return bool(value) and not value.startswith(CONTENT_PREFIX)


def _legacy_hash(value: str) -> str:
    return value.rpartition("sha256:")[2]


def tokenizers_match(a: ModelIdentity, b: ModelIdentity) -> bool:
    """Same content hash; or, where one side has only the old form, the same raw-file hash (the
    folder name, which the old form also held, does not count)."""
    if a.tokenizer == b.tokenizer:
        return True
    for old, new in ((a, b), (b, a)):
        if is_legacy_tokenizer(old.tokenizer):
            other = new.tokenizer_legacy or (new.tokenizer if is_legacy_tokenizer(new.tokenizer) else "")
            if other and _legacy_hash(other) == _legacy_hash(old.tokenizer):
                return True
    return False


def differences(ours: ModelIdentity, theirs: ModelIdentity) -> list[str]:
    """The identity fields in which two models differ; empty for the same model."""
    diff = [
        k
        for k in ("model_name", "embedding_dim", "max_panels", "encoder_mode", "checkpoint_sha256")
        if getattr(ours, k) != getattr(theirs, k)
    ]
    if not tokenizers_match(ours, theirs):
        diff.append("tokenizer")
    return diff


def check_same_model(
    ours: ModelIdentity | Mapping[str, Any], theirs: ModelIdentity | Mapping[str, Any], what: str, whose: str = "store"
) -> ModelIdentity:
    """Refuse `theirs` unless it is the same model as `ours` (the job's or the store's); returns
    `theirs` as an identity. The message names both checkpoints and every field that differs."""
    a, b = identity_of(ours), identity_of(theirs)
    if NO_CHECKPOINT in (a.checkpoint_sha256, b.checkpoint_sha256) and a.checkpoint_sha256 != b.checkpoint_sha256:
        raise ModelMismatch(
            f"the {whose} was imported from a {GENERATOR} store without --checkpoint: no model is known to have "
            f"made it, so the {what} cannot add to it. Import it again with `comix-embed import-v2 --checkpoint C` "
            "naming the checkpoint that made it"
        )
    diff = differences(a, b)
    if diff:
        details = ", ".join(f"{k}: {whose} {getattr(a, k)!r} vs {getattr(b, k)!r}" for k in diff)
        raise ModelMismatch(
            f"the {whose} was made with checkpoint {a.checkpoint_sha256} ({a.encoder_mode}), "
            f"the {what} with checkpoint {b.checkpoint_sha256} ({b.encoder_mode}); "
            f"one model per store, never mixed ({details})"
        )
    return b


def model_key(identity: ModelIdentity) -> str:
    """12 hex digits naming a model identity (its tokenizer by content): the queue suffix."""
    if is_legacy_tokenizer(identity.tokenizer):
        raise ValueError("a queue is named from a content-hashed tokenizer, not the old form")
    text = "|".join(
        str(v)
        for v in (
            identity.model_name,
            identity.embedding_dim,
            identity.max_panels,
            identity.encoder_mode,
            identity.checkpoint_sha256,
            identity.tokenizer,
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def queue_name(identity: ModelIdentity) -> str:
    """The Celery queue of this model's batches: only workers with this identity consume it."""
    return f"{config.EMBED_QUEUE}.{model_key(identity)}"


def describe(identity: ModelIdentity | Mapping[str, Any]) -> str:
    """Both identities, short, for logs and `status`: checkpoint and tokenizer."""
    i = identity_of(identity)
    tok = i.tokenizer.removeprefix(CONTENT_PREFIX)[:16] if not is_legacy_tokenizer(i.tokenizer) else i.tokenizer
    return f"checkpoint sha256 {i.checkpoint_sha256[:16]}, tokenizer {tok} ({i.encoder_mode}, d={i.embedding_dim})"


def identify(checkpoint: Path, tokenizer_dir: Path | None, encoder_mode: str, trust: bool = False) -> ModelIdentity:
    """The identity of a checkpoint and tokenizer on disk, reading the checkpoint's shapes (no model
    is built); UsageError naming the file when either cannot be used."""
    from comix_embed.common.digest import file_sha256
    from comix_embed.common.model.checkpoint import infer_config, read_checkpoint
    from comix_embed.common.model.tokenizer import load_tokenizer

    if encoder_mode not in config.ENCODER_MODES:
        raise UsageError(f"encoder mode must be one of {config.ENCODER_MODES}, got {encoder_mode!r}")
    checkpoint = Path(checkpoint)
    state, _ = read_checkpoint(checkpoint, trust=trust)
    d = infer_config(state, checkpoint).d
    tokenizer = load_tokenizer(tokenizer_dir, checkpoint)
    return make_identity(file_sha256(checkpoint), d, encoder_mode, tokenizer.identity, tokenizer.legacy_identity)
