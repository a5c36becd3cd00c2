"""What happened to every page: the audit log and the `--verbose` lines.

The audit log (`<output_dir>/audit.jsonl`, one `AuditRecord` per line, common/store/audit_log.py)
is appended and flushed after every commit, so a crash loses at most the lines of the batch
being acknowledged (its manifest is the truth); the users' old tool wrote its audit only at the
end and lost it on every crash.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from comix_embed.common.store.audit_log import AuditRecord
from comix_embed.common.store.schema import STATUS_NAMES


def page_records(
    batch_id: int,
    job: str,
    start: int,
    page_ids: list[str],
    manifest_paths: list[str],
    arrays: dict[str, np.ndarray],
    retry: bool = False,
) -> list[AuditRecord]:
    """One audit record per page of a committed batch (`retry`: of a row a retry overwrote)."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    l2 = np.linalg.norm(arrays["page_embeddings"].astype(np.float64), axis=1)
    masks = np.asarray(arrays["panel_mask"], dtype=bool).sum(axis=1)
    return [
        AuditRecord(
            row=start + i,
            page_id=page_id,
            manifest_path=manifest_paths[i],
            batch=batch_id,
            job=job,
            status=STATUS_NAMES.get(int(arrays["status"][i]), str(int(arrays["status"][i]))),
            error=str(arrays["error"][i]),
            mask_sum=int(masks[i]),
            emb_l2=round(float(l2[i]), 6),
            time=now,
            retry=retry,
        )
        for i, page_id in enumerate(page_ids)
    ]


def verbose_line(record: AuditRecord) -> str:
    """The line users grep: `[PAGE] json=0022.json page_id=... idx=17019 mask_sum=6 emb_l2=2.439`."""
    name = os.path.basename(record.manifest_path.replace("\\", "/"))
    return (
        f"[PAGE] json={name} page_id={record.page_id} idx={record.row} "
        f"mask_sum={record.mask_sum} emb_l2={record.emb_l2:.3f}"
    )


class AuditLog:
    """Append-only JSON-lines log, written through after every commit.

    A write that fails (a full disk) is cut back to the last whole line, so that the log never
    holds a torn line; the batch's manifest stays the truth.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, records: list[AuditRecord]) -> None:
        data = b"".join(r.line() for r in records)
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            os.ftruncate(self._fd, size)
            raise

    def close(self) -> None:
        os.close(self._fd)
