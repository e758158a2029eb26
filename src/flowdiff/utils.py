"""Shape and argument helpers shared by every layer.

The contracts of the package (``docs/ARCHITECTURE.md``): a batch is ``(B, *event_shape)``;
time in a batch is ``(B,)``; public entry points also accept a Python float or a 0-d tensor.
Time is broadcast here, once, instead of in every module.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = [
    "as_batch_time",
    "check_finite",
    "check_name",
    "check_positive",
    "check_real",
    "check_shape",
    "check_tensor",
    "closest_name_hint",
    "event_dims",
    "expand_like",
    "positive_int",
    "randn",
    "shape_tuple",
    "sum_event",
]


def check_tensor(x: object, name: str, *, min_dim: int = 1) -> Tensor:
    """Return ``x`` if it is a floating tensor with at least ``min_dim`` dims, else raise."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s) (batch first), "
            f"got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_finite(x: Tensor, name: str, *, where: str = "") -> Tensor:
    """Raise a ``ValueError`` naming ``name`` (and ``where``) if ``x`` holds NaN or inf."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        at = f" {where}" if where else ""
        raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf){at}")
    return x


def check_shape(x: Tensor, expected: Sequence[int], name: str) -> Tensor:
    """Raise unless ``x.shape == expected`` (``-1`` in ``expected`` matches any size)."""
    shape = tuple(x.shape)
    ok = len(shape) == len(expected) and all(e in (-1, s) for s, e in zip(shape, expected))
    if not ok:
        want = ", ".join("*" if e == -1 else str(e) for e in expected)
        raise ValueError(f"{name} must have shape ({want}), got {shape}")
    return x


def as_batch_time(
    t: float | Tensor,
    batch_size: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    name: str = "t",
) -> Tensor:
    """Normalise time to shape ``(B,)``.

    Accepts a Python number, a 0-d tensor, a 1-element tensor or a ``(B,)`` tensor.
    """
    if isinstance(t, Tensor):
        if t.dim() == 0 or t.numel() == 1:
            t = t.reshape(()).expand(batch_size)
        elif t.dim() != 1 or t.shape[0] != batch_size:
            raise ValueError(
                f"{name} must be a scalar or have shape ({batch_size},), got {tuple(t.shape)}"
            )
        return t.to(device=device, dtype=dtype)
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        if not math.isfinite(t):
            raise ValueError(f"{name} must be finite, got {t}")
        return torch.full((batch_size,), float(t), device=device, dtype=dtype)
    raise TypeError(f"{name} must be a float or a tensor, got {type(t).__name__}")


def expand_like(t: Tensor, x: Tensor) -> Tensor:
    """View a ``(B,)`` (or scalar) tensor as ``(B, 1, ..., 1)`` to broadcast against ``x``."""
    if t.dim() == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


def event_dims(x: Tensor) -> tuple[int, ...]:
    """The event dimensions of a batch ``(B, *event_shape)``: ``(1, ..., x.dim() - 1)``."""
    return tuple(range(1, x.dim()))


def sum_event(x: Tensor) -> Tensor:
    """Sum over the event dimensions: ``(B, *event_shape) -> (B,)``."""
    return x.sum(dim=event_dims(x)) if x.dim() > 1 else x


def randn(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal draw that honours an optional generator (on the generator's device)."""
    if generator is not None and device is None:
        device = generator.device
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum`` (not a bool), else raise ``ValueError``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def shape_tuple(
    value: int | Sequence[int], name: str, *, allow_empty: bool = False
) -> tuple[int, ...]:
    """Normalise an int or a sequence of positive ints to a tuple (``()`` only if allowed)."""
    shape = (value,) if isinstance(value, int) else tuple(value)
    if (not shape and not allow_empty) or any(
        not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in shape
    ):
        raise ValueError(
            f"{name} must be a positive int or a tuple of positive ints, got {value!r}"
        )
    return shape


def closest_name_hint(name: object, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to a misspelt ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_name(name: object, choices: Iterable[str], what: str) -> str:
    """Return ``name`` if it is one of ``choices``; else a ``ValueError`` naming the closest one.

    ``what`` names the argument in the message, e.g. ``"schedule"`` or ``"source"``.
    """
    options = sorted(choices)
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a string (one of {', '.join(options)}), got {name!r}")
    if name not in options:
        hint = closest_name_hint(name, options)
        raise ValueError(f"unknown {what} {name!r}{hint} (choose from {', '.join(options)})")
    return name


def check_real(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite real number (an int or float, not a bool):
    a ``TypeError`` for anything else, a ``ValueError`` for NaN or an infinity."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_positive(value: object, name: str, *, below: float = math.inf) -> float:
    """Return ``value`` as a float if it is a real number in ``(0, below)``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not 0 < value < below:
        raise ValueError(f"{name} must be a number in (0, {below:g}), got {value!r}")
    return float(value)
