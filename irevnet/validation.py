"""Range checks for the options dataclasses: each option is checked once, where it is defined.

Messages name the command-line flag, since that is where most values come from.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)

from .errors import IRevNetError

MAX_THREADS = 1024  # intra-op threads; more is a typo, not a machine
MAX_BATCH = 65536  # the largest dynamic batch a bundle may declare (manifest schema: batch.max)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _lower(low: float, open_: bool) -> str:
    if low == 0:
        return "positive" if open_ else "0 or more"
    return f"above {low:g}" if open_ else f"at least {low:g}"


def integer(name: str, value: Any, low: int, high: int | None = None, *, optional: bool = False) -> None:
    """`value` is an int in [low, high] (None allowed when optional)."""
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise IRevNetError(f"{flag(name)} must be an integer, got {value!r}")
    if value < low:
        raise IRevNetError(f"{flag(name)} must be {_lower(low, False)}, got {value}")
    if high is not None and value > high:
        raise IRevNetError(f"{flag(name)} must be at most {high}, got {value}")


def finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is neither NaN nor infinite: what strict JSON can hold."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(name: str, value: Any, low: float, high: float | None = None, *, low_open: bool = False,
           optional: bool = False) -> None:
    """`value` is a finite number in [low, high] ((low, high] when low_open; None when optional)."""
    if value is None and optional:
        return
    if not finite_number(value):
        raise IRevNetError(f"{flag(name)} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low):
        raise IRevNetError(f"{flag(name)} must be {_lower(low, low_open)}, got {value:g}")
    if high is not None and value > high:
        raise IRevNetError(f"{flag(name)} must be at most {high:g}, got {value:g}")


def threads(value: int | None) -> None:
    integer("threads", value, 1, MAX_THREADS, optional=True)


def paths(options: Any, *names: str) -> None:
    """Path fields of an options dataclass (frozen or not): none empty (an empty one would mean the
    current folder), each stored as text, so that run records and manifests hold strings."""
    for name in names:
        value = getattr(options, name)
        if not str(value).strip():
            raise IRevNetError(f"{flag(name)} is empty; give a path")
        object.__setattr__(options, name, str(value))


def choice(name: str, value: Any, enum: type[E]) -> E:
    """`value` as a member of `enum` (given as the member or its value), or a one-line error."""
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(str(e.value) for e in enum)
        raise IRevNetError(f"{flag(name)} must be one of {choices}, got {value!r}") from None
