"""Couplings: how a batch of source points ``x0`` is paired with a batch of data ``x1``.

Flow matching needs a joint ``q(x0, x1)`` whose marginals are ``p_init`` and ``p_data``. The
independent coupling is the default of the course notes; minibatch optimal transport (Tong et
al. 2024; Pooladian et al. 2023) pairs each ``x1`` with a nearby ``x0`` so that conditional
paths cross less and the marginal field is straighter.

Every coupling keeps the data batch in its order and re-arranges ``x0``: the labels ``y`` of
conditional data stay attached to their ``x1`` without being touched. The transport problems are
solved by SciPy (exact assignment) and POT (entropic, Sinkhorn); nothing here is a hand-written
OT solver.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from flowdiff.utils import check_finite, check_name, check_positive, check_tensor

__all__ = ["CoupledBatch", "Coupling", "get_coupling", "independent_coupling", "ot_coupling"]


_SINKHORN_ITERATIONS = 10_000


class CoupledBatch(NamedTuple):
    """Paired batch: ``x0[i]`` goes with ``x1[i]`` (and its label ``y[i]``)."""

    x0: Tensor
    x1: Tensor
    y: Tensor | None


Coupling = Callable[..., CoupledBatch]


def _check_batch(x0: Tensor, x1: Tensor, y: Tensor | None) -> None:
    check_tensor(x0, "x0")
    check_tensor(x1, "x1")
    if x0.shape != x1.shape:
        raise ValueError(
            f"x0 and x1 must have the same shape, got x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)}"
        )
    check_finite(x0, "x0")
    check_finite(x1, "x1")
    if y is not None and (not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != x1.shape[0]):
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must be a tensor with {x1.shape[0]} rows (one per x1), got {shape}")


def independent_coupling(
    x0: Tensor, x1: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None
) -> CoupledBatch:
    """``q(x0, x1) = p_init(x0) p_data(x1)``: ``x1`` is paired with a random permutation of
    ``x0``, which breaks any pairing the two batches had (e.g. a paired data-to-data loader).

    Args:
        x0, x1: ``(B, *shape)``. y: ``(B, ...)`` labels of ``x1`` or ``None``.
        generator: draws the permutation.
    """
    _check_batch(x0, x1, y)
    device = generator.device if generator is not None else x0.device
    perm = torch.randperm(x0.shape[0], generator=generator, device=device).to(x0.device)
    return CoupledBatch(x0[perm], x1, y)


def ot_coupling(
    x0: Tensor,
    x1: Tensor,
    y: Tensor | None = None,
    *,
    method: str = "exact",
    reg: float = 0.05,
    generator: torch.Generator | None = None,
) -> CoupledBatch:
    """Minibatch optimal transport coupling for the squared Euclidean cost
    ``C_ij = ||x0_i - x1_j||^2`` (events flattened).

    - ``method="exact"``: the optimal assignment (a permutation of ``x0``), by SciPy's
      ``linear_sum_assignment``; ``reg`` and ``generator`` are not used.
    - ``method="sinkhorn"``: the entropic plan ``argmin <pi, C> - reg H(pi)`` with uniform
      marginals (POT's stabilised Sinkhorn, which absorbs large scalings into the log domain
      so that a small ``reg`` does not underflow; POT warns if it has not converged). For each
      ``x1_j`` an ``x0`` is drawn from the plan's column ``pi[:, j] / sum_i pi[i, j]``, so the
      pairs are an exact draw of ``pi`` whose data half is the batch itself. ``reg`` is in the
      units of the squared cost: ``reg = 2 sigma^2`` gives the Schrodinger bridge of a Brownian
      bridge with diffusion ``sigma`` (SB-CFM); ``reg -> inf`` tends to the independent
      coupling.

    Args:
        x0, x1: ``(B, *shape)``. y: ``(B, ...)`` labels of ``x1`` or ``None``.

    Returns:
        ``CoupledBatch(x0_paired, x1, y)``: ``x1`` and ``y`` unchanged, ``x0`` re-arranged.
    """
    _check_batch(x0, x1, y)
    check_name(method, ("exact", "sinkhorn"), "method")
    check_positive(reg, "reg")
    # Imported here: POT loads scikit-learn (~2 s), which every `import flowdiff` would pay.
    import ot

    # The plan is a discrete choice: solve it in float64 on the CPU, outside autograd.
    a = x0.detach().reshape(x0.shape[0], -1).to("cpu", torch.float64).numpy()
    b = x1.detach().reshape(x1.shape[0], -1).to("cpu", torch.float64).numpy()
    cost = ot.dist(a, b, metric="sqeuclidean")
    if method == "exact":
        rows, cols = linear_sum_assignment(cost)
        source_of = np.empty_like(rows)
        source_of[cols] = rows  # x1_j is paired with x0_{source_of[j]}
        index = torch.from_numpy(source_of).to(x0.device)
    else:
        n = x0.shape[0]
        uniform = np.full(n, 1.0 / n)
        # Stabilised rather than log-domain: the same plan, ~15x faster in POT 0.9. Iterations
        # grow like max(C) / reg; stop once the marginals are right to 1e-6 relative (ample for
        # drawing pairs) rather than POT's absolute 1e-9, which a large batch may never reach.
        # POT's warnings are held back until the plan is known to be usable: a failed plan gets
        # one readable error instead of a trail of overflow warnings before it.
        with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
            warnings.simplefilter("always")
            plan = ot.sinkhorn(
                uniform,
                uniform,
                cost,
                reg,
                method="sinkhorn_stabilized",
                numItermax=_SINKHORN_ITERATIONS,
                stopThr=1e-6 / n,
            )
        _check_plan(plan, cost, reg)
        for w in caught:  # e.g. "Sinkhorn did not converge"
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        device = generator.device if generator is not None else torch.device("cpu")
        columns = torch.from_numpy(np.ascontiguousarray(plan.T)).to(device)
        index = torch.multinomial(columns, 1, generator=generator).squeeze(1).to(x0.device)
    return CoupledBatch(x0[index], x1, y)


def _check_plan(plan: np.ndarray, cost: np.ndarray, reg: float) -> None:
    """Raise a readable ``ValueError`` when Sinkhorn failed, instead of the multinomial draw's
    "probability tensor contains either inf, nan or element < 0".

    The entropic kernel is ``exp(-C / reg)``: once ``max C / reg`` reaches a few thousand its
    entries underflow even for POT's stabilised iterations and the plan comes back NaN (measured
    with POT 0.9.7 on 64-256 points, 3 seeds each: always fine at ``max C / reg = 1e3``, NaN from
    ``1.5e3``-``2e3`` on). POT's log-domain solver survives but took 30 s for 128 points at
    ``max C / reg = 5e3`` (8 minutes for 512), so it is no fallback here.
    """
    if np.isfinite(plan).all() and (plan.sum(0) > 0).all():
        return
    scale = float(cost.max())
    raise ValueError(
        f"sinkhorn failed (its plan is NaN or has an empty column) with reg={reg:g} against a "
        f"cost scale max ||x0 - x1||^2 = {scale:.3g} (max cost / reg = {scale / reg:.3g}): "
        f"the kernel exp(-cost / reg) underflows; use reg >= {scale / 1000:.3g} "
        "(max cost / 1000), or method='exact' for the unregularised plan"
    )


def get_coupling(name: str, **kwargs: Any) -> Coupling:
    """A coupling callable ``(x0, x1, y=None, *, generator=None) -> CoupledBatch`` by name:
    ``independent``, ``ot`` (exact) or ``sinkhorn`` (``reg=`` as in :func:`ot_coupling`)."""
    options = {"independent": (), "ot": (), "sinkhorn": ("reg",)}
    check_name(name, options, "coupling")
    unknown = sorted(set(kwargs) - set(options[name]))
    if unknown:
        allowed = ", ".join(options[name]) or "no options"
        raise TypeError(f"coupling {name!r} takes {allowed}, got {unknown}")
    if name == "independent":
        return independent_coupling
    if "reg" in kwargs:
        check_positive(kwargs["reg"], "reg")
    return functools.partial(ot_coupling, method="exact" if name == "ot" else "sinkhorn", **kwargs)
