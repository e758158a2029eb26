"""Likelihood summaries from per-sample log-densities ``log_prob: (B,)`` in nats."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from flowdiff.utils import check_finite, check_tensor, shape_tuple

__all__ = ["bits_per_dim", "nll"]


def _check_log_prob(log_prob: Tensor) -> Tensor:
    check_tensor(log_prob, "log_prob")
    if log_prob.dim() != 1:
        raise ValueError(f"log_prob must have shape (B,), got {tuple(log_prob.shape)}")
    if log_prob.shape[0] == 0:
        raise ValueError("log_prob must hold at least one value, got shape (0,)")
    return check_finite(log_prob, "log_prob")


def nll(log_prob: Tensor) -> float:
    """Average negative log-likelihood ``-(1/B) sum_i log p(x_i)`` in nats.

    Sample-size caveat: a Monte Carlo mean over held-out samples, standard error
    ``std(log_prob) / sqrt(B)``; compare models on the same held-out set.

    Args:
        log_prob: ``(B,)`` log-densities in nats (e.g. ``model.log_prob(x)``).
    """
    return -float(_check_log_prob(log_prob).double().mean())


def bits_per_dim(
    log_prob: Tensor, event_shape: int | Sequence[int], *, data_scale: float = 1.0
) -> float:
    """Negative log-likelihood in bits per dimension: ``-(log p(u) / (D ln 2))`` averaged.

    The model's density is over its own coordinates ``x``; the data ``u`` it stands for may be in
    other units. With ``x = data_scale * u + b`` (an affine preprocessing),
    ``log p(u) = log p(x) + D log(data_scale)`` (change of variables), hence
    ``bpd = -(mean log p(x) + D log(data_scale)) / (D ln 2)``.

    Images convention: pixels are integers ``0 .. 255``, uniformly dequantised (``u = k + U[0,1)``,
    Theis et al., 2016), and ``u`` is in units of one quantisation level, so the model density
    gives a lower bound on the discrete log-likelihood. A model trained on ``x = u / 256`` in
    ``[0, 1)`` takes ``data_scale = 1/256``; on ``x = 2 u / 256 - 1`` in ``[-1, 1)``,
    ``data_scale = 2/256``; on ``flowdiff.data``'s ``"images"`` normalisation of 8-bit files
    (``x = 2 k / 255 - 1``), ``data_scale = 2/255``. A uniform density on ``[0, 1)^D`` scores
    exactly 8 bits per dim.
    For continuous data keep ``data_scale = 1``: the figure is a differential entropy and may be
    negative.

    Sample-size caveat: as :func:`nll`, a mean over held-out samples (standard error
    ``std / (sqrt(B) D ln 2)``).

    Args:
        log_prob: ``(B,)`` log-densities of the model's coordinates, in nats.
        event_shape: shape of one sample (``D`` is its number of entries), or ``D`` itself.
        data_scale: ``dx/du``, model units per data unit (see above).
    """
    shape = shape_tuple(event_shape, "event_shape")
    if not (isinstance(data_scale, (int, float)) and math.isfinite(data_scale) and data_scale > 0):
        raise ValueError(f"data_scale must be a positive finite number, got {data_scale!r}")
    dim = math.prod(shape)
    return (nll(log_prob) - dim * math.log(data_scale)) / (dim * math.log(2.0))
