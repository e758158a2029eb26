"""Gaussian mixtures with exact ``log_prob``, ``score`` and ``sample``.

They are the data of the course's worked examples, and, under a Gaussian probability path, the
one case whose marginal vector field and score are known in closed form (``paths``), which makes
them the ground truth for tests, benchmarks and plots.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowdiff.utils import (
    check_finite,
    check_positive,
    check_real,
    check_tensor,
    positive_int,
    randn,
)

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """``sum_k w_k N(means[k], covs[k])`` on vectors ``(B, D)``.

    Args:
        means: ``(K, D)``.
        covs: ``(K, D, D)`` positive definite, or ``(K,)`` / a float for isotropic
            components ``std_k^2 I`` given as *variances*.
        weights: ``(K,)`` non-negative, normalised here; uniform by default.
    """

    def __init__(
        self,
        means: Tensor,
        covs: Tensor | float,
        weights: Tensor | None = None,
    ) -> None:
        means = torch.as_tensor(means, dtype=torch.get_default_dtype())
        if means.dim() != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        check_finite(means, "means")
        k, d = means.shape
        covs = check_finite(torch.as_tensor(covs, dtype=means.dtype), "covs")
        if covs.dim() <= 1:
            variances = covs.expand(k) if covs.dim() == 0 else covs
            if variances.shape != (k,):
                raise ValueError(f"isotropic covs must have shape ({k},), got {tuple(covs.shape)}")
            if not (variances > 0).all():
                raise ValueError(
                    f"isotropic covs are variances and must be positive, got {variances.tolist()}"
                )
            covs = variances[:, None, None] * torch.eye(d, dtype=means.dtype)
        if tuple(covs.shape) != (k, d, d):
            raise ValueError(f"covs must have shape ({k}, {d}, {d}), got {tuple(covs.shape)}")
        chol, info = torch.linalg.cholesky_ex(covs)
        if bool((info != 0).any()):
            raise ValueError("every covariance must be positive definite")
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=means.dtype)
        weights = torch.as_tensor(weights, dtype=means.dtype)
        # NaN fails every comparison, so a non-finite weight is caught by the sum test
        if weights.shape != (k,) or bool((weights < 0).any()) or not float(weights.sum()) > 0:
            raise ValueError(f"weights must be ({k},) non-negative with a positive sum")
        self.means, self.covs, self.chol = means, covs, chol
        self.weights = weights / weights.sum()
        self.event_shape = (d,)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def symmetric_2d(
        cls, n_modes: int = 8, radius: float = 4.0, std: float = 0.5, *, angle: float = 0.0
    ) -> GaussianMixture:
        """Equal-weight isotropic modes evenly spaced on a circle (the course's 'symmetric' toy).

        Args:
            n_modes: number of modes, an int >= 1. radius: finite circle radius.
            std: positive finite standard deviation of every mode. angle: of the first mode.
        """
        n_modes = positive_int(n_modes, "n_modes")
        radius, angle = check_real(radius, "radius"), check_real(angle, "angle")
        std = check_positive(std, "std")
        theta = angle + 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes
        means = radius * torch.stack([theta.cos(), theta.sin()], dim=1)
        return cls(means.to(torch.get_default_dtype()), std**2)

    @classmethod
    def random_2d(
        cls,
        n_modes: int = 5,
        scale: float = 10.0,
        std: float = 1.0,
        *,
        generator: torch.Generator | None = None,
    ) -> GaussianMixture:
        """Isotropic modes, means uniform in ``[-scale, scale]^2`` (the course's 'random' toy).

        Args:
            n_modes: number of modes, an int >= 1. scale: positive finite half-width of the box.
            std: positive finite standard deviation of every mode. generator: draws the means.
        """
        n_modes = positive_int(n_modes, "n_modes")
        scale, std = check_positive(scale, "scale"), check_positive(std, "std")
        u = torch.rand((n_modes, 2), generator=generator, dtype=torch.float64)
        means = (2 * u - 1) * scale
        return cls(means.to(torch.get_default_dtype()), std**2)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.event_shape[0]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> Tensor:
        """Mixture mean ``(D,)``."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Mixture covariance ``(D, D)`` (within plus between components)."""
        mu = self.mean()
        diff = self.means - mu
        within = torch.einsum("k,kij->ij", self.weights, self.covs)
        between = torch.einsum("k,ki,kj->ij", self.weights, diff, diff)
        return within + between

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` samples ``(n, D)``; with ``return_labels`` also the component ``(n,)``.

        ``n`` must be an int >= 1."""
        positive_int(n, "n")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        labels = torch.multinomial(
            self.weights.to(gen_device), n, replacement=True, generator=generator
        )
        z = randn((n, self.dim), generator=generator, device=gen_device, dtype=self.means.dtype)
        x = self.means.to(gen_device)[labels] + torch.einsum(
            "nij,nj->ni", self.chol.to(gen_device)[labels], z
        )
        x = x.to(device=device, dtype=dtype or torch.get_default_dtype())
        return (x, labels.to(x.device)) if return_labels else x

    # ------------------------------------------------------------------ densities
    def _check(self, x: Tensor) -> Tensor:
        check_tensor(x, "x", min_dim=2)
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        return x

    def component_log_prob(self, x: Tensor) -> Tensor:
        """``log w_k + log N(x; mu_k, Sigma_k)``, shape ``(B, K)``."""
        self._check(x)
        diff = (x[:, None, :] - self.means.to(x)).unsqueeze(-1)  # (B, K, D, 1)
        chol = self.chol.to(x)
        z = torch.linalg.solve_triangular(chol.expand(x.shape[0], -1, -1, -1), diff, upper=False)
        maha = (z.squeeze(-1) ** 2).sum(-1)
        half_logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_norm = -half_logdet - 0.5 * self.dim * math.log(2 * math.pi)
        return torch.log(self.weights.to(x)) - 0.5 * maha + log_norm

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)``, shape ``(B,)``."""
        return torch.logsumexp(self.component_log_prob(x), dim=1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior ``p(k | x)``, shape ``(B, K)``."""
        return torch.softmax(self.component_log_prob(x), dim=1)

    def score(self, x: Tensor) -> Tensor:
        """Exact ``grad_x log p(x) = sum_k p(k|x) * (-Sigma_k^{-1} (x - mu_k))``, ``(B, D)``."""
        resp = self.responsibilities(x)
        diff = (x[:, None, :] - self.means.to(x)).unsqueeze(-1)
        comp_scores = -torch.cholesky_solve(diff, self.chol.to(x)).squeeze(-1)  # (B, K, D)
        return (resp.unsqueeze(-1) * comp_scores).sum(1)
