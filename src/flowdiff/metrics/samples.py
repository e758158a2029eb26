"""Input checks shared by the sample-based metrics: batches ``(N, *shape)`` seen as ``(N, D)``."""

from __future__ import annotations

import torch
from torch import Tensor

from flowdiff.utils import check_finite, check_tensor

__all__ = ["as_sample_matrix", "paired_sample_matrices"]


def as_sample_matrix(x: Tensor, name: str, *, min_samples: int = 1) -> Tensor:
    """Check a batch ``(N, *shape)`` and return it flattened to ``(N, D)`` in float64.

    A 1-d tensor ``(N,)`` is ``N`` scalar samples, ``(N, 1)``. Raises ``TypeError`` for a
    non-float input and ``ValueError`` for fewer than ``min_samples`` rows or NaN/inf values.
    """
    check_tensor(x, name)
    if x.shape[0] < min_samples:
        raise ValueError(
            f"{name} must hold at least {min_samples} sample(s), got shape {tuple(x.shape)}"
        )
    check_finite(x, name)
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def paired_sample_matrices(
    x: Tensor, y: Tensor, *, min_samples: int = 1, names: tuple[str, str] = ("x", "y")
) -> tuple[Tensor, Tensor]:
    """:func:`as_sample_matrix` of both, checking that one sample of ``x`` and one of ``y`` have
    the same shape (the sample counts may differ). ``y`` is moved to ``x``'s device."""
    a = as_sample_matrix(x, names[0], min_samples=min_samples)
    b = as_sample_matrix(y, names[1], min_samples=min_samples)
    if tuple(x.shape[1:]) != tuple(y.shape[1:]):
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same event shape, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    return a, b.to(a.device)
