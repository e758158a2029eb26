"""Gaussian densities: the usual ``p_init`` and the components of a mixture.

Every density here works on batches ``(B, *event_shape)`` and exposes ``sample``, ``log_prob``
and ``score`` (``grad_x log p(x)``), the three things the notes ask of ``p_init``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from flowdiff.utils import check_positive, check_tensor, positive_int, randn, shape_tuple, sum_event

__all__ = ["Gaussian", "IsotropicGaussian"]


class IsotropicGaussian:
    """``N(mean, std^2 I)`` over tensors of any event shape; ``N(0, I)`` by default.

    Args:
        event_shape: shape of one sample, e.g. ``2``, ``(3, 8, 8)`` or ``(N, 3)``.
        mean: scalar or tensor broadcastable to ``event_shape``.
        std: positive scalar standard deviation.
    """

    def __init__(
        self, event_shape: int | Sequence[int], mean: float | Tensor = 0.0, std: float = 1.0
    ) -> None:
        self.event_shape = shape_tuple(event_shape, "event_shape")
        self.std = check_positive(std, "std")
        self.mean = torch.as_tensor(mean, dtype=torch.get_default_dtype())
        try:
            torch.broadcast_shapes(self.mean.shape, self.event_shape)
        except RuntimeError as err:
            raise ValueError(
                f"mean of shape {tuple(self.mean.shape)} does not broadcast to "
                f"event_shape {self.event_shape}"
            ) from err

    @property
    def dim(self) -> int:
        """Number of scalar coordinates in one sample."""
        return math.prod(self.event_shape)

    def _check(self, x: Tensor) -> Tensor:
        check_tensor(x, "x")
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x must have shape (B, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )
        return x

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``n`` samples (an int >= 1), shape ``(n, *event_shape)``."""
        z = randn(
            (positive_int(n, "n"), *self.event_shape),
            generator=generator,
            device=device,
            dtype=dtype,
        )
        return self.mean.to(z) + self.std * z

    def log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; mean, std^2 I)``, shape ``(B,)``."""
        self._check(x)
        z = (x - self.mean.to(x)) / self.std
        return -0.5 * sum_event(z**2) - self.dim * (
            math.log(self.std) + 0.5 * math.log(2 * math.pi)
        )

    def score(self, x: Tensor) -> Tensor:
        """``grad_x log p(x) = -(x - mean) / std^2``, shaped like ``x``."""
        self._check(x)
        return -(x - self.mean.to(x)) / self.std**2


class Gaussian:
    """Full-covariance Gaussian ``N(mean, cov)`` on vectors ``(B, D)``.

    Args:
        mean: ``(D,)``.
        cov: ``(D, D)`` symmetric positive definite.
    """

    def __init__(self, mean: Tensor, cov: Tensor) -> None:
        mean = torch.as_tensor(mean, dtype=torch.get_default_dtype())
        cov = torch.as_tensor(cov, dtype=mean.dtype)
        if mean.dim() != 1:
            raise ValueError(f"mean must have shape (D,), got {tuple(mean.shape)}")
        d = mean.shape[0]
        if tuple(cov.shape) != (d, d):
            raise ValueError(
                f"cov must have shape ({d}, {d}) to match mean, got {tuple(cov.shape)}"
            )
        if not torch.allclose(cov, cov.T, atol=1e-6 * float(cov.abs().max().clamp_min(1.0))):
            raise ValueError("cov must be symmetric")
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:
            raise ValueError("cov must be positive definite (Cholesky factorisation failed)")
        self.mean, self.cov, self.chol = mean, cov, chol
        self.event_shape = (d,)

    @property
    def dim(self) -> int:
        return self.event_shape[0]

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``n`` samples ``mean + L z`` (``n`` an int >= 1), shape ``(n, D)``."""
        z = randn((positive_int(n, "n"), self.dim), generator=generator, device=device, dtype=dtype)
        return self.mean.to(z) + z @ self.chol.to(z).T

    def _whiten(self, x: Tensor) -> Tensor:
        check_tensor(x, "x", min_dim=2)
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        diff = (x - self.mean.to(x)).unsqueeze(-1)
        return torch.linalg.solve_triangular(self.chol.to(x), diff, upper=False).squeeze(-1)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; mean, cov)``, shape ``(B,)``."""
        z = self._whiten(x)
        half_logdet = torch.log(torch.diagonal(self.chol.to(x))).sum()
        return -0.5 * (z**2).sum(-1) - half_logdet - 0.5 * self.dim * math.log(2 * math.pi)

    def score(self, x: Tensor) -> Tensor:
        """``grad_x log p(x) = -cov^{-1} (x - mean)``, shape ``(B, D)``."""
        z = self._whiten(x)
        return -torch.linalg.solve_triangular(
            self.chol.to(x).T, z.unsqueeze(-1), upper=True
        ).squeeze(-1)
