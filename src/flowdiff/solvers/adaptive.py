"""Adaptive Dormand-Prince 5(4) with error control and dense output.

Each step takes the 5th-order solution and estimates its local error by the difference with the
embedded 4th-order one. With ``scale = atol + rtol * max(|x_n|, |x_{n+1}|)`` elementwise, the
step is accepted when ``err = max_b RMS_b(error / scale) <= 1``: the *worst* sample of the batch
must meet the tolerance (an RMS over the whole batch would let a few trajectories drift off).
The next step is ``h * clip(0.9 err^{-1/5}, 0.2, 10)`` (Hairer, Norsett & Wanner, *Solving
ODEs I*, II.4, with exponent ``1/(q+1)``, ``q = 4`` the lower order of the pair).

Output times between steps come from the method's 4th-order continuous extension (Hairer's
``CONTD5``), so saving a whole trajectory costs no extra drift calls and never shortens steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from flowdiff.solvers.base import Solver, _Field
from flowdiff.solvers.rk import DOPRI5, combine, rk_step

__all__ = ["Dopri5"]

_SAFETY = 0.9
_MIN_FACTOR = 0.2
_MAX_FACTOR = 10.0
_ERROR_EXPONENT = -1 / 5

# Dense output weights of Dormand-Prince 5(4) (Hairer's dopri5.f, CONTD5): the quartic term of
# the interpolant, multiplying k1, k3..k7 (k2 has weight 0).
_DENSE_TERMS = (
    (0, -12715105075 / 11282082432),
    (2, 87487479700 / 32700410799),
    (3, -10690763975 / 1880347072),
    (4, 701980252875 / 199316789632),
    (5, -1453857185 / 822651844),
    (6, 69997945 / 29380423),
)


def _error_norm(error: Tensor, x: Tensor, x_new: Tensor, rtol: float, atol: float) -> float:
    """``max_b sqrt(mean((error / (atol + rtol max(|x|, |x_new|)))^2))`` over the batch."""
    with torch.no_grad():
        scale = torch.maximum(x.abs(), x_new.abs()).mul_(rtol).add_(atol)
        ratio = (error / scale).flatten(1)
        return float(ratio.square().mean(1).max().sqrt())


class Dopri5(Solver):
    """Dormand-Prince 5(4), FSAL (6 drift calls per accepted or rejected step)."""

    name = "dopri5"
    order = 5
    adaptive = True
    tableau = DOPRI5

    def interpolate(
        self, x: Tensor, x_new: Tensor, ks: Sequence[Tensor], h: float, theta: float
    ) -> Tensor:
        """The solution at ``t + theta h`` (``0 <= theta <= 1``) from a step's ``x``,
        ``x_new`` and slopes ``ks``: Hairer's 4th-order dense output, ``(B, *shape)``.

        ``y(theta) = x + theta (d + (1 - theta) (g + theta (q + (1 - theta) r)))`` with
        ``d = x_new - x``, ``g = h k1 - d``, ``q = d - h k7 - g``, ``r = h sum_i d_i k_i``:
        a Hermite interpolant (matching ``x``, ``x_new`` and both end slopes) plus a quartic
        correction that lifts it to order 4.
        """
        d = x_new - x
        g = ks[0] * h - d
        q = d - ks[-1] * h - g
        r = combine(None, h, _DENSE_TERMS, ks)
        return x + theta * (d + (1 - theta) * (g + theta * (q + (1 - theta) * r)))

    def _initial_step(
        self,
        field: _Field,
        x0: Tensor,
        k0: Tensor,
        t0: float,
        span: float,
        rtol: float,
        atol: float,
    ) -> float:
        """A first step size from the solution's and the drift's scales (Hairer II.4, one NFE)."""
        zero = torch.zeros_like(x0)
        d0 = _error_norm(x0, x0, zero, rtol, atol)
        d1 = _error_norm(k0, x0, zero, rtol, atol)
        if not math.isfinite(d1):
            raise ValueError(f"dopri5: the drift is non-finite at the initial state (t={t0:g})")
        h0 = 1e-6 if min(d0, d1) < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, abs(span))
        direction = math.copysign(1.0, span)
        x1 = x0.add(k0, alpha=direction * h0)
        k1 = field.drift(x1, t0 + direction * h0)
        d2 = _error_norm(k1 - k0, x0, zero, rtol, atol) / h0
        h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** 0.2
        return min(100 * h0, h1, abs(span))

    def solve(
        self,
        field: _Field,
        x0: Tensor,
        t0: float,
        t1: float,
        save_times: Sequence[float],
        *,
        rtol: float,
        atol: float,
        max_steps: int,
    ) -> tuple[Tensor, list[Tensor], int]:
        """Integrate from ``t0`` to ``t1`` (either direction).

        ``save_times`` are ordered from ``t0`` to ``t1`` and lie in the closed span. Returns
        the final state, the states at ``save_times`` and the number of accepted steps.
        """
        span = t1 - t0
        direction = math.copysign(1.0, span)
        saved: list[Tensor] = []
        pending = list(save_times)
        while pending and pending[0] == t0:
            saved.append(x0)
            pending.pop(0)

        k1 = field.drift(x0, t0)
        h = self._initial_step(field, x0, k1, t0, span, rtol, atol)
        x, t = x0, t0
        accepted = rejected = 0
        last_rejected = False
        while t != t1:
            if accepted + rejected >= max_steps:
                raise ValueError(
                    f"dopri5 took max_steps={max_steps} steps before reaching t={t1:g} "
                    f"(at t={t:g}, step {h:.3g}); loosen rtol/atol or raise max_steps"
                )
            final = h >= abs(t1 - t)
            dt = t1 - t if final else direction * h
            x_new, ks = rk_step(self.tableau, field, x, t, dt, k1=k1)
            assert self.tableau.err_terms is not None
            err = _error_norm(combine(None, dt, self.tableau.err_terms, ks), x, x_new, rtol, atol)
            if not math.isfinite(err) or err > 1:
                # a non-finite trial (the drift blew up) is a rejection: shrink and retry
                rejected += 1
                last_rejected = True
                factor = _MIN_FACTOR if not math.isfinite(err) else _SAFETY * err**_ERROR_EXPONENT
                h = abs(dt) * max(_MIN_FACTOR, factor)
                if h <= 1e-12 * max(abs(t), abs(span)):
                    raise ValueError(
                        f"dopri5 step size underflow at t={t:g} (step {accepted}): the state or "
                        f"drift is non-finite or too stiff there (error norm {err:.3g})"
                    )
                continue
            t_new = t1 if final else t + dt
            while pending and (pending[0] - t_new) * direction <= 0:
                ts = pending.pop(0)
                saved.append(
                    x_new if ts == t_new else self.interpolate(x, x_new, ks, dt, (ts - t) / dt)
                )
            x, t, k1 = x_new, t_new, ks[-1]
            accepted += 1
            factor = _MAX_FACTOR if err == 0 else _SAFETY * err**_ERROR_EXPONENT
            # after a rejection, do not grow the step straight back (Hairer's facold rule)
            upper = 1.0 if last_rejected else _MAX_FACTOR
            h = abs(dt) * min(upper, max(_MIN_FACTOR, factor))
            last_rejected = False
        return x, saved, accepted
