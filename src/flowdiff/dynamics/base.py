"""ODEs and SDEs as small objects: a drift ``u_t(x)`` and, for an SDE, a diffusion ``sigma_t``.

The course notes (section 1) write every generative process as

    ODE:  dX_t = u_t(X_t) dt
    SDE:  dX_t = u_t(X_t) dt + sigma_t dW_t      (Ito)

A dynamics object only evaluates these coefficients; the solvers (``flowdiff.solvers``) turn them
into trajectories. Shapes: ``x`` is ``(B, *shape)`` and ``t`` is ``(B,)``; the drift returns a
tensor shaped like ``x``, the diffusion a scalar or a tensor broadcastable to ``x`` (diagonal
noise: coordinate ``i`` is driven by its own Brownian motion ``W^i``, scaled by ``sigma_i``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor

from flowdiff.utils import check_real

__all__ = ["ODE", "SDE", "FunctionSDE", "VectorFieldODE"]

Field = Callable[..., Tensor]
Diffusion = Callable[[Tensor, Tensor], "float | Tensor"]


class ODE(ABC):
    """An ordinary differential equation ``dX_t = u_t(X_t) dt``."""

    @abstractmethod
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """The vector field ``u_t(x)``: ``x (B, *shape)``, ``t (B,)`` -> ``(B, *shape)``."""


class SDE(ODE):
    """An Ito SDE ``dX_t = u_t(X_t) dt + sigma_t(X_t) dW_t`` with diagonal noise.

    ``additive_noise`` declares that ``sigma`` does not depend on ``x`` (Brownian motion, OU,
    Langevin, the forward processes of diffusion models). Solvers may then skip the evaluations
    that only matter when it does; declaring it wrongly gives wrong results, so it is ``False``
    unless a subclass knows better.
    """

    additive_noise: ClassVar[bool] = False

    @abstractmethod
    def diffusion(self, x: Tensor, t: Tensor) -> float | Tensor:
        """``sigma_t(x)``: a number or a tensor broadcastable to ``x (B, *shape)``."""


class VectorFieldODE(ODE):
    """The ODE of any vector field ``net(x, t, **cond)``: a network or a plain function.

    Args:
        net: callable ``net(x (B, *shape), t (B,), **cond) -> (B, *shape)``.
        **cond: conditioning passed by keyword on every call (e.g. ``y=labels``); the network
            raises ``TypeError`` on a keyword it does not take, so a typo cannot pass silently.
    """

    def __init__(self, net: Field, **cond: Any) -> None:
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t, **cond), got {type(net).__name__}")
        self.net = net
        self.cond = cond

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, t, **self.cond)


class FunctionSDE(SDE):
    """An SDE from plain functions: ``dX = drift(X, t) dt + diffusion(X, t) dW``.

    Args:
        drift: ``drift(x (B, *shape), t (B,)) -> (B, *shape)`` (a network works too).
        diffusion: a constant ``sigma >= 0``, or ``diffusion(x, t) -> float | Tensor``
            broadcastable to ``x``.
        additive_noise: whether ``diffusion`` ignores ``x``; inferred (``True``) for a constant,
            ``False`` by default for a function (always correct, slightly more work).
    """

    def __init__(
        self,
        drift: Field,
        diffusion: float | Diffusion,
        *,
        additive_noise: bool | None = None,
    ) -> None:
        if not callable(drift):
            raise TypeError(f"drift must be callable as drift(x, t), got {type(drift).__name__}")
        if callable(diffusion):
            self._sigma: float | None = None
            self._diffusion_fn: Diffusion | None = diffusion
            self.additive_noise = bool(additive_noise)  # type: ignore[misc]
        else:
            self._sigma = _check_sigma(diffusion, "diffusion")
            self._diffusion_fn = None
            if additive_noise is False:
                raise ValueError("additive_noise=False contradicts a constant diffusion")
            self.additive_noise = True  # type: ignore[misc]
        self._drift_fn = drift

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return self._drift_fn(x, t)

    def diffusion(self, x: Tensor, t: Tensor) -> float | Tensor:
        if self._diffusion_fn is None:
            return self._sigma  # type: ignore[return-value]
        return self._diffusion_fn(x, t)


def _check_sigma(sigma: object, name: str) -> float:
    """A diffusion coefficient: a finite number ``>= 0``."""
    value = check_real(sigma, name)
    if value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {sigma!r}")
    return value
