"""SDE solvers for ``dX = u_t(X) dt + sigma_t(X) dW`` (Ito, diagonal noise) and Brownian noise.

Both schemes are derivative-free and converge to the *Ito* solution (the convention of the
course notes and of :mod:`flowdiff.dynamics`):

- :class:`EulerMaruyama`: ``X' = X + u h + sigma dW``; strong order 1/2, weak order 1
  (Kloeden & Platen, *Numerical Solution of SDEs*, 10.2 and 14.1). Exact in law for Brownian
  motion.
- :class:`StochasticHeun`: Heun's predictor-corrector for the drift and the trapezoid rule for
  the diffusion, plus the derivative-free Milstein correction that makes it Ito-consistent when
  ``sigma`` depends on ``x`` (Kloeden & Platen's explicit order 2.0 weak scheme, eq. 15.1.1).
  Strong order 1 and weak order 2 for additive noise, and for diagonal noise whose ``sigma_i``
  depends on ``x_i`` only (e.g. geometric Brownian motion). With additive noise
  (``SDE.additive_noise``) the correction vanishes and it is the classical stochastic Heun.

Time may run backwards (``h < 0``): the increments are then ``N(0, |h|)``, as for the reverse
process of a diffusion model written in forward time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from flowdiff.solvers.base import FixedStepSolver, _Field
from flowdiff.utils import randn

__all__ = ["EulerMaruyama", "StochasticHeun", "brownian_increment", "brownian_path"]


def brownian_increment(
    shape: Sequence[int],
    h: float,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``W_{t+h} - W_t ~ N(0, |h| I)`` of the given shape, drawn with ``generator``."""
    # torch draws on the generator's device; the increment then moves to the state's
    z = randn(
        shape, generator=generator, dtype=dtype, device=None if generator is not None else device
    )
    z.mul_(math.sqrt(abs(h)))
    return z if device is None else z.to(device)


def brownian_path(
    ts: Tensor | Sequence[float],
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A Brownian path ``W`` sampled at ``ts``: ``(len(ts), *shape)`` with ``W[0] = 0``.

    It draws the increments exactly as :func:`flowdiff.solvers.simulate` does, so
    ``simulate(sde, x0, ts, brownian=brownian_path(ts, x0.shape, generator=g))`` reproduces
    ``simulate(sde, x0, ts, generator=g)`` for the same seed. Subsampling the path
    (``W[::k]`` on ``ts[::k]``) gives the same Brownian motion on a coarser grid: the tool for
    strong-error studies.
    """
    times = torch.as_tensor(ts, dtype=torch.float64).tolist()
    if len(times) < 2:
        raise ValueError(f"ts must have at least 2 times, got {len(times)}")
    steps = [
        brownian_increment(shape, t1 - t0, generator=generator, dtype=dtype, device=device)
        for t0, t1 in itertools.pairwise(times)
    ]
    first = torch.zeros_like(steps[0]).unsqueeze(0)
    return torch.cat([first, torch.stack(steps).cumsum(0)])


def _add_noise(x: Tensor, sigma: float | Tensor, dw: Tensor) -> Tensor:
    """``x + sigma * dw`` accumulated into ``x`` (a fresh tensor owned by the caller)."""
    if isinstance(sigma, Tensor):
        return x.addcmul_(sigma, dw)
    return x.add_(dw, alpha=sigma)


class EulerMaruyama(FixedStepSolver):
    """``X_{n+1} = X_n + u_t(X_n) h + sigma_t(X_n) dW_n``: 1 NFE per step."""

    name = "euler_maruyama"
    order = 1
    strong_order = 0.5
    weak_order = 1.0
    stochastic = True
    ode_solver = "euler"  # what it reduces to when sigma = 0

    def step(self, field: _Field, x: Tensor, t: float, h: float, dw: Tensor | None) -> Tensor:
        assert dw is not None
        sigma = field.diffusion(x, t)
        return _add_noise(x.add(field.drift(x, t), alpha=h), sigma, dw)


class StochasticHeun(FixedStepSolver):
    """Ito stochastic Heun (Kloeden & Platen 15.1.1): 2 NFE per step.

    With ``Y = X + u h`` and ``s_0 = sigma_t(X)``::

        X~      = Y + s_0 dW                         predictor (an Euler-Maruyama step)
        Y+-     = Y +- s_0 sqrt|h|                   support points for sigma
        s+-     = sigma_{t+h}(Y+-)
        X_{n+1} = X + (u_t(X) + u_{t+h}(X~)) h / 2
                    + (s+ + s- + 2 s_0) dW / 4 + (s+ - s-) (dW^2 - |h|) / (4 sqrt|h|)

    The last term is the finite-difference Milstein correction ``1/2 sigma sigma' (dW^2 - h)``.
    For additive noise ``s+ = s- = sigma_{t+h}``, leaving the trapezoid ``(s_0 + s_1) dW / 2``.
    """

    name = "stochastic_heun"
    order = 2
    strong_order = 1.0
    weak_order = 2.0
    stochastic = True
    ode_solver = "heun"

    def step(self, field: _Field, x: Tensor, t: float, h: float, dw: Tensor | None) -> Tensor:
        assert dw is not None
        k0 = field.drift(x, t)
        s0 = field.diffusion(x, t)
        y = x.add(k0, alpha=h)
        k1 = field.drift(_add_noise(y.clone(), s0, dw), t + h)
        x_new = x.add(k0, alpha=0.5 * h).add_(k1, alpha=0.5 * h)
        if field.additive_noise:
            s1 = field.diffusion(x, t + h)
            return _add_noise(x_new, 0.5 * (s0 + s1), dw)
        root_h = math.sqrt(abs(h))
        s_plus = field.diffusion(y + s0 * root_h, t + h)
        s_minus = field.diffusion(y - s0 * root_h, t + h)
        x_new = _add_noise(x_new, s_plus + s_minus + 2 * s0, dw.mul(0.25))
        milstein = (dw.square() - abs(h)).mul_(0.25 / root_h)
        return _add_noise(x_new, s_plus - s_minus, milstein)
