"""Queries embedded by a store's own model: text and images turned into vectors of its space.

A query vector is only comparable with a store's vectors when the same checkpoint made both and
went through the same path (spec/closure-lite.md, Query encoders). So:
- the checkpoint is refused unless its SHA-256 is the one the store recorded;
- a text query is one panel of zero image, the query's tokens and zero composition (as the
  users' search UI did), through the store's encoder mode;
- an image query is embedded exactly as a worker embeds a page without panels, by the worker's
  own code (`Embedder.embed_image`): the whole image as one panel, the same decoding, crop and
  resize, the checkpoint's fusion and page pooling. Its page vector is compared with
  `page_embeddings`, its panel vector with panels. (The users' page embedded images through the
  vision tower alone and compared them with fused vectors: two spaces, poor image search.)

An encoder mode that does not see a kind of query refuses it: a text query needs the text tower
(`fused`, `text`), an image query the vision tower (`fused`, `vision`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from comix_embed.common.errors import UsageError
from comix_embed.tools.search import TEXT_QUERY_MODES, normalise, text_vector

if TYPE_CHECKING:
    from comix_embed.common.checkpoint import LoadedModel
    from comix_embed.common.embed import Embedder
    from comix_embed.common.tokenizer import LoadedTokenizer

log = logging.getLogger(__name__)

# Encoder modes whose panels an image query can be encoded into (the vision tower is part of them).
IMAGE_QUERY_MODES = ("fused", "vision")


@dataclass
class ImageVectors:
    """An image query embedded as a one-panel page: its page and panel vectors, normalised."""

    page: np.ndarray
    panel: np.ndarray


def load_query_model(checkpoint: Path, tokenizer_dir: Path | None) -> tuple[LoadedModel, LoadedTokenizer]:
    """The checkpoint and its tokenizer, loaded once (several stores of one checkpoint share them)."""
    from comix_embed.common.checkpoint import load_model
    from comix_embed.common.tokenizer import load_tokenizer

    return load_model(checkpoint), load_tokenizer(tokenizer_dir, checkpoint)


def check_store_model(loaded: LoadedModel, tokenizer: LoadedTokenizer, store: Path, attrs: dict[str, Any]) -> None:
    """Refuse a checkpoint that did not make the store: its vectors would not be comparable."""
    if loaded.sha256 != attrs.get("checkpoint_sha256"):
        raise UsageError(
            f"{loaded.path} (sha256 {loaded.sha256}) did not make this store, {store} "
            f"(checkpoint_sha256 {attrs.get('checkpoint_sha256')}): its vectors would not be comparable"
        )
    if _vocab_hash(tokenizer.identity) != _vocab_hash(str(attrs.get("tokenizer", ""))):
        log.warning("tokenizer %s differs from the store's (%s)", tokenizer.identity, attrs.get("tokenizer"))


def _vocab_hash(identity: str) -> str:
    return identity.rpartition("sha256:")[2]


class QueryEncoder:
    """Text and image queries for one encoder mode of one (checked) model.

    Thread-safe: one lock around the model (a web server asks from several threads, and a fast
    tokenizer refuses concurrent use). The worker's Embedder is made on the first image query.
    """

    def __init__(self, loaded: LoadedModel, tokenizer: LoadedTokenizer, mode: str, fast_decode: bool = True) -> None:
        self.loaded = loaded
        self.tokenizer = tokenizer
        self.mode = mode
        self.fast_decode = fast_decode
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    def refusal(self, kind: str) -> str | None:
        """Why this encoder mode cannot embed a `text` or `image` query, or None when it can."""
        modes = TEXT_QUERY_MODES if kind == "text" else IMAGE_QUERY_MODES
        if self.mode in modes:
            return None
        tower = "text" if kind == "text" else "vision"
        return (
            f"a store of encoder mode {self.mode!r} has no {tower} tower in its vectors: "
            f"{kind} queries need {' or '.join(modes)}"
        )

    def text(self, query: str) -> np.ndarray:
        """The text as a panel of this mode, normalised (UsageError when the mode cannot)."""
        self._refuse("text")
        with self._lock:
            return text_vector(self.loaded, self.tokenizer, query, self.mode)

    def image(self, data: bytes, name: str) -> ImageVectors:
        """The image as a page without panels, embedded by the worker's code; normalised vectors.

        Raises UsageError when the mode cannot, or when the bytes are not a usable image.
        """
        from comix_embed.common.preprocess import PageImageError

        self._refuse("image")
        with self._lock:
            try:
                arrays = self._worker_embedder().embed_image(data, name)
            except PageImageError as exc:
                raise UsageError(str(exc)) from None
        return ImageVectors(
            page=normalise(arrays["page_embeddings"][:1])[0], panel=normalise(arrays["panel_embeddings"][0, :1])[0]
        )

    def _refuse(self, kind: str) -> None:
        why = self.refusal(kind)
        if why:
            raise UsageError(why)

    def _worker_embedder(self) -> Embedder:
        if self._embedder is None:
            from comix_embed.common.embed import Embedder, EmbedSettings

            settings = EmbedSettings(encoder_mode=self.mode, fast_decode=self.fast_decode, decode_threads=1)
            self._embedder = Embedder(self.loaded, self.tokenizer, None, settings=settings)
        return self._embedder

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
