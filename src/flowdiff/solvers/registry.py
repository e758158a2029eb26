"""Solvers by name: ``euler, midpoint, heun, rk4, dopri5, euler_maruyama, stochastic_heun``."""

from __future__ import annotations

from flowdiff.solvers.adaptive import Dopri5
from flowdiff.solvers.base import Solver
from flowdiff.solvers.rk import EULER, HEUN, MIDPOINT, RK4, ExplicitRungeKutta
from flowdiff.solvers.sde import EulerMaruyama, StochasticHeun
from flowdiff.utils import check_name

__all__ = ["available_solvers", "get_solver", "register_solver"]

_SOLVERS: dict[str, Solver] = {}


def register_solver(solver: Solver) -> Solver:
    """Make ``solver`` available to ``simulate`` under ``solver.name``; returns it."""
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a Solver, got {type(solver).__name__}")
    if solver.name in _SOLVERS:
        raise ValueError(f"a solver named {solver.name!r} is already registered")
    _SOLVERS[solver.name] = solver
    return solver


def available_solvers() -> list[str]:
    """Registered solver names, sorted."""
    return sorted(_SOLVERS)


def get_solver(solver: str | Solver) -> Solver:
    """The solver registered under ``solver`` (a :class:`Solver` passes through).

    An unknown name raises ``ValueError`` suggesting the closest registered one.
    """
    if isinstance(solver, Solver):
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a name or a Solver, got {type(solver).__name__}")
    check_name(solver, _SOLVERS, "solver")
    return _SOLVERS[solver]


for _solver in (
    ExplicitRungeKutta("euler", EULER),
    ExplicitRungeKutta("midpoint", MIDPOINT),
    ExplicitRungeKutta("heun", HEUN),
    ExplicitRungeKutta("rk4", RK4),
    Dopri5(),
    EulerMaruyama(),
    StochasticHeun(),
):
    register_solver(_solver)
