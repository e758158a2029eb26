"""The worked examples of the course notes, each with the closed form the tests compare to.

- :class:`LinearODE`: ``u_t(x) = -theta x``, flow ``phi_t(x0) = x0 e^{-theta t}``.
- :class:`BrownianMotion`: ``dX = sigma dW``, ``X_t ~ N(x0, sigma^2 t)``.
- :class:`OrnsteinUhlenbeck`: ``dX = -theta X dt + sigma dW``: the linear ODE plus noise, with
  ``X_t ~ N(x0 e^{-theta t}, sigma^2 (1 - e^{-2 theta t}) / (2 theta))`` and stationary law
  ``N(0, sigma^2 / (2 theta))``.
- :class:`LangevinDynamics`: ``dX = 1/2 sigma^2 grad log p(X) dt + sigma dW``, whose stationary
  law is ``p`` for every ``sigma > 0``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowdiff.dynamics.base import ODE, SDE, _check_sigma
from flowdiff.utils import as_batch_time, check_real, check_tensor, expand_like

__all__ = ["BrownianMotion", "LangevinDynamics", "LinearODE", "OrnsteinUhlenbeck"]


def _as_time(t: float | Tensor) -> Tensor:
    """A time (number or tensor of any shape) as a floating tensor for the closed forms."""
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


class LinearODE(ODE):
    """``dX_t = -theta X_t dt``: the course's first example, exponential decay toward 0 (growth
    if ``theta < 0``).

    Args:
        theta: the rate, any finite number.
    """

    def __init__(self, theta: float = 1.0) -> None:
        self.theta = check_real(theta, "theta")

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return x.mul(-self.theta)

    def flow(self, x0: Tensor, t: float | Tensor) -> Tensor:
        """The exact flow ``phi_t(x0) = x0 e^{-theta t}``: ``x0 (B, *shape)``, ``t`` scalar or
        ``(B,)`` -> ``(B, *shape)``."""
        check_tensor(x0, "x0")
        t = as_batch_time(t, x0.shape[0], device=x0.device, dtype=x0.dtype)
        return x0 * torch.exp(-self.theta * expand_like(t, x0))


class OrnsteinUhlenbeck(LinearODE, SDE):
    """``dX_t = -theta X_t dt + sigma dW_t``: the course's linear ODE driven by noise.

    Given ``X_0 = x0`` the law of ``X_t`` is Gaussian, independently per coordinate, with
    :meth:`mean` ``x0 e^{-theta t}`` and :meth:`variance` ``sigma^2 (1 - e^{-2 theta t}) /
    (2 theta)``; as ``t -> inf`` it forgets ``x0`` and tends to ``N(0, stationary_std^2)``.

    Args:
        theta: mean-reversion rate, ``> 0`` (a stationary law exists only then).
        sigma: noise scale, ``>= 0``.
    """

    additive_noise = True

    def __init__(self, theta: float = 1.0, sigma: float = 1.0) -> None:
        super().__init__(theta)
        if self.theta <= 0:
            raise ValueError(f"theta must be > 0 for an Ornstein-Uhlenbeck process, got {theta}")
        self.sigma = _check_sigma(sigma, "sigma")

    def diffusion(self, x: Tensor, t: Tensor) -> float:
        return self.sigma

    def mean(self, x0: Tensor, t: float | Tensor) -> Tensor:
        """``E[X_t | X_0 = x0] = x0 e^{-theta t}`` (the linear ODE's flow), ``(B, *shape)``."""
        return self.flow(x0, t)

    def variance(self, t: float | Tensor) -> Tensor:
        """``Var[X_t | X_0] = sigma^2 (1 - e^{-2 theta t}) / (2 theta)`` per coordinate (t's
        shape); ``expm1`` keeps it accurate for small ``t``."""
        return -(self.sigma**2) * torch.expm1(-2 * self.theta * _as_time(t)) / (2 * self.theta)

    @property
    def stationary_std(self) -> float:
        """Standard deviation of the stationary law ``N(0, sigma^2 / (2 theta))``."""
        return self.sigma / math.sqrt(2 * self.theta)


class BrownianMotion(SDE):
    """``dX_t = sigma dW_t``: ``X_t ~ N(x0, sigma^2 t)`` independently per coordinate.

    Args:
        sigma: noise scale, ``>= 0``.
    """

    additive_noise = True

    def __init__(self, sigma: float = 1.0) -> None:
        self.sigma = _check_sigma(sigma, "sigma")

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def diffusion(self, x: Tensor, t: Tensor) -> float:
        return self.sigma

    def mean(self, x0: Tensor, t: float | Tensor) -> Tensor:
        """``E[X_t | X_0 = x0] = x0`` for every ``t``, ``(B, *shape)``."""
        check_tensor(x0, "x0")
        return x0.clone()

    def variance(self, t: float | Tensor) -> Tensor:
        """``Var[X_t | X_0] = sigma^2 t`` per coordinate (t's shape)."""
        return self.sigma**2 * _as_time(t)


def _check_takes_x_only(score: Callable[..., Tensor], what: str) -> None:
    """Raise a ``TypeError`` now, rather than at the first drift call, if ``score`` cannot be
    called as ``score(x)`` (e.g. the oracle's ``score(x, t)``)."""
    try:
        signature = inspect.signature(score)
    except (TypeError, ValueError):  # builtins and C callables expose no signature
        return
    try:
        signature.bind(None)
    except TypeError as err:
        params = ", ".join(signature.parameters)
        raise TypeError(
            f"LangevinDynamics calls score(x) with x alone, but {what}({params}) cannot be "
            f"called that way ({err}); for a time-dependent score fix t, e.g. "
            "lambda x: oracle.score(x, 1.0)"
        ) from None


class LangevinDynamics(SDE):
    """Overdamped Langevin dynamics ``dX_t = 1/2 sigma^2 grad log p(X_t) dt + sigma dW_t``.

    ``p`` solves its Fokker-Planck equation (the drift is chosen so that the probability flux
    of the drift cancels that of the diffusion), so ``p`` is stationary for every
    ``sigma > 0``, and the law of ``X_t`` converges to ``p`` from any start when ``p`` is,
    e.g., a Gaussian mixture.

    Args:
        target: a density with a ``score(x)`` method (``flowdiff.distributions``) or a score
            function ``score(x (B, *shape)) -> (B, *shape)``. The score takes ``x`` alone: the
            target is a fixed density, so a time-dependent score such as
            ``GaussianMixtureOracle.score(x, t)`` is rejected with a ``TypeError`` (pass
            ``lambda x: oracle.score(x, t)`` to sample ``p_t`` at a fixed ``t``).
        sigma: noise scale, ``> 0`` (``sqrt(2)`` gives the usual ``dX = grad log p dt + sqrt(2)
            dW``).
    """

    additive_noise = True

    def __init__(self, target: object, sigma: float = math.sqrt(2.0)) -> None:
        score = getattr(target, "score", None)
        if callable(score):
            self.score: Callable[[Tensor], Tensor] = score
            what = f"{type(target).__name__}.score"
        elif callable(target):
            self.score = target  # type: ignore[assignment]
            what = "the score function"
        else:
            raise TypeError(
                "target must be a density with a .score(x) method or a score function, "
                f"got {type(target).__name__}"
            )
        _check_takes_x_only(self.score, what)
        self.sigma = _check_sigma(sigma, "sigma")
        if self.sigma == 0:
            raise ValueError("sigma must be > 0 for Langevin dynamics (sigma=0 is gradient ascent)")

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return self.score(x).mul(0.5 * self.sigma**2)

    def diffusion(self, x: Tensor, t: Tensor) -> float:
        return self.sigma
