"""Exact likelihood of a flow: change of variables along the ODE.

A flow ``dX_t = u_t(X_t) dt`` carries ``p_init = p_0`` to ``p_1``; along a trajectory the log
density obeys the instantaneous change of variables (continuity equation written along X_t)::

    d/dt log p_t(X_t) = -div u_t(X_t),   div u = tr(du/dx)                         (1)

so ``log p_1(x) = log p_0(X_0) - int_0^1 div u_t(X_t) dt`` with ``X_1 = x``. :func:`log_prob`
integrates the augmented state ``(X_t, log p_t(X_t) - log p_1(x))`` from t=1 back to t=0 with any
ODE solver of the library and adds ``log p_init(X_0)``; :func:`sample_with_log_prob` runs (1)
forwards from fresh noise, giving samples and their log density in one solve.

The divergence is exact (trace of the Jacobian, one batched backward pass over the basis
vectors) or Hutchinson's unbiased estimate ``E[eps^T (du/dx) eps]`` with ``E[eps eps^T] = I``
(Rademacher or Gaussian probes), as in FFJORD (Grathwohl et al., 2019). Everything is
differentiable with ``grad=True`` (maximum-likelihood training of a CNF).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from flowdiff.dynamics import ODE
from flowdiff.solvers import simulate, time_grid
from flowdiff.utils import check_finite, check_name, check_tensor, positive_int, randn

__all__ = [
    "DIVERGENCE_METHODS",
    "PROBE_NOISES",
    "divergence",
    "hutchinson_probes",
    "log_prob",
    "sample_with_log_prob",
]

VectorField = Callable[[Tensor, Tensor], Tensor]

DIVERGENCE_METHODS = ("exact", "hutchinson")
PROBE_NOISES = ("rademacher", "gaussian")

# The exact trace back-propagates every basis vector of the event space at once; the batch of
# cotangents has D * B * D entries, so beyond this many they go in chunks (D = 784, B = 256 is
# 157M entries: 630 MB in float32 if done at once).
_MAX_COTANGENT_ELEMENTS = 2**24


def hutchinson_probes(
    x: Tensor,
    probes: int = 1,
    noise: str = "rademacher",
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``probes`` noise vectors per sample with ``E[eps eps^T] = I``: ``(K, B, *shape)``.

    Rademacher entries are ``+-1`` with probability 1/2 (the lower-variance choice: its
    estimator's variance ``2 sum_{i != j} S_ij^2`` omits the diagonal that the Gaussian's
    ``2 ||S||_F^2`` includes, ``S`` the symmetric part of the Jacobian).
    """
    check_name(noise, PROBE_NOISES, "noise")
    shape = (positive_int(probes, "probes"), *x.shape)
    if noise == "gaussian":
        return randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    signs = torch.randint(0, 2, shape, generator=generator, device=x.device)
    return (2 * signs - 1).to(x.dtype)


def _check_probes(eps: Tensor, x: Tensor, method: str) -> Tensor:
    """Fixed Hutchinson probes for ``x (B, *shape)`` as ``(K, B, *shape)``; ``(B, *shape)`` is
    one probe per sample (K = 1)."""
    if method != "hutchinson":
        raise ValueError(f"eps (fixed probes) is only used by method='hutchinson', not {method!r}")
    check_tensor(eps, "eps")
    if eps.shape == x.shape:
        eps = eps.unsqueeze(0)
    if eps.dim() != x.dim() + 1 or eps.shape[1:] != x.shape:
        raise ValueError(
            f"eps must have shape (K, {', '.join(map(str, x.shape))}) (K probes per sample), "
            f"got {tuple(eps.shape)}"
        )
    return eps


def _batched_vjp(value: Tensor, x: Tensor, cotangents: Tensor, create_graph: bool) -> Tensor:
    """``v^T (d value / d x)`` for every ``v`` in ``cotangents (K, B, *shape)``, in one pass."""
    if cotangents.shape[0] == 1:  # no vmap needed (and it is cheaper without)
        (vjp,) = torch.autograd.grad(
            value, x, cotangents[0], create_graph=create_graph, retain_graph=True
        )
        return vjp.unsqueeze(0)
    (vjp,) = torch.autograd.grad(
        value,
        x,
        cotangents,
        create_graph=create_graph,
        retain_graph=True,
        is_grads_batched=True,
    )
    return vjp


def _exact_trace(value: Tensor, x: Tensor, create_graph: bool) -> Tensor:
    """``tr(d value / d x)`` per sample, ``(B,)``: back-propagate the D basis vectors batched.

    Row ``i`` of the Jacobian is the VJP with ``e_i``; its ``i``-th entry is the diagonal term.
    """
    batch, dim = x.shape[0], math.prod(x.shape[1:])
    chunk = max(1, min(dim, _MAX_COTANGENT_ELEMENTS // max(1, batch * dim)))
    eye = torch.eye(dim, device=x.device, dtype=x.dtype)
    trace = x.new_zeros(batch)
    for start in range(0, dim, chunk):
        rows = eye[start : start + chunk]  # (c, D): basis vectors e_start .. e_{start+c-1}
        cotangents = rows.reshape(rows.shape[0], 1, *x.shape[1:]).expand(-1, batch, *x.shape[1:])
        vjp = _batched_vjp(value, x, cotangents, create_graph).reshape(rows.shape[0], batch, dim)
        # entry [k, b, start + k] is d value_{start+k} / d x_{start+k} for sample b
        trace = trace + vjp.diagonal(offset=start, dim1=0, dim2=2).sum(-1)
    return trace


def divergence(
    field: VectorField,
    x: Tensor,
    t: Tensor,
    *,
    method: str = "exact",
    probes: int = 1,
    noise: str = "rademacher",
    generator: torch.Generator | None = None,
    eps: Tensor | None = None,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """Divergence ``div u_t(x) = tr(du_t/dx)`` of a vector field, and the field's value.

    Args:
        field: ``field(x, t) -> like x``, e.g. a net with its labels bound.
        x: ``(B, *shape)``, any event shape (the trace is over all ``D = prod(shape)`` entries).
        t: ``(B,)`` times, passed to ``field`` as given.
        method: ``"exact"`` (batched Jacobian trace: D vector-Jacobian products in one vmapped
            backward pass, chunked for large D) or ``"hutchinson"`` (unbiased estimate
            ``(1/K) sum_k eps_k^T (du/dx) eps_k``, one batched backward pass).
        probes: ``K``, the number of Hutchinson probes per sample when ``eps`` is not given.
        noise: ``"rademacher"`` or ``"gaussian"`` probes (drawn with ``generator``).
        generator: source of the probes.
        eps: fixed probes ``(K, B, *shape)`` (or ``(B, *shape)`` for K=1) to reuse across calls,
            as within one ODE solve; replaces ``probes``/``noise``. Hutchinson only.
        create_graph: keep the graph of both outputs (to differentiate the divergence w.r.t.
            parameters or ``x``); otherwise both come back detached.

    Returns:
        ``(div (B,), value (B, *shape))``, ``value = field(x, t)`` (computed once for both).
    """
    check_tensor(x, "x", min_dim=2)
    check_name(method, DIVERGENCE_METHODS, "method")
    if eps is not None:
        eps = _check_probes(eps, x, method)
    elif method == "hutchinson":
        eps = hutchinson_probes(x, probes, noise, generator=generator)
    else:
        # validate the options here too: a typo must not pass silently because it went unused
        check_name(noise, PROBE_NOISES, "noise")

    with torch.enable_grad():  # the solvers may call the field under no_grad
        # Without create_graph the result is detached anyway, so cut the caller's graph to
        # avoid retaining it; with create_graph the Jacobian must be taken w.r.t. x itself.
        if not (create_graph and x.requires_grad):
            x = x.detach().requires_grad_(True)
        value = field(x, t)
        if not isinstance(value, Tensor) or value.shape != x.shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"field(x, t) must return a tensor shaped like x {tuple(x.shape)}, got {shape}"
            )
        if method == "exact":
            div = _exact_trace(value, x, create_graph)
        else:
            assert eps is not None
            vjp = _batched_vjp(value, x, eps.to(x), create_graph)
            div = (eps * vjp).flatten(2).sum(-1).mean(0)  # (K, B, D) -> (B,)
    if not create_graph:
        return div.detach(), value.detach()
    return div, value


class _LogDensityODE(ODE):
    """The augmented state ``(X_t, L_t)`` of (1), flattened to ``(B, D + 1)`` as the solvers want.

    ``dX_t = u_t(X_t) dt`` and ``dL_t = -div u_t(X_t) dt``: started from ``L = 0``,
    ``L_t = log p_t(X_t) - log p_s(X_s)`` where ``s`` is the start time, in either direction.
    """

    def __init__(
        self,
        field: VectorField,
        event_shape: tuple[int, ...],
        *,
        method: str,
        eps: Tensor | None,
        create_graph: bool,
    ) -> None:
        self.field, self.event_shape = field, event_shape
        self.method, self.eps, self.create_graph = method, eps, create_graph

    def drift(self, state: Tensor, t: Tensor) -> Tensor:
        x = state[:, :-1].reshape(state.shape[0], *self.event_shape)
        div, value = divergence(
            self.field, x, t, method=self.method, eps=self.eps, create_graph=self.create_graph
        )
        return torch.cat([value.flatten(1), -div.unsqueeze(1)], dim=1)


def _transport_with_log_density(
    field: VectorField,
    x: Tensor,
    t_start: float,
    t_end: float,
    *,
    solver: str,
    steps: int,
    rtol: float,
    atol: float,
    method: str,
    probes: int,
    noise: str,
    generator: torch.Generator | None,
    eps: Tensor | None,
    grad: bool,
) -> tuple[Tensor, Tensor]:
    """Solve (1) from ``x`` at ``t_start`` to ``t_end``.

    Returns ``(X_{t_end} (B, *shape), log p_{t_end}(X_{t_end}) - log p_{t_start}(x) (B,))``.
    """
    check_name(method, DIVERGENCE_METHODS, "method")
    check_name(noise, PROBE_NOISES, "noise")  # also when unused: a typo must not pass
    # Hutchinson probes are drawn once per solve (FFJORD), or given: with probes fixed along the
    # path the augmented ODE is smooth (adaptive steps work) and E_eps[L] is still exactly the
    # integral of the true divergence, because the trajectory X_t does not depend on eps.
    if eps is not None:
        eps = _check_probes(eps, x, method)
    elif method == "hutchinson":
        eps = hutchinson_probes(x, probes, noise, generator=generator)
    dynamics = _LogDensityODE(field, tuple(x.shape[1:]), method=method, eps=eps, create_graph=grad)
    state = torch.cat([x.flatten(1), x.new_zeros(x.shape[0], 1)], dim=1)
    ts = time_grid(steps, "uniform", t_start, t_end, dtype=torch.float64)
    solution = simulate(dynamics, state, ts, solver, grad=grad, rtol=rtol, atol=atol)
    x_end = solution.x[:, :-1].reshape(x.shape)
    return x_end, solution.x[:, -1]


def _check_flow_args(x: Tensor, p_init: Any, t0: float, t1: float) -> None:
    """Shared checks of :func:`log_prob` and :func:`sample_with_log_prob`."""
    check_finite(check_tensor(x, "x", min_dim=2), "x")
    if not callable(getattr(p_init, "log_prob", None)):
        raise TypeError(
            f"p_init must be a distribution with log_prob(x), got {type(p_init).__name__}"
        )
    shape = getattr(p_init, "event_shape", None)
    if shape is not None and tuple(shape) != tuple(x.shape[1:]):
        raise ValueError(
            f"x of shape {tuple(x.shape)} does not match p_init's event_shape {tuple(shape)}"
        )
    for name, value in (("t0", t0), ("t1", t1)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not t0 < t1:
        raise ValueError(f"need t0 < t1 (t0 noise, t1 data), got t0={t0}, t1={t1}")


def log_prob(
    field: VectorField,
    x: Tensor,
    *,
    p_init: Any,
    solver: str = "dopri5",
    steps: int = 100,
    t0: float = 0.0,
    t1: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "exact",
    probes: int = 1,
    noise: str = "rademacher",
    generator: torch.Generator | None = None,
    eps: Tensor | None = None,
    grad: bool = False,
) -> Tensor:
    """``log p_{t1}(x)`` in nats of the flow of ``field`` started from ``p_init`` at ``t0``.

    Integrates (1) backward from ``X_{t1} = x`` to ``t0``:
    ``log p_{t1}(x) = log p_init(X_{t0}) - int_{t0}^{t1} div u_t(X_t) dt``.

    Args:
        field: ``field(x, t) -> like x`` with ``t: (B,)``, e.g. a net with its labels bound.
        x: ``(B, *shape)`` points (data at ``t1``), finite.
        p_init: the density at ``t0``, with ``log_prob(x) -> (B,)`` (e.g. ``N(0, I)``).
        solver: any ODE solver name of ``flowdiff.solvers`` (``dopri5`` adapts its steps to
            ``rtol``/``atol``; the fixed-step ones take ``steps`` uniform steps).
        steps: intervals of the uniform grid of a fixed-step solver (unused by ``dopri5``,
            which only takes the grid's ends).
        t0, t1: the noise and data ends of the flow (``0`` and ``1``; a diffusion model's
            probability-flow ODE may stop short of a singular end).
        rtol, atol: tolerances of an adaptive solver, applied to ``x`` and the log-density alike.
        method, probes, noise: the divergence (see :func:`divergence`). Hutchinson probes are
            drawn once per call (from ``generator``) and kept along the path; the result is
            then an unbiased estimate of the exact ``log p``.
        generator: source of the Hutchinson probes.
        eps: fixed Hutchinson probes ``(K, B, *shape)`` (or ``(B, *shape)``) used instead of
            fresh ones, e.g. the same probes for every call of an evaluation (common random
            numbers: differences between calls are then free of probe noise); replaces
            ``probes``/``noise``/``generator``.
        grad: keep the graph (back-propagate to ``x`` and the field's parameters, as in
            maximum-likelihood training); off, the result is detached.

    Returns:
        ``(B,)`` log densities.
    """
    _check_flow_args(x, p_init, t0, t1)
    x_init, change = _transport_with_log_density(
        field,
        x,
        t1,
        t0,
        solver=solver,
        steps=steps,
        rtol=rtol,
        atol=atol,
        method=method,
        probes=probes,
        noise=noise,
        generator=generator,
        eps=eps,
        grad=grad,
    )
    # change = log p_{t0}(X_{t0}) - log p_{t1}(x)
    return p_init.log_prob(x_init) - change


def sample_with_log_prob(
    field: VectorField,
    x0: int | Tensor,
    *,
    p_init: Any,
    solver: str = "dopri5",
    steps: int = 100,
    t0: float = 0.0,
    t1: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "exact",
    probes: int = 1,
    noise: str = "rademacher",
    generator: torch.Generator | None = None,
    eps: Tensor | None = None,
    grad: bool = False,
) -> tuple[Tensor, Tensor]:
    """Samples ``X_{t1}`` and their ``log p_{t1}(X_{t1})`` from one forward solve of (1).

    ``log p_{t1}(X_{t1}) = log p_init(X_{t0}) - int_{t0}^{t1} div u_t(X_t) dt``: the same
    change of variables as :func:`log_prob`, integrated in the sampling direction, so the
    density comes with the samples at the cost of the divergence.

    Args:
        x0: a number of samples ``n`` (drawn as ``p_init.sample(n, generator=generator)``) or
            the starting points ``(B, *shape)`` themselves.
        The other arguments are those of :func:`log_prob`.

    Returns:
        ``(x1 (B, *shape), log_prob (B,))``.
    """
    if isinstance(x0, int) and not isinstance(x0, bool):
        if x0 < 1:
            raise ValueError(f"x0 as a number of samples must be positive, got {x0}")
        if not callable(getattr(p_init, "sample", None)):
            raise TypeError(f"p_init must have sample(n) to draw x0, got {type(p_init).__name__}")
        x0 = p_init.sample(x0, generator=generator)
    _check_flow_args(x0, p_init, t0, t1)
    x1, change = _transport_with_log_density(
        field,
        x0,
        t0,
        t1,
        solver=solver,
        steps=steps,
        rtol=rtol,
        atol=atol,
        method=method,
        probes=probes,
        noise=noise,
        generator=generator,
        eps=eps,
        grad=grad,
    )
    # change = log p_{t1}(X_{t1}) - log p_{t0}(x0)
    return x1, p_init.log_prob(x0) + change
