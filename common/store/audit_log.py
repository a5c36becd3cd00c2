"""The audit log's record, one JSON line per committed page: written by the writer, read by diagnose.

The log (`<output_dir>/audit.jsonl`) says what happened to every page; its lines are the record
below, declared once here because the writer (writer/audit.py) writes them and diagnose
(tools/diagnose/audit.py) reads them without the writer's code.
"""

from __future__ import annotations

import msgspec

from comix_embed.common.messages import decode_json


class AuditRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One committed page: its row, page id, DataSpec path, batch and job, status and error, the
    panel mask's sum and the page embedding's L2 norm (rounded to 6 decimals), and when. A retry
    (`--retry-failed`) adds a record marked `retry` for each row it overwrote."""

    row: int
    page_id: str
    manifest_path: str = msgspec.field(name="json")
    batch: int
    job: str
    status: str
    error: str
    mask_sum: int
    emb_l2: float
    time: str
    retry: bool = False

    def line(self) -> bytes:
        return msgspec.json.encode(self) + b"\n"

    @classmethod
    def decode(cls, line: bytes | str) -> AuditRecord:
        """One line of the log; MalformedMessage names the field at fault."""
        return decode_json(line, cls, "audit record")
