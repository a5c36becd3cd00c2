"""A batch's embeddings as they travel from a worker to the writer.

The arrays are the per-page arrays of spec/store.md for a fixed, contiguous row range. They are
packed with msgpack as raw little-endian buffers (no pickle, no float lists): about the size of
the arrays themselves, and cheap to unpack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

# Arrays a batch result carries: name -> (dims after page_id, numpy dtype or "str").
# "d" is the embedding width, "P" max_panels. Metadata columns (page_id, source, ...) are written
# when the job is registered, not per batch.
RESULT_ARRAYS: dict[str, tuple[tuple[str, ...], str]] = {
    "page_embeddings": (("d",), "float32"),
    "panel_embeddings": (("P", "d"), "float32"),
    "panel_mask": (("P",), "bool"),
    "attention_weights": (("P",), "float32"),
    "reading_order": (("P",), "int16"),
    "panel_coordinates": (("P", "4"), "float32"),
    "text_content": (("P",), "str"),
    "page_text": ((), "str"),
    "image_path": ((), "str"),
    # which image root (index in the `--image-root` order) `image_path` is relative to
    "image_root": ((), "int16"),
    "status": ((), "int8"),
    "error": ((), "str"),
}

STATUS_PENDING = 0
STATUS_OK = 1
STATUS_FAILED = 2
STATUS_FULL_PAGE = 3
# How manifests, the audit log and the tools name the committed statuses.
STATUS_NAMES = {STATUS_OK: "ok", STATUS_FAILED: "failed", STATUS_FULL_PAGE: "full_page"}


@dataclass
class BatchResult:
    """Rows [start, start + len(page_ids)) of one job, with the model that made them."""

    job: str
    batch_id: int
    start: int
    page_ids: list[str]
    arrays: dict[str, np.ndarray]
    model: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.start + len(self.page_ids)

    def to_bytes(self) -> bytes:
        packed = {}
        for name, arr in self.arrays.items():
            if arr.dtype.kind in "OUT":
                packed[name] = {"str": [str(s) for s in arr.reshape(-1)], "shape": list(arr.shape)}
            else:
                arr = np.ascontiguousarray(arr)
                packed[name] = {
                    "dtype": arr.dtype.newbyteorder("<").str,
                    "shape": list(arr.shape),
                    "data": arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(),
                }
        return msgpack.packb(
            {
                "job": self.job,
                "batch_id": self.batch_id,
                "start": self.start,
                "page_ids": self.page_ids,
                "arrays": packed,
                "model": self.model,
                "timings": self.timings,
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> BatchResult:
        raw = msgpack.unpackb(blob, raw=False)
        arrays = {}
        for name, item in raw["arrays"].items():
            shape = tuple(item["shape"])
            if "str" in item:
                arrays[name] = np.array(item["str"], dtype=object).reshape(shape)
            else:
                arrays[name] = np.frombuffer(item["data"], dtype=np.dtype(item["dtype"])).reshape(shape)
        return cls(
            job=raw["job"],
            batch_id=raw["batch_id"],
            start=raw["start"],
            page_ids=list(raw["page_ids"]),
            arrays=arrays,
            model=raw.get("model", {}),
            timings=raw.get("timings", {}),
        )
