"""The store's root attributes that the writer keeps as it goes, declared once for every reader.

The root `zarr.json` holds, besides the model's identity (read by `identity_of`,
common/model/identity.py) and what xarray shows: how many rows are readable in order
(`committed_rows`), how many the registered jobs own (`registered_rows`), the jobs themselves in
registration order (`RegisteredJob`), and the manifests' checkpoint (`ManifestCheckpoint`,
common/store/manifests.py). Only the writer writes them (writer/growth.py); readers decode them
here, so that a malformed attribute is refused with its name, not met as a KeyError elsewhere.
Attributes this module does not declare are left as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from comix_embed.common.messages import convert


class ManifestCheckpoint(msgspec.Struct, kw_only=True):
    """Every batch below `batches` has a manifest; they cover rows [0, `rows`) with these status
    counts. Written in the same rewrite of the root `zarr.json` as `committed_rows`."""

    batches: int = 0
    rows: int = 0
    statuses: dict[str, int] = msgspec.field(default_factory=dict)


class RegisteredJob(msgspec.Struct, kw_only=True):
    """A job as the store records it when it gives the job its rows [start_row, end_row)."""

    job_id: str
    list_path: str
    list_sha256: str
    created: str
    start_row: int
    end_row: int
    batch_size: int
    first_batch: int
    num_batches: int


class StoreAttributes(msgspec.Struct, kw_only=True):
    """The writer's bookkeeping among the root attributes (a store from before the checkpoint has
    none: `manifest_checkpoint` is None)."""

    committed_rows: int = 0
    registered_rows: int = 0
    jobs: list[RegisteredJob] = msgspec.field(default_factory=list)
    manifest_checkpoint: ManifestCheckpoint | None = None

    @classmethod
    def of(cls, attrs: Mapping[str, Any]) -> StoreAttributes:
        """Decoded from the root attributes; MalformedMessage names the attribute at fault."""
        return convert(attrs, cls, "the store's root attributes")

    def job_ids(self) -> list[str]:
        return [j.job_id for j in self.jobs]
