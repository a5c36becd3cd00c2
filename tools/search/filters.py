"""Filters applied before ranking: which committed rows a search may return, as one row mask.

A filter narrows every search mode alike (text, like, image, keyword, id): the mask is computed
once per store snapshot and filter, then each search part ranks within it with its own top-k
(exact.py masks its scores, ann.py searches only allowed positions), so a filtered search returns
k results whenever k pages pass, not the few of an unfiltered top-k that happen to pass.

Fields, all case-insensitive:
- `series`: the page's series contains the text (a series is long and typed in part);
- `volume`, `issue`, `source`: equal to the text (they are short codes: `v2`, `001`, `calibre`);
- `id_contains`: the page id contains the text (`\\` read as `/`, as `query --id`);
- `text_contains`: the page's text contains the phrase (embedded pages: failed ones have no text read);
- `status`: `ok` (embedded, from panels or the whole page) or `failed`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import msgspec
import numpy as np

from comix_embed.common.errors import UsageError

STATUSES = ("ok", "failed")
# Fields matched by containment; the other page columns by equality.
CONTAINS = ("series",)
COLUMNS = ("series", "volume", "issue", "source")


class PageFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What a search is narrowed to; an empty field does not narrow (module docstring)."""

    series: str = ""
    volume: str = ""
    issue: str = ""
    source: str = ""
    id_contains: str = ""
    text_contains: str = ""
    status: str = ""

    def __post_init__(self) -> None:
        if self.status not in ("", *STATUSES):
            raise UsageError(f"filter status must be one of {', '.join(STATUSES)}, not {self.status!r}")

    @classmethod
    def of_values(cls, values: Mapping[str, str]) -> PageFilter:
        """From form, query-string or JSON fields (other fields ignored); values stripped."""
        found = {name: str(values.get(name, "") or "").strip() for name in FIELDS}
        return cls(**{name: value for name, value in found.items() if value})

    @classmethod
    def of_json(cls, text: str, where: str = "--filters") -> PageFilter:
        """From a JSON object of fields (the users' `--filters '{"series": "..."}'`), every key checked."""
        try:
            found = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(found, dict):
            raise UsageError(f"{where}: give a JSON object of fields ({', '.join(FIELDS)})")
        unknown = sorted(set(found) - set(FIELDS))
        if unknown:
            raise UsageError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
        return cls.of_values({k: str(v) for k, v in found.items()})

    def merged(self, other: PageFilter) -> PageFilter:
        """This filter with `other`'s non-empty fields laid over it."""
        return msgspec.structs.replace(self, **{k: v for k, v in msgspec.structs.asdict(other).items() if v})

    @property
    def active(self) -> bool:
        return any(msgspec.structs.asdict(self).values())

    def fields(self) -> dict[str, str]:
        """The non-empty fields, for links and the JSON answer."""
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v}

    def describe(self) -> str:
        """`series contains "x", status ok`: how a person reads this filter."""
        return ", ".join(
            f"{name.replace('_', ' ')}{'' if name.endswith('_contains') or name in CONTAINS else ' ='}"
            f"{' contains' if name in CONTAINS else ''} {value!r}"
            for name, value in self.fields().items()
        )


FIELDS = tuple(PageFilter.__struct_fields__)


class ColumnCodes:
    """One page column as codes into its distinct lower-cased values: a filter on it compares the
    few distinct values, then picks rows by code (one pass over an int array at 1.2M pages)."""

    def __init__(self, values: np.ndarray) -> None:
        import pandas as pd  # hash-based factorize, as text.py's postings

        codes, uniques = pd.factorize(np.asarray(values, dtype=object))
        self.codes = np.asarray(codes, dtype=np.int32)
        self.values = [str(v).lower() for v in uniques]

    def rows_where(self, wanted: str, contains: bool) -> np.ndarray:
        """A row mask: the value contains (else equals) `wanted`, case-insensitively."""
        key = wanted.lower()
        hits = [i for i, v in enumerate(self.values) if (key in v if contains else v == key)]
        return np.isin(self.codes, np.asarray(hits, dtype=np.int32))
