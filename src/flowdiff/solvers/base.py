"""What every solver sees: the dynamics wrapped with NFE counting and shape checks.

Solvers call ``field.drift(x, t)`` / ``field.diffusion(x, t)`` with a Python float ``t``; the
wrapper turns it into the ``(B,)`` time of the contract, counts network evaluations (NFE) and
checks the shape of every output, so no solver repeats that bookkeeping. Checking only the first
call is not enough: a drift returning ``(1, *shape)`` later (e.g. a branch taken at some t) would
broadcast into the state silently. The check is one shape comparison per call (well under a
microsecond, next to a network's milliseconds).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from flowdiff.dynamics import ODE, SDE

__all__ = ["FixedStepSolver", "Solver"]


class _Field:
    """``dynamics`` evaluated at float times, counting drift calls (the NFE)."""

    def __init__(self, dynamics: ODE, x0: Tensor) -> None:
        self.dynamics = dynamics
        self.shape = tuple(x0.shape)
        self.dtype, self.device = x0.dtype, x0.device
        self.nfe = 0
        self._sigma_shape: torch.Size | None = None  # last diffusion shape that passed the check
        self.additive_noise = isinstance(dynamics, SDE) and dynamics.additive_noise

    def _time(self, t: float) -> Tensor:
        # A fresh (B,) tensor per call: cheap next to any network, and a net that modifies its
        # time input in place cannot corrupt the solver's state.
        return torch.full(self.shape[:1], t, dtype=self.dtype, device=self.device)

    def drift(self, x: Tensor, t: float) -> Tensor:
        out = self.dynamics.drift(x, self._time(t))
        self.nfe += 1
        if not isinstance(out, Tensor) or out.shape != self.shape:
            self._raise_bad_drift(out, t)
        return out

    def _raise_bad_drift(self, out: object, t: float) -> None:
        name = f"{type(self.dynamics).__name__}.drift(x, t)"
        if not isinstance(out, Tensor):
            raise TypeError(f"{name} must return a tensor, got {type(out).__name__}")
        raise ValueError(
            f"{name} must return the shape of x {self.shape}, got {tuple(out.shape)} "
            f"(t={t:g}, drift call {self.nfe})"
        )

    def diffusion(self, x: Tensor, t: float) -> float | Tensor:
        assert isinstance(self.dynamics, SDE)
        sigma = self.dynamics.diffusion(x, self._time(t))
        # re-checked whenever the shape differs from the last one that passed (every call)
        if not (isinstance(sigma, Tensor) and sigma.shape == self._sigma_shape):
            self._check_diffusion(sigma, t)
            if isinstance(sigma, Tensor):
                self._sigma_shape = sigma.shape
        return sigma

    def _check_diffusion(self, sigma: object, t: float) -> None:
        name = f"{type(self.dynamics).__name__}.diffusion(x, t)"
        if isinstance(sigma, Tensor):
            try:
                ok = torch.broadcast_shapes(sigma.shape, self.shape) == self.shape
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(
                    f"{name} must be broadcastable to x {self.shape}, got shape "
                    f"{tuple(sigma.shape)} (t={t:g})"
                )
        elif isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise TypeError(f"{name} must return a number or a tensor, got {type(sigma).__name__}")

    def nonfinite_cause(self, x: Tensor, t: float) -> str:
        """Which coefficient is non-finite at a finite state ``x`` and time ``t``, in words (for
        the error raised when a solve turns non-finite; not counted as NFE)."""
        time = self._time(t)
        if not bool(torch.isfinite(self.dynamics.drift(x, time)).all()):
            return f"the drift is non-finite at the last finite state (t={t:g})"
        if isinstance(self.dynamics, SDE):
            sigma = self.dynamics.diffusion(x, time)
            finite = (
                bool(torch.isfinite(sigma).all())
                if isinstance(sigma, Tensor)
                else math.isfinite(sigma)
            )
            if not finite:
                return f"the diffusion is non-finite at the last finite state (t={t:g})"
        which = (
            "the drift and the diffusion are" if isinstance(self.dynamics, SDE) else "the drift is"
        )
        return (
            f"{which} finite at the last finite state (t={t:g}), so the step itself "
            "overflowed: the steps may be too large for the dynamics (an unstable step), or a "
            "coefficient is non-finite at an intermediate stage"
        )


class Solver(ABC):
    """A named integration scheme.

    Attributes:
        name: the registry name (``simulate(..., solver=name)``).
        order: global order of accuracy on ODEs (``sigma = 0``).
        stochastic: whether it integrates SDEs (``strong_order``/``weak_order`` then declared).
        adaptive: whether it picks its own steps (``rtol``/``atol``) instead of following ``ts``.
    """

    name: str
    order: int
    stochastic: ClassVar[bool] = False
    adaptive: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, order={self.order})"


class FixedStepSolver(Solver):
    """A one-step method on the grid ``ts``: ``simulate`` calls :meth:`step` once per interval."""

    @abstractmethod
    def step(self, field: _Field, x: Tensor, t: float, h: float, dw: Tensor | None) -> Tensor:
        """Advance ``x (B, *shape)`` from ``t`` to ``t + h`` (``h < 0`` integrates backward).

        ``dw`` is the Brownian increment ``W_{t+h} - W_t ~ N(0, |h|)`` (shaped like ``x``) for
        stochastic solvers and ``None`` otherwise.
        """
