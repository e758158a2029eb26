"""Solvers: explicit Runge-Kutta tableaux, adaptive Dopri5, SDE schemes, time grids, ``simulate``.

``simulate(dynamics, x0, ts, solver="euler")`` is the one entry point; solvers are looked up by
name (:func:`get_solver`) and declare their ``order`` (and ``strong_order``/``weak_order``).
"""

from flowdiff.solvers.adaptive import Dopri5
from flowdiff.solvers.base import FixedStepSolver, Solver
from flowdiff.solvers.grids import GRID_KINDS, time_grid
from flowdiff.solvers.registry import available_solvers, get_solver, register_solver
from flowdiff.solvers.rk import (
    DOPRI5,
    EULER,
    HEUN,
    MIDPOINT,
    RK4,
    ButcherTableau,
    ExplicitRungeKutta,
    rk_step,
)
from flowdiff.solvers.sde import EulerMaruyama, StochasticHeun, brownian_increment, brownian_path
from flowdiff.solvers.simulate import Solution, simulate

__all__ = [
    "DOPRI5",
    "EULER",
    "GRID_KINDS",
    "HEUN",
    "MIDPOINT",
    "RK4",
    "ButcherTableau",
    "Dopri5",
    "EulerMaruyama",
    "ExplicitRungeKutta",
    "FixedStepSolver",
    "Solution",
    "Solver",
    "StochasticHeun",
    "available_solvers",
    "brownian_increment",
    "brownian_path",
    "get_solver",
    "register_solver",
    "rk_step",
    "simulate",
    "time_grid",
]
