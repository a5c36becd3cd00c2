"""Queries embedded by a store's own model: text and images turned into vectors of its space.

A query vector is only comparable with a store's vectors when the same checkpoint made both and
went through the same path (docs/model.md, "Query encoders"). So:
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

import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from comix_embed.common import config
from comix_embed.common.errors import UsageError
from comix_embed.common.store.v2 import GENERATOR, NO_CHECKPOINT
from comix_embed.tools.search import normalise

if TYPE_CHECKING:
    from comix_embed.common.model.checkpoint import LoadedModel
    from comix_embed.common.model.embed import Embedder
    from comix_embed.common.model.tokenizer import LoadedTokenizer

log = logging.getLogger(__name__)

# Encoder modes whose panels a text (an image) query can be encoded into: the text (the vision)
# tower is part of them.
TEXT_QUERY_MODES = ("fused", "text")
IMAGE_QUERY_MODES = ("fused", "vision")


@dataclass
class ImageVectors:
    """An image query embedded as a one-panel page: its page and panel vectors, normalised."""

    page: np.ndarray
    panel: np.ndarray


def load_query_model(
    checkpoint: Path, tokenizer_dir: Path | None, device: str = "cpu", trust: bool = False
) -> tuple[LoadedModel, LoadedTokenizer]:
    """The checkpoint (on `device`: `auto` is the first GPU, else the CPU) and its tokenizer, loaded
    once (several stores of one checkpoint share them)."""
    from comix_embed.common.model.checkpoint import load_model
    from comix_embed.common.model.embed import resolve_device
    from comix_embed.common.model.tokenizer import load_tokenizer

    return load_model(checkpoint, resolve_device(device), trust=trust), load_tokenizer(tokenizer_dir, checkpoint)


def check_store_model(loaded: LoadedModel, tokenizer: LoadedTokenizer, store: Path, attrs: dict[str, Any]) -> None:
    """Refuse a model that did not make the store, by the one "same model" test
    (common/model/identity.py): its vectors would not be comparable."""
    from comix_embed.common.model.identity import ModelMismatch, check_same_model, make_identity

    mode = str(attrs.get("encoder_mode", "fused"))
    ours = make_identity(loaded.sha256, loaded.config.d, mode, tokenizer.identity, tokenizer.legacy_identity)
    if attrs.get("checkpoint_sha256") == NO_CHECKPOINT:
        if int(attrs.get("embedding_dim", 0)) != loaded.config.d:
            raise UsageError(
                f"{loaded.path} makes {loaded.config.d}-d embeddings, {store} holds {attrs.get('embedding_dim')}-d"
            )
        log.warning(
            "%s was imported from a %s store that names no checkpoint: its queries are embedded with %s, "
            "taken as the checkpoint that made it (not verified)",
            store,
            GENERATOR,
            loaded.path,
        )
        return
    try:
        check_same_model(attrs, ours, what="query model")
    except ModelMismatch as exc:
        raise UsageError(f"{loaded.path} did not make this store, {store}: {exc}") from None


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
        self.device = next(loaded.model.parameters()).device  # where the checkpoint was loaded
        self._embedder: Embedder | None = None
        self._blank: tuple[Any, Any] | None = None
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
        """The text as a panel of this mode, normalised (UsageError when the mode cannot).

        P = atom(zeros image, tokens(text), zeros composition), as the users' search UI encoded a
        text. The blank image's vision vector and the zero composition's vector are the same for
        every query, so they are computed once: a query then costs the text tower alone (the
        vision tower is most of the model's cost on a CPU).
        """
        import torch

        self._refuse("text")
        model = self.loaded.model
        with self._lock:
            enc = self.tokenizer.tokenizer(
                [query], truncation=True, max_length=config.TEXT_MAX_TOKENS, return_tensors="pt"
            )
            with torch.inference_mode():
                text = model.atom.text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
                if self.mode == "text":
                    vector = text
                else:
                    blank_vision, zero_comp = self._blank_panel()
                    vector = model.atom.fuse(blank_vision, text, zero_comp)
        return normalise(vector.float().cpu().numpy())[0]

    def _blank_panel(self) -> tuple[Any, Any]:
        """V of an all-zeros image and C of zero composition features (made on first use)."""
        if self._blank is None:
            import torch

            vit = self.loaded.config.vit
            size, channels = int(vit.get("image_size", config.IMAGE_SIZE)), int(vit.get("num_channels", 3))
            atom = self.loaded.model.atom
            zeros_image = torch.zeros((1, channels, size, size), device=self.device)
            with torch.inference_mode():
                self._blank = (atom.vision(zeros_image), atom.comp(torch.zeros((1, 7), device=self.device)))
        return self._blank

    def image(self, data: bytes, name: str) -> ImageVectors:
        """The image as a page without panels, embedded by the worker's code; normalised vectors.

        Raises UsageError when the mode cannot, or when the bytes are not a usable image.
        """
        from comix_embed.common.model.preprocess import PageImageError

        self._refuse("image")
        with self._lock:
            try:
                arrays = self._worker_embedder().embed_image(data, name)
            except PageImageError as exc:
                raise UsageError(str(exc)) from None
        return ImageVectors(
            page=normalise(arrays["page_embeddings"][:1])[0], panel=normalise(arrays["panel_embeddings"][0, :1])[0]
        )

    def warm_up(self) -> None:
        """Run each kind of query this mode takes once (blank-panel vectors, kernels, allocator),
        so that a server's first query costs what every later one does."""
        if self.refusal("text") is None:
            self.text("warming up")
        if self.refusal("image") is None:
            from PIL import Image

            page = io.BytesIO()
            Image.new("RGB", (600, 900), (200, 180, 150)).save(page, format="JPEG")
            self.image(page.getvalue(), "warm-up.jpg")

    def _refuse(self, kind: str) -> None:
        why = self.refusal(kind)
        if why:
            raise UsageError(why)

    def _worker_embedder(self) -> Embedder:
        if self._embedder is None:
            from comix_embed.common.model.embed import Embedder, EmbedSettings

            settings = EmbedSettings(encoder_mode=self.mode, fast_decode=self.fast_decode, decode_threads=1)
            self._embedder = Embedder(self.loaded, self.tokenizer, None, self.device, settings)
        return self._embedder

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
