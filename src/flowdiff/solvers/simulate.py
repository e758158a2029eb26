"""``simulate``: the one entry point that turns an ODE/SDE into trajectories.

Everything awkward is normalised here, at the door (time direction, saving, gradients, noise,
validation), so each solver only implements a step (or, for ``dopri5``, its adaptive loop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from flowdiff.dynamics import ODE, SDE
from flowdiff.solvers.base import FixedStepSolver, Solver, _Field
from flowdiff.solvers.registry import available_solvers, get_solver
from flowdiff.solvers.sde import brownian_increment
from flowdiff.utils import (
    check_finite,
    check_positive,
    check_tensor,
    closest_name_hint,
    positive_int,
)

__all__ = ["Solution", "simulate"]

_SAVE_MODES = ("final", "all")
# a requested save time matches a grid point of a fixed-step solve within this fraction of the
# span (float32 grids and user-typed times differ in the last bits)
_SAVE_MATCH_TOL = 1e-6


@dataclass
class Solution:
    """The result of :func:`simulate`.

    Attributes:
        x: final state ``(B, *shape)`` at ``ts[-1]`` of the grid.
        ts: the saved times ``(S,)`` (just the final time for ``save="final"``).
        xs: the states at ``ts``, ``(S, B, *shape)``, or ``None`` for ``save="final"``.
        nfe: number of drift evaluations (network calls) used.
        steps: number of (accepted) steps taken.
    """

    x: Tensor
    ts: Tensor
    xs: Tensor | None
    nfe: int
    steps: int


def _float_list(values: object, name: str, min_len: int) -> list[float]:
    """A 1-D sequence (tensor, list, array) of at least ``min_len`` finite times as floats."""
    if isinstance(values, Tensor):
        if values.is_complex() or values.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got dtype {values.dtype}")
        array = values.detach()
    else:
        try:
            array = torch.as_tensor(values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a 1-D tensor or sequence of times: {err}") from err
    if array.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(array.shape)}")
    if array.numel() < min_len:
        raise ValueError(f"{name} must hold at least {min_len} time(s), got {array.numel()}")
    floats = array.double().tolist()
    for i, t in enumerate(floats):
        if not math.isfinite(t):
            raise ValueError(f"{name} must be finite, got {name}[{i}]={t}")
    return floats


def _check_monotone(times: Sequence[float], name: str, direction: float) -> None:
    for i in range(1, len(times)):
        if (times[i] - times[i - 1]) * direction <= 0:
            word = "increasing" if direction > 0 else "decreasing"
            raise ValueError(
                f"{name} must be strictly {word} (the direction of ts), but "
                f"{name}[{i}]={times[i]:g} follows {name}[{i - 1}]={times[i - 1]:g}"
            )


def _as_times(ts: object) -> list[float]:
    """``ts``: 1-D, finite, strictly monotone (either way), at least 2 times."""
    times = _float_list(ts, "ts", 2)
    _check_monotone(times, "ts", math.copysign(1.0, times[1] - times[0]))
    return times


def _save_times(save: object, times: list[float]) -> list[float] | None:
    """The times to save (``None`` for ``"final"``), ordered in the integration direction."""
    if isinstance(save, str):
        if save not in _SAVE_MODES:
            hint = closest_name_hint(save, _SAVE_MODES)
            raise ValueError(
                f"save must be 'final', 'all' or a tensor of times, got {save!r}{hint}"
            )
        return None if save == "final" else times
    wanted = _float_list(save, "save", 1)
    lo, hi = sorted((times[0], times[-1]))
    for s in wanted:
        if not lo <= s <= hi:
            raise ValueError(f"save time {s:g} lies outside the span of ts [{lo:g}, {hi:g}]")
    _check_monotone(wanted, "save", math.copysign(1.0, times[-1] - times[0]))
    return wanted


def _grid_indices(wanted: list[float], times: list[float]) -> list[int]:
    """Indices of the grid points matching ``wanted`` (fixed-step solvers save on the grid)."""
    grid = torch.tensor(times, dtype=torch.float64)
    tol = _SAVE_MATCH_TOL * abs(times[-1] - times[0])
    indices = []
    for s in wanted:
        i = int((grid - s).abs().argmin())
        if abs(times[i] - s) > tol:
            raise ValueError(
                f"save time {s:g} is not a point of ts (nearest {times[i]:g}); fixed-step "
                "solvers save on their grid: add it to ts, or use solver='dopri5'"
            )
        indices.append(i)
    return indices


def _resolve_solver(solver: str | Solver, dynamics: ODE) -> Solver:
    chosen = get_solver(solver)
    is_sde = isinstance(dynamics, SDE)
    if chosen.stochastic and not is_sde:
        # an SDE solver given an ODE treats sigma as 0: it is then its deterministic scheme
        return get_solver(chosen.ode_solver)  # type: ignore[attr-defined]
    if is_sde and not chosen.stochastic:
        sde_solvers = [n for n in available_solvers() if get_solver(n).stochastic]
        raise ValueError(
            f"solver {chosen.name!r} integrates ODEs but dynamics is an SDE "
            f"({type(dynamics).__name__}); use one of {', '.join(sde_solvers)}"
        )
    return chosen


def _check_brownian(brownian: object, n_times: int, x0: Tensor) -> Tensor:
    check_tensor(brownian, "brownian")
    assert isinstance(brownian, Tensor)
    expected = (n_times, *x0.shape)
    if tuple(brownian.shape) != expected:
        raise ValueError(
            f"brownian must hold W at every time of ts, shape {expected}, got "
            f"{tuple(brownian.shape)}"
        )
    return check_finite(brownian, "brownian").to(dtype=x0.dtype, device=x0.device)


def _integrate_fixed(
    solver: FixedStepSolver,
    field: _Field,
    x: Tensor,
    times: list[float],
    save_indices: list[int],
    generator: torch.Generator | None,
    brownian: Tensor | None,
) -> tuple[Tensor, list[Tensor]]:
    """Step along the grid, saving the states at ``save_indices``."""
    n_steps = len(times) - 1
    save_at = [False] * len(times)
    for i in save_indices:
        save_at[i] = True
    saved = [x] if save_at[0] else []
    dw = None
    for i in range(n_steps):
        t, h = times[i], times[i + 1] - times[i]
        if solver.stochastic:
            if brownian is not None:
                dw = brownian[i + 1] - brownian[i]
            else:
                dw = brownian_increment(
                    x.shape, h, generator=generator, dtype=x.dtype, device=x.device
                )
        x_new = solver.step(field, x, t, h, dw)
        # A NaN or inf anywhere makes the sum non-finite: one reduction per step (~10x cheaper
        # than an elementwise isfinite), confirmed elementwise only if the sum overflowed.
        if not math.isfinite(float(x_new.detach().sum())) and not bool(torch.isfinite(x_new).all()):
            raise ValueError(
                f"the state became non-finite (NaN or inf) at step {i + 1} of {n_steps} "
                f"(t={times[i + 1]:g}, solver {solver.name!r}): {field.nonfinite_cause(x, t)}"
            )
        x = x_new
        if save_at[i + 1]:
            saved.append(x)
    return x, saved


def simulate(
    dynamics: ODE,
    x0: Tensor,
    ts: Tensor | Sequence[float],
    solver: str | Solver = "euler",
    *,
    save: str | Tensor | Sequence[float] = "final",
    generator: torch.Generator | None = None,
    grad: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    brownian: Tensor | None = None,
    max_steps: int = 100_000,
) -> Solution:
    """Simulate ``dX = u_t(X) dt`` (ODE) or ``dX = u_t(X) dt + sigma_t dW`` (Ito SDE).

    Args:
        dynamics: an :class:`~flowdiff.dynamics.ODE` or :class:`~flowdiff.dynamics.SDE`.
        x0: initial state ``(B, *shape)`` at ``ts[0]``, a finite float tensor.
        ts: 1-D, strictly increasing or decreasing times (``>= 2``): the step grid of a
            fixed-step solver; for ``dopri5`` only its ends (and saved points) matter. A
            decreasing grid integrates backward (e.g. 1 -> 0 for a likelihood).
        solver: a registered name (``euler, midpoint, heun, rk4, dopri5`` for ODEs;
            ``euler_maruyama, stochastic_heun`` for SDEs, which on an ODE reduce to Euler
            and Heun) or a :class:`Solver` instance.
        save: ``"final"`` (only ``x``), ``"all"`` (every point of ``ts``) or chosen times
            (points of ``ts`` for fixed-step solvers; any times in the span for ``dopri5``,
            through its dense output), ordered like ``ts``.
        generator: source of the Brownian increments (SDEs).
        grad: record the graph through the solve (backprop to ``x0`` and the drift's
            parameters, e.g. to train a CNF); off by default (``torch.no_grad``).
        rtol, atol: tolerances of adaptive solvers (per sample; see ``solvers.adaptive``).
        brownian: a fixed Brownian path ``W`` at ``ts``, ``(len(ts), B, *shape)``, replacing
            fresh draws (see :func:`~flowdiff.solvers.brownian_path`).
        max_steps: bound on an adaptive solver's steps (accepted and rejected).

    Returns:
        :class:`Solution` ``(x, ts, xs, nfe, steps)``.

    Raises:
        TypeError/ValueError on a bad argument, a drift output shaped unlike ``x``, a state
        that turns non-finite mid-solve (naming the step and time), or a step-size underflow.
    """
    if not isinstance(dynamics, ODE):
        raise TypeError(
            "dynamics must be an ODE or SDE (wrap a function f(x, t) in VectorFieldODE), got "
            f"{type(dynamics).__name__}"
        )
    check_finite(check_tensor(x0, "x0"), "x0")
    times = _as_times(ts)
    chosen = _resolve_solver(solver, dynamics)
    wanted = _save_times(save, times)
    rtol, atol = check_positive(rtol, "rtol"), check_positive(atol, "atol")
    positive_int(max_steps, "max_steps")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if brownian is not None:
        if not chosen.stochastic:
            raise ValueError("brownian is only used by SDE solvers on an SDE")
        brownian = _check_brownian(brownian, len(times), x0)

    if not isinstance(grad, bool):
        raise TypeError(f"grad must be a bool, got {type(grad).__name__}")

    field = _Field(dynamics, x0)
    with torch.enable_grad() if grad else torch.no_grad():
        if chosen.adaptive:
            x, saved, steps = chosen.solve(  # type: ignore[attr-defined]
                field,
                x0,
                times[0],
                times[-1],
                wanted or [],
                rtol=rtol,
                atol=atol,
                max_steps=max_steps,
            )
        else:
            assert isinstance(chosen, FixedStepSolver)
            if wanted is None:
                indices = []
            elif save == "all":
                indices = list(range(len(times)))
            else:
                indices = _grid_indices(wanted, times)
            x, saved = _integrate_fixed(chosen, field, x0, times, indices, generator, brownian)
            steps = len(times) - 1
    out_times = wanted if wanted is not None else times[-1:]
    return Solution(
        x=x,
        ts=torch.tensor(out_times, dtype=x0.dtype, device=x0.device),
        xs=torch.stack(saved) if wanted is not None else None,
        nfe=field.nfe,
        steps=steps,
    )
