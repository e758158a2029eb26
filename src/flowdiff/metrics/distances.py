"""Distances between two sets of samples ``x: (N, *shape)`` and ``y: (M, *shape)``.

Every sample is flattened to a vector of ``D`` numbers and every set is an empirical measure
with uniform weights; all arithmetic is float64. These are *estimates* from finite samples:
even two independent samples of the same law are at a positive distance that shrinks with the
sample size. Report every figure next to its :func:`floor`, the same metric between two
independent data samples of the same size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from flowdiff.metrics.samples import as_sample_matrix, paired_sample_matrices
from flowdiff.utils import check_name, check_tensor, positive_int

__all__ = [
    "DEFAULT_BANDWIDTHS",
    "energy_distance",
    "floor",
    "get_metric",
    "median_heuristic",
    "mmd",
    "sliced_wasserstein",
    "wasserstein2",
]

DEFAULT_BANDWIDTHS: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

# Bound on the number of float64 entries of one block of a pairwise-distance matrix (32 MiB),
# so that MMD and energy distance run on tens of thousands of samples in bounded memory.
_BLOCK_ENTRIES = 2**22


def wasserstein2(x: Tensor, y: Tensor) -> float:
    """Exact 2-Wasserstein distance between the empirical measures of ``x`` and ``y``.

    ``W2 = (min_{P in U(1/N, 1/M)} sum_ij P_ij ||x_i - y_j||^2)^(1/2)``, the optimal transport
    linear program solved exactly by POT's network simplex (``ot.emd2``) on the squared
    Euclidean cost, uniform weights, float64.

    Sample-size caveat: the estimate is biased upwards, and for a law on ``D`` dimensions the
    distance between two samples of size ``N`` of the *same* law decays only like ``N^(-1/D)``
    (``D >= 3``; ``sqrt(log N / N)``-like in 2-D), so compare with :func:`floor`. Time grows like
    ``N^3`` and memory like ``N M``: a few thousand samples is the practical limit.

    Args:
        x: ``(N, *shape)``.
        y: ``(M, *shape)``, same ``shape``.

    Returns:
        ``W2`` (not squared), a Python float.
    """
    import ot  # POT is a core dependency; imported here to keep `import flowdiff` light

    a, b = paired_sample_matrices(x, y)
    a_np, b_np = a.cpu().numpy(), b.cpu().numpy()
    cost = ot.dist(a_np, b_np, metric="sqeuclidean")
    weights_a = np.full(len(a_np), 1.0 / len(a_np))
    weights_b = np.full(len(b_np), 1.0 / len(b_np))
    # POT's default cap of 1e5 simplex iterations is reached for a few thousand points; the
    # cap here only guards against an endless loop, and a hit cap is an error, not a warning.
    value, log = ot.emd2(weights_a, weights_b, cost, numItermax=100_000_000, log=True)
    if log["warning"] is not None:
        raise RuntimeError(f"exact optimal transport did not converge: {log['warning']}")
    return math.sqrt(max(float(value), 0.0))


def _wasserstein_1d_power(u: Tensor, v: Tensor, p: float) -> Tensor:
    """``W_p^p`` between 1-d empirical measures, column by column: ``u: (N, P)``, ``v: (M, P)``
    -> ``(P,)``.

    In 1-d the optimal plan matches quantiles: ``W_p^p = int_0^1 |F_u^-1(q) - F_v^-1(q)|^p dq``.
    Both quantile functions are steps that change at ``q = i/N`` and ``q = j/M``; written over
    the common denominator ``N M`` the breakpoints are integers, so the integral is an exact sum.
    """
    n, m = u.shape[0], v.shape[0]
    u, v = u.sort(dim=0).values, v.sort(dim=0).values
    device = u.device
    breaks = torch.cat(
        [torch.arange(1, n + 1, device=device) * m, torch.arange(1, m + 1, device=device) * n]
    ).unique()  # sorted integer levels q * N * M, the last one N * M
    widths = torch.diff(breaks, prepend=breaks.new_zeros(1)).to(u.dtype) / (n * m)
    # On the interval ending at level L, F_u^-1 is the ceil(L / M)-th smallest u (1-based).
    index_u = (breaks + m - 1) // m - 1
    index_v = (breaks + n - 1) // n - 1
    gaps = (u[index_u] - v[index_v]).abs().pow(p)
    return (widths[:, None] * gaps).sum(dim=0)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 256,
    *,
    p: float = 2.0,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced ``p``-Wasserstein distance (Rabin et al., 2011; Bonneel et al., 2015).

    ``SW_p = (E_theta W_p^p(theta . x, theta . y))^(1/p)`` with ``theta`` uniform on the unit
    sphere of ``R^D``, estimated with ``n_projections`` random directions; each 1-d distance is
    exact (quantile matching, any ``N`` and ``M``). For a shift ``y = x + s`` every projection is
    shifted by ``theta . s``, so ``SW_2^2 = E (theta . s)^2 = |s|^2 / D``.

    Sample-size caveat: each projected distance converges like ``N^(-1/2)`` whatever ``D`` (much
    faster than :func:`wasserstein2`), plus a Monte Carlo error ``O(n_projections^(-1/2))`` over
    directions; compare with :func:`floor` at the same ``N`` and ``n_projections``.

    Args:
        x: ``(N, *shape)``.
        y: ``(M, *shape)``.
        n_projections: number of random directions.
        p: order, ``>= 1``.
        generator: for the directions.

    Returns:
        ``SW_p`` (not raised to the ``p``), a Python float.
    """
    positive_int(n_projections, "n_projections")
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    a, b = paired_sample_matrices(x, y)
    directions = torch.randn(
        (a.shape[1], n_projections), generator=generator, dtype=torch.float64
    ).to(a.device)
    directions = directions / directions.norm(dim=0, keepdim=True)
    power = _wasserstein_1d_power(a @ directions, b @ directions, p)
    return float(power.mean()) ** (1.0 / p)


def _pairwise_mean(a: Tensor, b: Tensor, kernel: Callable[[Tensor], Tensor]) -> float:
    """``mean_ij kernel(||a_i - b_j||)`` over all ``N x M`` pairs, computed block by block."""
    rows = max(1, _BLOCK_ENTRIES // b.shape[0])
    total = 0.0
    for start in range(0, a.shape[0], rows):
        total += float(kernel(torch.cdist(a[start : start + rows], b)).sum())
    return total / (a.shape[0] * b.shape[0])


def median_heuristic(x: Tensor, *, max_samples: int = 2000) -> float:
    """Median of the pairwise Euclidean distances ``||x_i - x_j||``, ``i < j``: the usual RBF
    bandwidth at the data's own scale (the median heuristic, Gretton et al., 2012).

    For ``x ~ N(0, s^2 I_D)``, ``||x_i - x_j||^2 / (2 s^2)`` is chi-squared with ``D`` degrees
    of freedom, so the median is ``s sqrt(2 m_D)`` with ``m_D`` the chi-squared median
    (``2 ln 2`` for ``D = 2``). Scales with the data: ``median_heuristic(c x) = c
    median_heuristic(x)``.

    Args:
        x: ``(N, *shape)``, ``N >= 2``; only the first ``max_samples`` rows are used (memory
            ``O(max_samples^2)``), so pass them in random order.
        max_samples: the cap on rows.

    Returns:
        the median distance, a Python float (0 if more than half the pairs coincide).
    """
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 2:
        raise ValueError(f"max_samples must be an integer >= 2, got {max_samples!r}")
    a = as_sample_matrix(x, "x", min_samples=2)
    return float(torch.pdist(a[:max_samples]).median())


def mmd(
    x: Tensor,
    y: Tensor,
    bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS,
    *,
    unbiased: bool = False,
) -> float:
    """Squared maximum mean discrepancy with a mixture of RBF kernels (Gretton et al., 2012).

    ``MMD^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y)`` with
    ``k(a, b) = (1/H) sum_h exp(-||a - b||^2 / (2 h^2))`` over the ``H`` bandwidths (so
    ``k(a, a) = 1``). Bandwidths are absolute lengths: standardise the data first or pick them to
    match its scale (e.g. multiples of :func:`median_heuristic`; the defaults suit data of unit
    scale, such as standardised 2-D points).

    ``unbiased=False`` (default): the V-statistic, all pairs including ``i = j``; it is ``>= 0``
    and exactly 0 for identical sets, with an upward bias of order ``1/N``.
    ``unbiased=True``: the U-statistic, ``i != j`` in the within-set means; its expectation is
    the true ``MMD^2`` (0 for equal laws), so it can be slightly negative.

    Sample-size caveat: the standard deviation of either estimate is ``O(1/N)`` for equal laws
    and ``O(1/sqrt(N))`` otherwise; report it with :func:`floor`. Cost ``O(N M D)``.

    Args:
        x: ``(N, *shape)``.
        y: ``(M, *shape)``.
        bandwidths: positive kernel widths ``h``.
        unbiased: U-statistic instead of V-statistic (needs ``N, M >= 2``).

    Returns:
        ``MMD^2`` (squared), a Python float.
    """
    widths = tuple(bandwidths)
    if not widths or not all(
        isinstance(h, (int, float)) and math.isfinite(h) and h > 0 for h in widths
    ):
        raise ValueError(f"bandwidths must be positive finite numbers, got {bandwidths!r}")
    a, b = paired_sample_matrices(x, y, min_samples=2 if unbiased else 1)

    def kernel(dist: Tensor) -> Tensor:
        sq = dist.square()
        return sum(torch.exp(-sq / (2.0 * h * h)) for h in widths) / len(widths)

    def within(s: Tensor) -> float:
        n = s.shape[0]
        mean = _pairwise_mean(s, s, kernel)
        # Remove the n diagonal terms k(s_i, s_i) = 1 for the U-statistic.
        return (n * n * mean - n) / (n * (n - 1)) if unbiased else mean

    return within(a) + within(b) - 2.0 * _pairwise_mean(a, b, kernel)


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Energy distance (Székely & Rizzo, 2013) between the empirical measures of ``x`` and ``y``.

    ``E = (2 E||X - Y|| - E||X - X'|| - E||Y - Y'||)^(1/2)`` with all expectations over the
    empirical measures (V-statistics, pairs ``i = j`` included), the definition of
    ``scipy.stats.energy_distance`` extended to ``D`` dimensions. The quantity under the root is
    ``>= 0``, 0 for identical sets and, for laws, 0 only when they are equal; it is symmetric.

    Sample-size caveat: between two samples of the same law it is ``O(N^(-1/2))`` (the squared
    value has an upward bias of order ``1/N``); report it with :func:`floor`. Cost ``O(N M D)``.

    Args:
        x: ``(N, *shape)``.
        y: ``(M, *shape)``.

    Returns:
        the energy distance (the square root), a Python float.
    """
    a, b = paired_sample_matrices(x, y)

    def euclidean(dist: Tensor) -> Tensor:
        return dist

    squared = (
        2.0 * _pairwise_mean(a, b, euclidean)
        - _pairwise_mean(a, a, euclidean)
        - _pairwise_mean(b, b, euclidean)
    )
    return math.sqrt(max(squared, 0.0))


_METRICS: dict[str, Callable[..., float]] = {
    "wasserstein2": wasserstein2,
    "sliced_wasserstein": sliced_wasserstein,
    "mmd": mmd,
    "energy_distance": energy_distance,
}


def get_metric(name: str) -> Callable[..., float]:
    """A sample metric by name: ``wasserstein2, sliced_wasserstein, mmd, energy_distance``."""
    return _METRICS[check_name(name, _METRICS, "metric")]


def floor(
    metric: str | Callable[..., float],
    data_a: Tensor,
    data_b: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    **metric_kwargs: object,
) -> float:
    """The sample-size floor of ``metric``: its value between two independent data samples.

    A generated sample of size ``N`` cannot be expected to score better than two samples of the
    data itself of size ``N``; report this next to every figure.

    Args:
        metric: a name for :func:`get_metric` or any ``metric(x, y, **kwargs) -> float``.
        data_a: ``(N, *shape)`` data.
        data_b: another ``(N, *shape)`` data sample, independent of ``data_a``. If ``None``,
            ``data_a`` is split at random into two disjoint halves of ``N // 2`` samples (the
            floor is then that of size ``N // 2``).
        generator: for the random split.
        **metric_kwargs: passed to the metric (e.g. ``bandwidths``).
    """
    fn = get_metric(metric) if isinstance(metric, str) else metric
    if not callable(fn):
        raise TypeError(f"metric must be a name or a callable, got {type(metric).__name__}")
    check_tensor(data_a, "data_a")
    if data_b is None:
        if data_a.shape[0] < 2:
            raise ValueError(
                f"data_a must hold at least 2 samples to be split, got shape {tuple(data_a.shape)}"
            )
        half = data_a.shape[0] // 2
        order = torch.randperm(data_a.shape[0], generator=generator).to(data_a.device)
        data_a, data_b = data_a[order[:half]], data_a[order[half : 2 * half]]
    elif check_tensor(data_b, "data_b").shape != data_a.shape:
        raise ValueError(
            f"data_a and data_b must have the same shape (same sample size), got "
            f"{tuple(data_a.shape)} and {tuple(data_b.shape)}"
        )
    return fn(data_a, data_b, **metric_kwargs)
