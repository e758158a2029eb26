"""Explicit Runge-Kutta methods as Butcher tableaux, all run by one stepping routine.

A tableau ``(a, b, c)`` defines the step (Hairer, Norsett & Wanner, *Solving ODEs I*, II.1)::

    k_i     = u(x + h sum_{j<i} a_ij k_j,  t + c_i h),   i = 1..s
    x_{n+1} = x + h sum_i b_i k_i

so Euler, midpoint, Heun, RK4 and Dormand-Prince 5(4) differ only in their numbers. The
embedded weights ``b_hat`` of an adaptive pair give a second, lower-order solution whose
difference ``h sum_i (b_i - b_hat_i) k_i`` estimates the local error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from flowdiff.solvers.base import FixedStepSolver, _Field

__all__ = [
    "DOPRI5",
    "EULER",
    "HEUN",
    "MIDPOINT",
    "RK4",
    "ButcherTableau",
    "ExplicitRungeKutta",
    "rk_step",
]

# Consistency conditions are checked to this tolerance (the coefficients are rationals
# written as float64 quotients).
_TABLEAU_TOL = 1e-12


@dataclass(frozen=True)
class ButcherTableau:
    """The coefficients of an explicit RK method.

    Args:
        c: ``(s,)`` stage times as fractions of the step.
        a: strictly lower-triangular rows: row ``i`` holds ``a_i1 .. a_i,i-1`` (``i`` entries).
        b: ``(s,)`` weights of the solution, of global order ``order``.
        order: the declared order.
        b_hat: ``(s,)`` embedded weights (adaptive pairs only).
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_hat: tuple[float, ...] | None = None
    # derived: the non-zero (j, a_ij) of each row, the non-zero (i, b_i), (i, b_i - b_hat_i)
    a_terms: tuple[tuple[tuple[int, float], ...], ...] = field(init=False, repr=False)
    b_terms: tuple[tuple[int, float], ...] = field(init=False, repr=False)
    err_terms: tuple[tuple[int, float], ...] | None = field(init=False, repr=False)
    fsal: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(
                f"a must be strictly lower triangular with rows of length 0..{s - 1}, "
                f"got row lengths {[len(row) for row in self.a]}"
            )
        for name, weights in (("b", self.b), ("b_hat", self.b_hat)):
            if weights is None:
                continue
            if len(weights) != s:
                raise ValueError(
                    f"{name} must have {s} entries (one per stage), got {len(weights)}"
                )
            if abs(math.fsum(weights) - 1) > _TABLEAU_TOL:
                raise ValueError(f"{name} must sum to 1 (consistency), got {math.fsum(weights)}")
        for i, (ci, row) in enumerate(zip(self.c, self.a)):
            # c_i = sum_j a_ij makes the method treat t like any other coordinate
            if abs(math.fsum(row) - ci) > _TABLEAU_TOL:
                raise ValueError(f"c[{i}]={ci} must equal the sum of row a[{i}]={row}")
        nonzero = lambda ws: tuple((j, w) for j, w in enumerate(ws) if w != 0)  # noqa: E731
        object.__setattr__(self, "a_terms", tuple(nonzero(row) for row in self.a))
        object.__setattr__(self, "b_terms", nonzero(self.b))
        err = (
            None
            if self.b_hat is None
            else nonzero(tuple(p - q for p, q in zip(self.b, self.b_hat)))
        )
        object.__setattr__(self, "err_terms", err)
        # "first same as last": the last stage is evaluated at the new solution, so its slope
        # is the next step's first one (saves one NFE per step)
        fsal = s > 1 and self.a[-1] == tuple(self.b[:-1]) and self.b[-1] == 0 and self.c[-1] == 1
        object.__setattr__(self, "fsal", fsal)


def combine(
    x: Tensor | None, h: float, terms: Sequence[tuple[int, float]], ks: Sequence[Tensor]
) -> Tensor:
    """``x + h sum_j w_j k_j`` over ``terms = ((j, w_j), ...)`` (``x=None`` for ``0``).

    The first term allocates the result; the others accumulate into it in place, so a stage
    costs one new tensor. In-place is safe under autograd: the accumulator is a fresh tensor
    whose value no backward formula needs.
    """
    if x is None:
        (j, w), *rest = terms
        out = ks[j].mul(h * w)
    elif terms:
        (j, w), *rest = terms
        out = x.add(ks[j], alpha=h * w)
    else:
        return x
    for j, w in rest:
        out.add_(ks[j], alpha=h * w)
    return out


def rk_step(
    tableau: ButcherTableau,
    field: _Field,
    x: Tensor,
    t: float,
    h: float,
    k1: Tensor | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """One explicit RK step ``x (B, *shape)`` at ``t`` -> ``(x_{n+1}, [k_1..k_s])``.

    ``k1`` is the slope at ``(x, t)`` when already known (FSAL), saving one drift call.
    """
    ks: list[Tensor] = []
    stage_x = x
    for i, (ci, terms) in enumerate(zip(tableau.c, tableau.a_terms)):
        if i == 0 and k1 is not None:
            ks.append(k1)
            continue
        stage_x = combine(x, h, terms, ks)
        ks.append(field.drift(stage_x, t + ci * h))
    # for an FSAL pair the last stage point *is* the new solution
    x_new = stage_x if tableau.fsal else combine(x, h, tableau.b_terms, ks)
    return x_new, ks


class ExplicitRungeKutta(FixedStepSolver):
    """A fixed-step solver from a :class:`ButcherTableau` (``s`` drift calls per step).

    Args:
        name: the name it is registered and reported under.
        tableau: its coefficients; ``order`` is the tableau's.
    """

    def __init__(self, name: str, tableau: ButcherTableau) -> None:
        self.name = name
        self.tableau = tableau
        self.order = tableau.order

    def step(self, field: _Field, x: Tensor, t: float, h: float, dw: Tensor | None) -> Tensor:
        return rk_step(self.tableau, field, x, t, h)[0]


EULER = ButcherTableau(c=(0.0,), a=((),), b=(1.0,), order=1)
# explicit midpoint: slope at the Euler half step
MIDPOINT = ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2)
# Heun (explicit trapezoid): average of the slopes at both ends of an Euler step
HEUN = ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2)
# the classical fourth-order Runge-Kutta method
RK4 = ButcherTableau(
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    order=4,
)
# Dormand & Prince (1980) 5(4): 5th-order solution, 4th-order embedded estimate, FSAL
DOPRI5 = ButcherTableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    order=5,
    b_hat=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
)
