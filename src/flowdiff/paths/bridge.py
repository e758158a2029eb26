"""Brownian-bridge path between two arbitrary endpoints (Schrodinger-bridge style).

Conditioned on both ends ``z = (x0, x1)``, a Brownian motion with diffusion ``sigma`` pinned at
``x0`` (t=0) and ``x1`` (t=1) has marginals

    p_t(x | x0, x1) = N(mu_t, sigma^2 t (1 - t) I),      mu_t = t x1 + (1 - t) x0,

sampled as ``x_t = mu_t + sigma sqrt(t (1 - t)) z``. The vector field whose flow carries these
marginals (Tong et al. 2024, "Improving and generalizing flow-based generative models with
minibatch optimal transport", section 3, the Schrodinger-bridge conditional path) is

    u_t(x | x0, x1) = (1 - 2t) / (2 t (1 - t)) (x - mu_t) + (x1 - x0),

equal to ``d x_t / dt`` at fixed ``z``. With ``sigma -> 0`` this is the linear path; with an
entropic OT coupling of ``reg = 2 sigma^2`` it is the SB-CFM of the same paper.

At t=0 and t=1 the factor ``1 / sqrt(t (1 - t))`` is unbounded; ``t (1 - t)`` is clamped at
machine epsilon there, so ``dx_t`` stays finite (its noise term has variance
``sigma^2 (1 - 2t)^2 / (4 t (1 - t))``, which is why bridge training draws t away from 0 and 1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowdiff.paths.base import PathSample, ProbabilityPath, Source, randn_like
from flowdiff.paths.schedules import check_time
from flowdiff.utils import check_positive, check_tensor, expand_like

__all__ = ["BrownianBridgePath"]


class BrownianBridgePath(ProbabilityPath):
    """Brownian bridge of diffusion ``sigma > 0`` between ``x0`` and ``x1`` (see module notes).

    Parameterisation: ``velocity`` only (the bridge's marginal score is not a function of
    ``x1`` alone).

    Args:
        sigma: positive diffusion coefficient of the bridge.
        source: distribution of ``x0`` for :meth:`sample_x0` (``None``: ``x0`` is always given).
    """

    name = "brownian_bridge"

    def __init__(self, sigma: float, *, source: Source | None = None) -> None:
        super().__init__(source)
        self.sigma = check_positive(sigma, "sigma")

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma": self.sigma}

    def _moments(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``mu_t``, ``sigma sqrt(t (1 - t))`` and ``(1 - 2t) / (2 t (1 - t))``, the last two as
        ``(B, 1, ..., 1)``; ``t`` is ``(B,)``."""
        check_time(t)
        t = expand_like(t, x1)
        var = t * (1 - t)
        safe_var = var.clamp_min(torch.finfo(x1.dtype).eps)
        return x0 + t * (x1 - x0), self.sigma * torch.sqrt(var), (1 - 2 * t) / (2 * safe_var)

    def sample(
        self, x0: Tensor, x1: Tensor, t: float | Tensor, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """``x_t = mu_t + sigma sqrt(t(1-t)) z`` with ``z ~ N(0, I)`` drawn from ``generator``,
        and ``dx_t = x1 - x0 + sigma (1 - 2t) / (2 sqrt(t(1-t))) z``; all ``(B, *shape)``."""
        t = self._check_pair(x0, x1, t)
        mu, std, rate = self._moments(x0, x1, t)
        noise = std * randn_like(x1, generator)
        # dx_t/dt at fixed z equals rate * (x_t - mu_t) + (x1 - x0), the module's u_t.
        return PathSample(x_t=mu + noise, dx_t=rate * noise + (x1 - x0), t=t, x0=x0, x1=x1)

    def conditional_vector_field(
        self, x: Tensor, x1: Tensor, t: float | Tensor, *, x0: Tensor
    ) -> Tensor:
        """``u_t(x | x0, x1) = (1 - 2t) / (2 t (1 - t)) (x - mu_t) + (x1 - x0)``, all shapes
        ``(B, *shape)``; ``x0`` is keyword-only because the bridge conditions on both ends."""
        check_tensor(x, "x")
        t = self._check_pair(x0, x1, t)
        if x.shape != x1.shape:
            raise ValueError(f"x must have the shape of x1 {tuple(x1.shape)}, got {tuple(x.shape)}")
        mu, _, rate = self._moments(x0, x1, t)
        return rate * (x - mu) + (x1 - x0)
