"""The dynamics a trained network defines on a Gaussian path: its ODE and its family of SDEs.

A network trained on a Gaussian path ``x_t = alpha_t x1 + beta_t x0`` predicts one
parameterisation (``velocity``, ``score``, ``epsilon`` or ``x1``) of the marginal quantities at
``(x, t)``; its objective's ``velocity`` / ``score`` (``path.convert``) turn it into the others.
Two of them define the sampler (course notes, sections 2-4):

- the marginal vector field ``u_t(x)``, whose ODE ``dX_t = u_t(X_t) dt`` carries
  ``p_init = N(0, I)`` at t=0 to the data at t=1 (the flow model; for a diffusion model the
  *probability-flow ODE*);
- the marginal score ``s_t(x) = grad log p_t(x)``, with which, for every diffusion coefficient
  ``sigma_t >= 0``, the SDE (the notes' "SDE extension trick")

      dX_t = [u_t(X_t) + sigma_t^2 / 2 * s_t(X_t)] dt + sigma_t dW_t

  has the same marginals ``p_t``. ``sigma_t = 0`` gives back the ODE: a flow model is the
  diffusion model with ``sigma = 0``, and a diffusion model has a probability-flow ODE.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from flowdiff.dynamics import ODE, FunctionSDE, VectorFieldODE
from flowdiff.objectives import Objective
from flowdiff.utils import expand_like

__all__ = ["DiffusionCoefficient", "ModelField", "check_sigma", "model_dynamics"]

# A diffusion coefficient as the user gives it: a constant, or a function of time ``(B,)``.
DiffusionCoefficient = float | Callable[[Tensor], "float | Tensor"]


class ModelField(nn.Module):
    """The marginal vector field ``u_t(x)`` of a network trained by ``objective``.

    ``forward(x (B, *shape), t (B,), **cond) -> u_t(x) (B, *shape)``: one network call, whose
    output (``objective.prediction``: velocity, score, noise, ...) ``objective.velocity``
    converts through the path. It has the network signature ``net(x, t, **cond)``, so it is
    what the ODE solvers and the likelihood integrate.

    Args:
        net: ``net(x, t, **cond) -> (B, *shape)``, e.g. a ``flowdiff.nets`` network or a
            :class:`~flowdiff.models.guidance.ClassifierFreeGuidance` around one.
        objective: the ``flowdiff.objectives`` objective the network was trained with (on a
            Gaussian path, for the score of the SDE).
    """

    def __init__(self, net: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.net, self.objective = net, objective

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        return self.objective.velocity(self.net(x, t, **cond), x, t)


def check_sigma(sigma: object) -> DiffusionCoefficient | None:
    """Validate a diffusion coefficient; ``None`` when it is identically 0 (an ODE).

    Accepts ``None``/``0`` (no noise), a finite number ``> 0``, or a callable ``sigma(t)`` of
    the ``(B,)`` times returning a number, a 0-d or a ``(B,)`` tensor.
    """
    if sigma is None:
        return None
    if callable(sigma):
        return sigma
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise TypeError(
            f"sigma must be a number >= 0 or a function of t, got {type(sigma).__name__}"
        )
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    return float(sigma) if sigma > 0 else None


def _sigma_at(sigma: DiffusionCoefficient, x: Tensor, t: Tensor) -> float | Tensor:
    """``sigma_t`` broadcastable against ``x (B, *shape)``; a callable's values must be finite
    and ``>= 0`` (a negative ``sigma_t`` would flip the sign of the score correction)."""
    if not callable(sigma):
        return sigma
    value = sigma(t)
    if isinstance(value, Tensor):
        if value.dim() > 1 or (value.dim() == 1 and value.shape != t.shape):
            raise ValueError(
                f"sigma(t) must return a number or a tensor of shape {tuple(t.shape)}, got "
                f"{tuple(value.shape)}"
            )
        if not bool((torch.isfinite(value) & (value >= 0)).all()):
            raise ValueError(
                f"sigma(t) must be finite and >= 0, got values in "
                f"[{float(value.min())}, {float(value.max())}] at t in "
                f"[{float(t.min())}, {float(t.max())}]"
            )
        return expand_like(value.to(x), x)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"sigma(t) must return a number or a tensor, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"sigma(t) must be finite and >= 0, got {value!r} at t={float(t[0])}")
    return value


def model_dynamics(
    field: ModelField, sigma: DiffusionCoefficient | None = None, **cond: Any
) -> ODE:
    """The ODE (``sigma`` ``None``) or SDE of ``field``, conditioned on ``cond`` (e.g. ``y``).

    SDE: ``dX = [u_t(X) + sigma_t^2 / 2 * s_t(X)] dt + sigma_t dW`` with ``u_t`` and ``s_t``
    read from one network call (module docstring); its noise is additive (``sigma`` depends on
    t only), which lets the SDE solvers skip their state-dependent corrections.
    """
    if sigma is None:
        return VectorFieldODE(field, **cond)

    def drift(x: Tensor, t: Tensor) -> Tensor:
        output = field.net(x, t, **cond)
        velocity = field.objective.velocity(output, x, t)
        score = field.objective.score(output, x, t)
        return velocity + 0.5 * _sigma_at(sigma, x, t) ** 2 * score

    def diffusion(x: Tensor, t: Tensor) -> float | Tensor:
        return _sigma_at(sigma, x, t)

    return FunctionSDE(drift, diffusion if callable(sigma) else sigma, additive_noise=True)
