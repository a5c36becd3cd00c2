"""Checked readers of the COMIX_* environment variables: each variable is declared once, with its rule.

Why one reader per kind (an integer or a number with its bounds, a boolean, a text): a value that
cannot work must stop a command at its start with a message naming the variable (`config.check()`,
exit status 2), and neither crash an import nor pass for something it is not (a misspelt
boolean, "20m" for seconds). Until a check refuses it, a value that breaks its rule reads as the
default. Unset and empty are alike: the default. A variable is read when asked, so that a value
a process sets for its children, or a test for the process, is seen.

A variable named COMIX_TEST_* is a switch for tests only (a fault point, a lock skipped). A process
accepts one only when COMIX_TEST_SWITCHES=1 is set as well, which the test harness does beside
each switch it sets and no deployment does; refused, a switch reads as its default and
`problems()` names it, as it names a COMIX_TEST_* variable that is no switch at all.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

TEST_PREFIX = "COMIX_TEST_"
TEST_SWITCHES = "COMIX_TEST_SWITCHES"  # 1: this process accepts the COMIX_TEST_* switches
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Variable(Generic[T]):
    """One environment variable: its default, and how its text becomes a value (ValueError: why not)."""

    name: str
    default: T
    parse: Callable[[str], T]
    shown: Callable[[str], str] = repr  # how a refused value is quoted (a URL without its password)

    def text(self) -> str | None:
        """The value as set, None when unset or empty."""
        return os.environ.get(self.name) or None

    def problem(self) -> str | None:
        """Why the value set cannot be used, naming the variable; None when it can (or none is set)."""
        raw = self.text()
        if raw is None:
            return None
        if self.name.startswith(TEST_PREFIX) and self.name != TEST_SWITCHES and not _SWITCHES.get():
            return (
                f"{self.name} is a switch for tests only: a process accepts it only beside "
                f"{TEST_SWITCHES}=1, which only the tests set"
            )
        try:
            self.parse(raw)
        except ValueError as exc:
            return f"{self.name}={self.shown(raw)} {exc}"
        return None

    def get(self) -> T:
        """The value now: the default when unset, or when the value set cannot be used."""
        raw = self.text()
        return self.default if raw is None or self.problem() else self.parse(raw)


DECLARED: dict[str, Variable] = {}  # every variable by name: what `problems()` checks


def declare(name: str, default: T, parse: Callable[[str], T], shown: Callable[[str], str] = repr) -> Variable[T]:
    """Declare `name` (once: a second declaration is a programming error) with its parser."""
    if name in DECLARED:
        raise RuntimeError(f"{name} is declared twice")
    variable = Variable(name, default, parse, shown)
    DECLARED[name] = variable
    return variable


def _at_least(value: float, least: float | None, positive: bool) -> None:
    if positive and not value > 0:
        raise ValueError("must be positive")
    if least is not None and not value >= least:
        raise ValueError(f"must be at least {least:g}")


def _integer(at_least: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("is not an integer") from None
        _at_least(value, at_least, False)
        return value

    return parse


def integer(name: str, default: int, *, at_least: int) -> Variable[int]:
    """An integer of at least `at_least`."""
    return declare(name, default, _integer(at_least))


def optional_integer(name: str, *, at_least: int) -> Variable[int | None]:
    """An integer of at least `at_least`, or None when unset (the setting does not apply)."""
    return declare(name, None, _integer(at_least))


def number(name: str, default: float, *, at_least: float | None = None, positive: bool = False) -> Variable[float]:
    """A finite number, positive or of at least `at_least` when asked."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("is not a number") from None
        if not math.isfinite(value):
            raise ValueError("is not a finite number")
        _at_least(value, at_least, positive)
        return value

    return declare(name, default, parse)


def flag(name: str, default: bool) -> Variable[bool]:
    """A boolean: 1, true, yes, on or 0, false, no, off (any case)."""

    def parse(raw: str) -> bool:
        if raw.strip().lower() in TRUE:
            return True
        if raw.strip().lower() in FALSE:
            return False
        raise ValueError(f"is not a boolean ({', '.join(TRUE)} or {', '.join(FALSE)})")

    return declare(name, default, parse)


def text(
    name: str, default: str = "", parse: Callable[[str], str] = str, shown: Callable[[str], str] = repr
) -> Variable[str]:
    """A text, checked by `parse` when given one (ValueError: why it cannot be used)."""
    return declare(name, default, parse, shown)


def problems() -> list[str]:
    """What is wrong with the environment: each declared variable whose value cannot be used, and
    each COMIX_TEST_* variable that is no switch (a misspelt one would silently do nothing)."""
    found = [p for p in (v.problem() for v in DECLARED.values()) if p]
    switches = sorted(n for n in DECLARED if n.startswith(TEST_PREFIX) and n != TEST_SWITCHES)
    for name in sorted(os.environ):
        if name.startswith(TEST_PREFIX) and name not in DECLARED:
            found.append(f"{name} is no test switch (those are {', '.join(switches)})")
    return found


_SWITCHES = flag(TEST_SWITCHES, False)
