"""Argument checks shared by paths and objectives: names chosen from a list, positive numbers."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable


def check_name(name: object, choices: Iterable[str], what: str) -> str:
    """Return ``name`` if it is one of ``choices``; else a ``ValueError`` naming the closest one.

    ``what`` names the argument in the message, e.g. ``"schedule"`` or ``"source"``.
    """
    options = sorted(choices)
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a string (one of {', '.join(options)}), got {name!r}")
    if name not in options:
        close = difflib.get_close_matches(name, options, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown {what} {name!r}{hint} (choose from {', '.join(options)})")
    return name


def check_positive(value: object, name: str, *, below: float = math.inf) -> float:
    """Return ``value`` as a float if it is a real number in ``(0, below)``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not 0 < value < below:
        raise ValueError(f"{name} must be a number in (0, {below:g}), got {value!r}")
    return float(value)
