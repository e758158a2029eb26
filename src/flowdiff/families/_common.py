"""Argument checks shared by the families."""

from __future__ import annotations

from collections.abc import Sequence


def check_count(n: object, name: str = "n") -> int:
    """Return ``n`` if it is a positive ``int`` (not a bool), else raise naming ``name``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return n


def check_choice(value: object, choices: Sequence[str], name: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value  # type: ignore[return-value]
