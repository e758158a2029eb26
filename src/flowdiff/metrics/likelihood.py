"""Likelihood summaries from per-sample log-densities ``log_prob: (B,)`` in nats.

Both take values, not a graph: a ``log_prob`` that carries autograd history (``RealNVP``'s,
say) is detached here.
"""

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
    return check_finite(log_prob.detach(), "log_prob")


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
    """Negative log-likelihood in bits per dimension, ``-(mean log p(u)) / (D ln 2)``.

    ``u`` are the units the figure is reported in; ``log_prob`` is the density of coordinates
    ``x = data_scale * u + b`` (an affine map), so ``log p(u) = log p(x) + D log(data_scale)``
    (change of variables) and ``bpd = -(mean log p(x) + D log(data_scale)) / (D ln 2)``.

    Which ``data_scale``: a flowdiff model's ``log_prob(u)`` (``normalize=True``, the default of
    every family) is already the density of the data units ``u``, the normaliser's
    log-determinant included: keep ``data_scale = 1``, or the normalisation is counted twice.
    Pass ``data_scale = dx/du`` only for a density of the model's own coordinates
    (``log_prob(x, normalize=False)``): ``2/255`` for ``flowdiff.data``'s ``"images"`` map
    ``x = 2 u / 255 - 1`` of 8-bit data, ``2/16`` for the 8x8 digits.

    Quantised data (integer grey levels ``0 .. 255``, the digits' ``0 .. 16``): a continuous
    density at the grid points themselves bounds nothing (it can be made arbitrarily large
    there). With ``u`` in units of one level, evaluated at uniformly dequantised points
    ``u = k + v``, ``v ~ U(-1/2, 1/2)^D`` (``flowdiff.data.dequantize.dequantize(k, 1.0)``;
    Theis et al., 2016), the figure is, in expectation over ``v``, an upper bound on the bits per
    dim of the discrete model ``P(k) = int p(k + v) dv``: a uniform density over ``L`` levels
    scores ``log2 L`` (8 for 8-bit pixels). For continuous data it is a differential entropy
    rate and may be negative.

    Sample-size caveat: as :func:`nll`, a mean over held-out samples (standard error
    ``std / (sqrt(B) D ln 2)``).

    Args:
        log_prob: ``(B,)`` log-densities in nats of ``x`` (of ``u`` itself when
            ``data_scale = 1``).
        event_shape: shape of one sample (``D`` is its number of entries), or ``D`` itself.
        data_scale: ``dx/du``, units of ``log_prob``'s coordinates per reported unit.
    """
    shape = shape_tuple(event_shape, "event_shape")
    if not (isinstance(data_scale, (int, float)) and math.isfinite(data_scale) and data_scale > 0):
        raise ValueError(f"data_scale must be a positive finite number, got {data_scale!r}")
    dim = math.prod(shape)
    return (nll(log_prob) - dim * math.log(data_scale)) / (dim * math.log(2.0))
