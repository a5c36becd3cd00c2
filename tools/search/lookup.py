"""Finding a page's row from what a user pastes: its id, its manifest path, or a unique end of either."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from comix_embed.common.errors import UsageError


def fold_page_ref(ref: str) -> str:
    """A page id or pasted path, compared case-insensitively with `\\` folded to `/`."""
    return ref.strip().replace("\\", "/").lower().removeprefix("./")


class PageLookup:
    """The committed pages' ids and manifest paths, and the row each names."""

    def __init__(self, page_ids: np.ndarray, manifest_paths: np.ndarray, store: Path) -> None:
        self.page_ids = page_ids
        self.manifest_paths = manifest_paths
        self.store = store
        self._row_of = {str(pid): r for r, pid in enumerate(page_ids)}
        self._folded: tuple[str, np.ndarray] | None = None  # every id, folded, joined; each one's start

    def containing(self, fragment: str) -> np.ndarray:
        """Every row whose page id holds `fragment` (case-insensitively, `\\` read as `/`), in row
        order: one pass of a substring search over the ids joined in one string, however many match."""
        key = fold_page_ref(fragment)
        if not key or "\n" in key:
            raise UsageError("give a part of a page id to look for")
        if self._folded is None:
            folded = [fold_page_ref(str(pid)) for pid in self.page_ids]
            starts = np.cumsum([0] + [len(f) + 1 for f in folded[:-1]]) if folded else np.zeros(0, np.int64)
            self._folded = ("\n".join(folded), np.asarray(starts, dtype=np.int64))
        text, starts = self._folded
        hits, at = [], text.find(key)
        while at >= 0:
            hits.append(at)
            at = text.find(key, at + 1)
        return np.unique(np.searchsorted(starts, np.asarray(hits, dtype=np.int64), side="right") - 1)

    def find_row(self, ref: str) -> int:
        """The row of a page: its id or manifest path, exactly; else, case-insensitively with `\\`
        read as `/`, a unique path-suffix match either way (the id ends the pasted path, or the
        pasted text ends the id); else the same last three path components (as the users' UI did).
        """
        if ref in self._row_of:
            return self._row_of[ref]
        exact = np.flatnonzero(self.manifest_paths == ref)
        if len(exact):
            return int(exact[0])
        key = fold_page_ref(ref)
        folded = [fold_page_ref(str(pid)) for pid in self.page_ids]
        tail = _last_parts(key)
        stages = (
            lambda f: f == key or f.endswith("/" + key) or key.endswith("/" + f),
            lambda f: _last_parts(f) == tail,
        )
        for matches_stage in stages:
            matches = [r for r, f in enumerate(folded) if matches_stage(f)]
            if len(matches) == 1:
                return matches[0]
            if matches:
                shown = ", ".join(repr(self.page_ids[r]) for r in matches[:5])
                more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
                raise UsageError(f"page {ref!r} matches {len(matches)} pages: {shown}{more}; give more of its path")
        raise UsageError(f"page {ref!r} is not among the {len(self.page_ids)} committed pages of {self.store}")


def _last_parts(path: str, count: int = 3) -> tuple[str, ...]:
    return tuple(path.split("/")[-count:])
