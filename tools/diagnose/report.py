"""What a check found and how diagnose words it: one line per check, then a verdict."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comix_embed.tools.diagnose.load import Store

LISTED = 5  # rows or batches named per problem


@dataclass
class Check:
    """One check's outcome: its problems by severity and informative notes."""

    name: str
    fails: list[str] = field(default_factory=list)
    warns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def level(self) -> str:
        return "FAIL" if self.fails else "WARN" if self.warns else "OK"

    def line(self) -> str:
        detail = "; ".join(self.fails + self.warns + self.notes)
        return f"{self.level:<4}  {self.name:<14}  {detail}"


def plural(count: int, one: str, many: str) -> str:
    return one if count == 1 else many


def listed(items: Iterable[Any], limit: int = LISTED) -> str:
    """`a, b, c and 4 more`: enough to find the rows without flooding the line."""
    items = list(items)
    head = ", ".join(str(i) for i in items[:limit])
    return head + (f" and {len(items) - limit} more" if len(items) > limit else "")


def header(path: Path, s: Store | None) -> str:
    """The first line: how far the store is committed and whether a writer runs."""
    if s is None:
        return f"{path}: unreadable"
    writer = "a writer is running" if s.writer_running else "no writer running"
    return f"{path}: {s.committed} of {s.registered} registered rows committed, arrays of {s.array_rows} rows, {writer}"


def verdict(checks: list[Check]) -> str:
    failed = [c.name for c in checks if c.level == "FAIL"]
    warned = [c.name for c in checks if c.level == "WARN"]
    if failed:
        return f"verdict: FAIL ({len(failed)} of {len(checks)} checks failed: {', '.join(failed)})"
    if warned:
        return f"verdict: OK with warnings ({', '.join(warned)})"
    return f"verdict: OK ({len(checks)} checks passed)"
