"""The messages between roles, declared once: typed structures that validate as they decode.

- `TaskPayload`: one batch as the producer sends it to a worker (Celery task argument, JSON), and
  as the job keeps it on disk for re-sending (`jobs/job_NNNNNN.tasks.jsonl`).
- `ResultEnvelope`: one batch's arrays as a worker hands them to the writer (msgpack, in the
  results stream).
- `ModelIdentity`: the model a job is bound to, carried by jobs, tasks, results and the store.
Job files (`common/store/jobs.py`) and pages (`common/inputs/pages.py`) are declared beside their owners and
decoded through `decode_json` / `convert` here.

Every message carries a format version `v`. A reader accepts every version up to its own (fields
added later have defaults, unknown fields are ignored) and refuses a newer one with a reason that
says which side to upgrade: a worker and a writer of different versions understand each other or
refuse clearly, never crash. A message that does not decode is refused here, once, with the
field at fault (`MalformedMessage`).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from comix_embed.common.inputs.pages import PageTask

TASK_FORMAT = 2  # 1: no `v`, no `model`
RESULT_FORMAT = 3  # 1: no `v`, no `tokenizer_legacy` in the model; 2: no `rows`
JOB_FORMAT = 3  # 1: no `format`, no `model`, no tasks file; 2: pages inside the job file

T = TypeVar("T")


class MalformedMessage(ValueError):
    """A message that does not decode, or comes in a format newer than this process reads."""


class ModelIdentity(msgspec.Struct, frozen=True, kw_only=True):
    """What makes two models' embeddings comparable; `common/model/identity.py` decides "same model"."""

    model_name: str
    embedding_dim: int
    max_panels: int
    encoder_mode: str
    checkpoint_sha256: str
    tokenizer: str  # content hash (common/model/tokenizer.py), or the old form in stores written before
    tokenizer_legacy: str = ""  # the old form of the same files, where they were at hand

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


class TaskPayload(msgspec.Struct, kw_only=True):
    """One batch of pages for a worker, with the rows they own."""

    job: str
    batch_id: int
    store_id: str
    pages: list[PageTask]
    image_roots: list[str] = msgspec.field(default_factory=list)
    model: ModelIdentity | None = None  # the job's model (None in format 1)
    v: int = 1

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


class ArrayData(msgspec.Struct, omit_defaults=True):
    """One array of a result: raw little-endian bytes with dtype and shape, or strings."""

    shape: list[int]
    dtype: str | None = None
    data: bytes | None = None
    strings: list[str] | None = msgspec.field(default=None, name="str")


class ResultEnvelope(msgspec.Struct, kw_only=True):
    """Rows [start, start + len(page_ids)) of one job as a worker computed them; a retry batch's
    rows, which need not be contiguous, are listed in `rows` (empty: the contiguous range)."""

    job: str
    batch_id: int
    start: int
    page_ids: list[str]
    arrays: dict[str, ArrayData]
    model: ModelIdentity
    timings: dict[str, float] = msgspec.field(default_factory=dict)
    rows: list[int] = msgspec.field(default_factory=list)
    v: int = 1


def check_version(what: str, found: int, supported: int, reader: str) -> None:
    if found > supported:
        raise MalformedMessage(
            f"{what} format {found} is newer than this {reader} reads ({supported}): upgrade the {reader}"
        )


def decode_msgpack(blob: bytes, kind: type[T], what: str) -> T:
    try:
        return msgspec.msgpack.decode(blob, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedMessage(f"{what}: {exc}") from None


def decode_json(blob: bytes | str, kind: type[T], what: str) -> T:
    try:
        return msgspec.json.decode(blob, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedMessage(f"{what}: {exc}") from None


def convert(data: Any, kind: type[T], what: str) -> T:
    """An already-decoded object (a Celery task argument) checked into `kind`."""
    try:
        return msgspec.convert(data, type=kind)
    except msgspec.ValidationError as exc:
        raise MalformedMessage(f"{what}: {exc}") from None


def decode_task(data: Any) -> TaskPayload:
    task = convert(data, TaskPayload, "task payload")
    check_version("task", task.v, TASK_FORMAT, "worker")
    return task


def encode_json(obj: Any) -> bytes:
    return msgspec.json.encode(obj)
