"""A batch's embeddings as they travel from a worker to the writer.

The arrays are the store's result arrays (docs/store.md, "Arrays") for a fixed, contiguous row range. They are
packed with msgpack as raw little-endian buffers (no pickle, no float lists): about the size of
the arrays themselves, and cheap to unpack. The envelope is declared in common/messages.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from comix_embed.common.messages import (
    RESULT_FORMAT,
    ArrayData,
    MalformedMessage,
    ResultEnvelope,
    check_version,
    decode_msgpack,
)
from comix_embed.common.store.schema import STATUS_FAILED


@dataclass
class BatchResult:
    """Rows [start, start + len(page_ids)) of one job, with the model that made them.

    Travels as a `ResultEnvelope` (common/messages.py); `from_bytes` refuses, with the field at
    fault, anything that does not decode into one (MalformedMessage).
    """

    job: str
    batch_id: int
    start: int
    page_ids: list[str]
    arrays: dict[str, np.ndarray]
    model: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)  # each page's row (empty: from `start` on)

    @property
    def end(self) -> int:
        return self.start + len(self.page_ids)

    def row_list(self) -> list[int]:
        """Each page's row: `rows`, or the contiguous range from `start`."""
        return list(self.rows) if self.rows else list(range(self.start, self.end))

    def to_bytes(self) -> bytes:
        from comix_embed.common.model.identity import identity_of

        packed = {}
        for name, arr in self.arrays.items():
            if arr.dtype.kind in "OUT":
                packed[name] = ArrayData(shape=list(arr.shape), strings=[str(s) for s in arr.reshape(-1)])
            else:
                arr = np.ascontiguousarray(arr)
                little = arr.dtype.newbyteorder("<")
                packed[name] = ArrayData(
                    shape=list(arr.shape), dtype=little.str, data=arr.astype(little, copy=False).tobytes()
                )
        envelope = ResultEnvelope(
            v=RESULT_FORMAT,
            job=self.job,
            batch_id=self.batch_id,
            start=self.start,
            page_ids=list(self.page_ids),
            arrays=packed,
            model=identity_of(self.model),
            timings=self.timings,
            rows=list(self.rows),
        )
        return msgspec.msgpack.encode(envelope)

    @classmethod
    def from_bytes(cls, blob: bytes) -> BatchResult:
        env = decode_msgpack(blob, ResultEnvelope, "batch result")
        check_version("result", env.v, RESULT_FORMAT, "writer")
        arrays = {}
        for name, item in env.arrays.items():
            shape = tuple(item.shape)
            try:
                if item.strings is not None:
                    arrays[name] = np.array(item.strings, dtype=object).reshape(shape)
                elif item.dtype is not None and item.data is not None:
                    arrays[name] = np.frombuffer(item.data, dtype=np.dtype(item.dtype)).reshape(shape)
                else:
                    raise ValueError("neither strings nor dtype and data")
            except (TypeError, ValueError) as exc:
                raise MalformedMessage(f"batch result {env.batch_id}: array {name}: {exc}") from None
        return cls(
            job=env.job,
            batch_id=env.batch_id,
            start=env.start,
            page_ids=env.page_ids,
            arrays=arrays,
            model=env.model.to_dict(),
            timings=env.timings,
            rows=list(env.rows),
        )


def empty_arrays(n: int, d: int, p: int) -> dict[str, np.ndarray]:
    """Arrays for n pages as failed and never-written rows look: zeros, empty strings, -1 order."""
    text = np.empty((n, p), dtype=object)
    text[:] = ""
    strings = {k: np.array([""] * n, dtype=object) for k in ("page_text", "image_path", "error")}
    return {
        "page_embeddings": np.zeros((n, d), np.float32),
        "panel_embeddings": np.zeros((n, p, d), np.float32),
        "panel_mask": np.zeros((n, p), bool),
        "attention_weights": np.zeros((n, p), np.float32),
        "reading_order": np.full((n, p), -1, np.int16),
        "panel_coordinates": np.zeros((n, p, 4), np.float32),
        "text_content": text,
        "status": np.zeros(n, np.int8),
        "image_root": np.full(n, -1, np.int16),
        **strings,
    }


def failed_result(
    job: str,
    batch_id: int,
    start: int,
    page_ids: list[str],
    reasons: list[str],
    model: dict[str, Any],
    images: list[str],
) -> BatchResult:
    """A batch whose every page failed, each with its reason: what a batch that can never be
    embedded is committed as, so that `committed_rows` moves past it."""
    arrays = empty_arrays(len(page_ids), int(model["embedding_dim"]), int(model["max_panels"]))
    arrays["status"][:] = STATUS_FAILED
    arrays["error"][:] = np.array(reasons, dtype=object)
    arrays["image_path"][:] = np.array(images, dtype=object)
    return BatchResult(job=job, batch_id=batch_id, start=start, page_ids=list(page_ids), arrays=arrays, model=model)
