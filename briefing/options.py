"""Checked options: the one place where a setting's type and range are checked (no torch here).

Every constructor of the project (selectors, fold policies, workers, backends) checks its settings with these, so
that a bad value ends in one line that names the owner, the argument, what it must be and what it got:

    check_int("TopK", "tokens", 0, low=1)   ->  BriefingError: TopK: tokens must be an integer >= 1, got 0.

`error` is the exception class to raise (BriefingError in `briefing`, ValueError elsewhere).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

from briefing.errors import BriefingError


def is_number(value: object) -> bool:
    """A finite int or float (bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fail(owner: str, name: str, must: str, value: object, what: str, error: type[Exception]) -> None:
    hint = f" ({what})" if what else ""
    prefix = f"{owner}: " if owner else ""
    raise error(f"{prefix}{name} must be {must}{hint}, got {value!r}.")


def check_int(owner: str, name: str, value: object, *, low: int | None = None, high: int | None = None,
              what: str = "", none: bool = False, error: type[Exception] = BriefingError) -> int | None:
    """`value` as an int within [low, high] (bounds optional); None passes when `none`."""
    if value is None and none:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and low is not None and value < low:
        ok = False
    if ok and high is not None and value > high:
        ok = False
    if not ok:
        must = "an integer" + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
        _fail(owner, name, must, value, what, error)
    return value


def check_number(owner: str, name: str, value: object, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, what: str = "", none: bool = False,
                 error: type[Exception] = BriefingError) -> float | None:
    """`value` as a finite number within the bounds (`low_open` / `high_open`: the bound itself is excluded)."""
    if value is None and none:
        return None
    ok = is_number(value)
    if ok and low is not None and (value < low or (low_open and value == low)):
        ok = False
    if ok and high is not None and (value > high or (high_open and value == high)):
        ok = False
    if not ok:
        if low is not None and high is not None:
            must = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            must = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            must = f"a finite number {'<' if high_open else '<='} {high:g}"
        else:
            must = "a finite number"
        _fail(owner, name, must, value, what, error)
    return value


def check_bool(owner: str, name: str, value: object, *, none: bool = False,
               error: type[Exception] = BriefingError) -> bool | None:
    if none and value is None:
        return None
    if not isinstance(value, bool):
        _fail(owner, name, "True, False or None" if none else "True or False", value, "", error)
    return value


def check_choice(owner: str, name: str, value: object, choices: Iterable[str], *, what: str = "",
                 error: type[Exception] = BriefingError) -> str:
    options = list(choices)
    if value not in options:
        _fail(owner, name, f"one of {', '.join(options)}", value, what, error)
    return value


def check_type(owner: str, name: str, value: object, kind: type | tuple[type, ...], must: str, *, none: bool = False,
               error: type[Exception] = TypeError) -> object:
    """`value` is an instance of `kind` (or None when `none`); `must` names it for the user."""
    if (value is None and none) or isinstance(value, kind):
        return value
    raise error(f"{owner}: {name} must be {must}, got {type(value).__name__}.")
