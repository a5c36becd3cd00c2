"""Embedding a batch of pages: the function every worker calls.

Stages, each timed: read the image bytes, decode and crop (a thread pool, ahead of the encoders:
Pillow releases the GIL while decoding and resizing), tokenize, encode, pool. Only valid panels go
through the encoders, in large batches across pages, texts padded to the longest of their
sub-batch; on CUDA under bf16 autocast. One broken page fails alone, with its reason.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from comix_embed.common import config
from comix_embed.common.inputs.pages import PageSpec, PageTask, PanelSpec
from comix_embed.common.inputs.paths import ImageResolver, PathRefused
from comix_embed.common.inputs.read_errors import InputNotFound, InputUnreadable
from comix_embed.common.inputs.reading import prepare_clients
from comix_embed.common.model.checkpoint import LoadedModel
from comix_embed.common.model.identity import make_identity
from comix_embed.common.model.preprocess import PageImageError, PreparedPage, prepare_page
from comix_embed.common.model.tokenizer import LoadedTokenizer
from comix_embed.common.store.results import BatchResult, empty_arrays
from comix_embed.common.store.schema import STATUS_FAILED

log = logging.getLogger(__name__)


@dataclass
class EmbedSettings:
    encoder_mode: str = "fused"
    # decode JPEGs at reduced scale where every crop keeps >= 224 px (see common/model/preprocess.py)
    fast_decode: bool = True
    decode_threads: int = max(1, min(8, os.cpu_count() or 1))
    # crops per encoder call: large batches keep a GPU busy; bounded to cap memory
    encode_batch: int = 256
    # bf16 autocast on CUDA (outputs checked against fp32 in benchmarks/throughput.py)
    amp: bool = True


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is the first visible GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Embedder:
    """A loaded model plus tokenizer on one device, turning PageTasks into store arrays.

    `resolver` confines the pages' images to the image roots; an Embedder without one embeds only
    images handed to it (`embed_image`, for image queries).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        tokenizer: LoadedTokenizer,
        resolver: ImageResolver | None,
        device: torch.device | str = "cpu",
        settings: EmbedSettings | None = None,
    ) -> None:
        self.settings = settings or EmbedSettings()
        if self.settings.encoder_mode not in config.ENCODER_MODES:
            raise ValueError(f"encoder mode must be one of {config.ENCODER_MODES}")
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        self.tokenizer = tokenizer.tokenizer
        self.resolver = resolver
        self.d = loaded.config.d
        self.identity = make_identity(
            loaded.sha256, self.d, self.settings.encoder_mode, tokenizer.identity, tokenizer.legacy_identity
        )
        self._pool = ThreadPoolExecutor(self.settings.decode_threads, thread_name_prefix="decode")
        self._readers = ThreadPoolExecutor(config.REMOTE_READS_IN_FLIGHT, thread_name_prefix="read")

    # ---- CPU side ----
    def _read(self, task: PageTask) -> tuple[bytes, float] | str:
        """The page's image bytes and the seconds the read took, or the reason the page failed."""
        if task.error:
            return task.error
        if task.spec is None:
            return "no DataSpec content for this page"
        if self.resolver is None:
            return "no image root: this embedder embeds only images handed to it"
        t0 = time.perf_counter()
        try:
            return self.resolver.read(task.root, task.image), time.perf_counter() - t0
        except PathRefused as exc:
            return str(exc)
        except InputNotFound as exc:
            return f"image not found: {exc.where} ({exc.reason})"
        except InputUnreadable as exc:
            return f"cannot read image {exc.where}: {exc.reason}"
        except FileNotFoundError as exc:
            return f"image not found: {task.image} ({exc.filename or exc})"
        except OSError as exc:
            return f"cannot read image {task.image}: {exc}"

    def _prepare(self, task: PageTask, read: Future[tuple[bytes, float] | str] | None = None) -> PreparedPage | str:
        """Inputs of one page, or the reason it failed; `read` is its image read ahead, if it was."""
        item = read.result() if read is not None else self._read(task)
        if isinstance(item, str):
            return item
        data, read_s = item
        assert task.spec is not None
        t1 = time.perf_counter()
        try:
            page = prepare_page(task.spec, data, task.image, self.settings.fast_decode)
        except PageImageError as exc:
            return str(exc)
        page.timings = {"read": read_s, "decode_crop": time.perf_counter() - t1}
        return page

    def _prepared_chunks(
        self, tasks: list[PageTask], stats: dict[str, float], failures: dict[int, str]
    ) -> Iterator[list[tuple[int, PreparedPage]]]:
        """Prepared pages in groups of about `encode_batch` crops, decoded ahead by the pool.

        Images are read ahead of decoding by their own pool (object storage answers in tens of
        milliseconds: reads in flight, at most REMOTE_READS_IN_FLIGHT, hide it). A page that
        cannot be read goes to `failures` (its index and reason) and into no group.
        """
        chunk: list[tuple[int, PreparedPage]] = []
        crops = 0
        wait0 = time.perf_counter()
        reads = [self._readers.submit(self._read, task) for task in tasks]
        for i, item in enumerate(self._pool.map(self._prepare, tasks, reads)):
            if isinstance(item, str):
                failures[i] = item
                continue
            stats["read"] += item.timings["read"]
            stats["decode_crop"] += item.timings["decode_crop"]
            chunk.append((i, item))
            crops += len(item.crops)
            if crops >= self.settings.encode_batch:
                stats["decode_wait"] += time.perf_counter() - wait0
                yield chunk
                wait0 = time.perf_counter()
                chunk, crops = [], 0
        stats["decode_wait"] += time.perf_counter() - wait0
        if chunk:
            yield chunk

    # ---- device side ----
    def _autocast(self):
        if self.device.type == "cuda" and self.settings.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _panel_vectors(self, pages: list[PreparedPage], stats: dict[str, float]) -> torch.Tensor:
        """P for every valid panel of `pages`, flattened in page order: (sum n, d) float32."""
        mode = self.settings.encoder_mode
        step = self.settings.encode_batch
        crops = np.concatenate([p.crops for p in pages])
        comp = torch.from_numpy(np.concatenate([p.comp for p in pages])).to(self.device)
        texts = [t for p in pages for t in p.texts]
        t0 = time.perf_counter()
        enc = None
        if mode in ("fused", "text"):
            enc = self.tokenizer(texts, truncation=True, max_length=config.TEXT_MAX_TOKENS, padding=False)["input_ids"]
        stats["tokenize"] += time.perf_counter() - t0
        out = torch.empty((len(texts), self.d), dtype=torch.float32, device=self.device)
        # texts sorted by length so each sub-batch pads to a similar length
        order = sorted(range(len(texts)), key=lambda i: len(enc[i])) if enc is not None else list(range(len(texts)))
        for s in range(0, len(order), step):
            idx = order[s : s + step]
            images = ids = mask = None
            if mode in ("fused", "vision"):
                images = self._to_images(crops[idx])
            if enc is not None:
                ids, mask = self._pad([enc[i] for i in idx])
            with self._autocast():
                vec = self.model.panel_vectors(mode, images, ids, mask, comp[idx])
            out[torch.as_tensor(idx, device=self.device)] = vec.float()
        return out

    def _to_images(self, crops: np.ndarray) -> torch.Tensor:
        """uint8 NHWC on the host -> float [0, 1] NCHW on the device (a quarter of the copy)."""
        t = torch.from_numpy(np.ascontiguousarray(crops))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t.permute(0, 3, 1, 2).float().div_(255.0)

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _encode_chunk(
        self, chunk: list[tuple[int, PreparedPage]], arrays: dict[str, np.ndarray], stats: dict[str, float]
    ) -> None:
        pages = [p for _, p in chunk]
        t0 = time.perf_counter()
        with torch.inference_mode():
            flat = self._panel_vectors(pages, stats)
            counts = [len(p.crops) for p in pages]
            padded = torch.zeros((len(pages), config.MAX_PANELS, self.d), device=self.device)
            mask = torch.zeros((len(pages), config.MAX_PANELS), dtype=torch.bool, device=self.device)
            start = 0
            for j, n in enumerate(counts):
                padded[j, :n] = flat[start : start + n]
                mask[j, :n] = True
                start += n
            with self._autocast():
                page, attention, order = self.model.pool(padded, mask)
            page, attention = page.float(), attention.float()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        stats["encode"] += time.perf_counter() - t0
        rows = np.array([i for i, _ in chunk])
        arrays["page_embeddings"][rows] = page.cpu().numpy()
        arrays["panel_embeddings"][rows] = padded.cpu().numpy()
        arrays["panel_mask"][rows] = mask.cpu().numpy()
        arrays["attention_weights"][rows] = attention.cpu().numpy()
        arrays["reading_order"][rows] = order.cpu().numpy().astype(np.int16)
        for (i, p), n in zip(chunk, counts):
            arrays["panel_coordinates"][i, :n] = p.coords
            arrays["text_content"][i, :n] = p.text_json
            arrays["page_text"][i] = p.page_text
            arrays["status"][i] = p.status

    def warm_up(self) -> None:
        """One synthetic page through every stage, so the first real batch pays no first-call costs
        (thread pools, kernels, allocator, tokenizer caches, this process's S3 client or HTTP pool)."""
        if self.resolver is not None:
            prepare_clients(self.resolver.roots)
        buf = io.BytesIO()
        Image.new("RGB", (1200, 1800), (200, 180, 150)).save(buf, format="JPEG")
        spec = PageSpec(
            image="warm-up.jpg",
            panels=[
                PanelSpec(box=[40, 40, 1120, 800], text={"dialogue": ["Warming up!"], "narration": [], "sfx": []}),
                PanelSpec(box=[40, 900, 540, 860]),
            ],
        )
        page = prepare_page(spec, buf.getvalue(), spec.image, self.settings.fast_decode)
        stats = {k: 0.0 for k in ("tokenize", "encode")}
        self._encode_chunk([(0, page)], self.empty_arrays(1), stats)

    def embed_image(self, data: bytes, name: str) -> dict[str, np.ndarray]:
        """One image embedded as a page without panels: the whole image as its one panel, through
        the same preprocessing, encoders, fusion and pooling as every page a worker embeds, so that
        an image query lives in the store's embedding space. Returns the page's arrays (one row).

        Raises PageImageError when the bytes are not a usable image.
        """
        page = prepare_page(PageSpec(image=name), data, name, self.settings.fast_decode)
        arrays = self.empty_arrays(1)
        self._encode_chunk([(0, page)], arrays, {"tokenize": 0.0, "encode": 0.0})
        return arrays

    def empty_arrays(self, n: int) -> dict[str, np.ndarray]:
        return empty_arrays(n, self.d, config.MAX_PANELS)

    def embed(
        self, tasks: list[PageTask], guard: Callable[[PageTask, str], AbstractContextManager[Any]] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """The store arrays for `tasks` (one row each, in order) and the time spent per stage.

        With `guard`, each page is read, decoded and encoded alone, inside `guard(task, stage)`
        ("decode", then "encode"): a page that kills its process is known by its guard. Encoding
        pages one by one changes the encoders' batches, so numbers may differ in the last bits.
        """
        t0 = time.perf_counter()
        stats = {k: 0.0 for k in ("read", "decode_crop", "decode_wait", "tokenize", "encode")}
        failures: dict[int, str] = {}
        arrays = self.empty_arrays(len(tasks))
        if guard is None:
            for chunk in self._prepared_chunks(tasks, stats, failures):
                self._encode_chunk(chunk, arrays, stats)
        else:
            for i, task in enumerate(tasks):
                with guard(task, "decode"):
                    item = self._prepare(task)
                if isinstance(item, str):
                    failures[i] = item
                    continue
                stats["read"] += item.timings["read"]
                stats["decode_crop"] += item.timings["decode_crop"]
                with guard(task, "encode"):
                    self._encode_chunk([(i, item)], arrays, stats)
        for i, reason in failures.items():
            arrays["status"][i] = STATUS_FAILED
            arrays["error"][i] = reason
            log.warning("page %s (row %d) failed: %s", tasks[i].page_id, tasks[i].row, reason)
        for i, task in enumerate(tasks):
            arrays["image_path"][i] = task.image
            arrays["image_root"][i] = task.root
        stats["total"] = time.perf_counter() - t0
        return arrays, stats

    def embed_batch(
        self,
        job: str,
        batch_id: int,
        tasks: list[PageTask],
        guard: Callable[[PageTask, str], AbstractContextManager[Any]] | None = None,
    ) -> BatchResult:
        """`embed` packaged as the writer expects it."""
        return self.result(job, batch_id, tasks, *self.embed(tasks, guard))

    def result(
        self, job: str, batch_id: int, tasks: list[PageTask], arrays: dict[str, np.ndarray], timings: dict[str, float]
    ) -> BatchResult:
        """A batch's arrays with this model's identity, as the writer expects them."""
        return BatchResult(
            job=job,
            batch_id=batch_id,
            start=tasks[0].row,
            page_ids=[t.page_id for t in tasks],
            arrays=arrays,
            model=self.identity.to_dict(),
            timings=timings,
            rows=[t.row for t in tasks],
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._readers.shutdown(wait=True)
