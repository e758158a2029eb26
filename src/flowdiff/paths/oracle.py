"""Exact marginal field, score and density of Gaussian-mixture data under a Gaussian path.

If ``x1 ~ sum_k w_k N(mu_k, Sigma_k)`` and ``x_t = alpha_t x1 + beta_t x0`` with
``x0 ~ N(0, I)`` independent, then ``(x1, x_t)`` given the component ``k`` is jointly Gaussian,
and the marginal path is again a mixture (course notes, section 3: marginal probability path):

    p_t(x) = sum_k w_k N(x; alpha_t mu_k, C_kt),      C_kt = alpha_t^2 Sigma_k + beta_t^2 I.

With the posterior ``gamma_k(x) = p(k | x_t = x)`` and the per-component Gaussian regressions

    E[x1 | x_t = x, k] = mu_k + alpha_t Sigma_k C_kt^{-1} (x - alpha_t mu_k),
    E[x0 | x_t = x, k] = beta_t C_kt^{-1} (x - alpha_t mu_k),

the marginal score and vector field (the posterior-weighted conditional fields, course eq.
``u_t(x) = int u_t(x | z) p(z | x) dz``) are

    grad log p_t(x) = -sum_k gamma_k C_kt^{-1} (x - alpha_t mu_k),
    u_t(x)          = d_alpha E[x1 | x] + d_beta E[x0 | x] = d_alpha E[x1 | x] - d_beta beta_t s.

Each ``Sigma_k = U_k diag(lambda_k) U_k^T`` is diagonalised once, so ``C_kt^{-1}`` is a
rescaling in the eigenbasis at every t. ``C_kt`` stays positive definite on all of ``[0, 1]``
(it is ``I`` at t=0 and ``Sigma_k`` at t=1), so nothing is divided by a vanishing coefficient:
the oracle is exact at both endpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowdiff.distributions import GaussianMixture
from flowdiff.dynamics import ODE, SDE, FunctionSDE
from flowdiff.paths.affine import GaussianPath
from flowdiff.paths.schedules import Schedule, ScheduleValues
from flowdiff.utils import check_tensor, expand_like

__all__ = ["GaussianMixtureOracle"]


class GaussianMixtureOracle(ODE):
    """Ground truth for a :class:`GaussianMixture` data distribution under a Gaussian path.

    The oracle is itself a ``flowdiff.dynamics.ODE`` whose ``drift`` is the marginal vector
    field, so ``simulate(oracle, noise, ts)`` transports ``p_init`` onto the mixture;
    :meth:`sde` gives the SDE with the same marginals for any diffusion ``sigma_t``.

    Args:
        mixture: the data distribution, ``(B, D)`` points, full covariances allowed.
        path: a :class:`GaussianPath` (or a schedule / schedule name to build one).
    """

    def __init__(
        self, mixture: GaussianMixture, path: GaussianPath | Schedule | str = "linear"
    ) -> None:
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        if isinstance(path, (Schedule, str)):
            path = GaussianPath(path)
        if not isinstance(path, GaussianPath):
            raise TypeError(
                f"path must be a GaussianPath (source N(0, I)), got {type(path).__name__}"
            )
        self.mixture, self.path = mixture, path
        # Eigen-decomposition in float64 once; cast to the query dtype on use.
        eigvals, eigvecs = torch.linalg.eigh(mixture.covs.to(torch.float64))
        self._eigvals, self._eigvecs = eigvals, eigvecs  # (K, D), (K, D, D) columns = U_k
        self._means = mixture.means.to(torch.float64)
        self._log_weights = mixture.weights.to(torch.float64).log()

    # ------------------------------------------------------------------ core computation
    def _components(self, x: Tensor, t: float | Tensor) -> tuple[ScheduleValues, Tensor, Tensor]:
        """Schedule at t ``(B, 1)``, ``log w_k + log N(x; alpha mu_k, C_kt)`` ``(B, K)`` and the
        whitened residual ``diag(1/var) U_k^T (x - alpha mu_k)`` ``(B, K, D)``."""
        check_tensor(x, "x")
        if x.dim() != 2 or x.shape[1] != self.mixture.dim:
            raise ValueError(f"x must have shape (B, {self.mixture.dim}), got {tuple(x.shape)}")
        _, c = self.path.coefficients(t, x)
        alpha, beta = c.alpha[:, :, None], c.beta[:, :, None]  # (B, 1, 1)
        means, eigvals, eigvecs = (p.to(x) for p in (self._means, self._eigvals, self._eigvecs))
        resid = x[:, None, :] - alpha * means  # (B, K, D)
        coords = torch.einsum("kdi,bkd->bki", eigvecs, resid)  # U_k^T resid
        var = alpha**2 * eigvals + beta**2  # eigenvalues of C_kt, (B, K, D)
        log_norm = -0.5 * ((coords**2 / var) + var.log()).sum(-1)
        log_comp = (
            self._log_weights.to(x) + log_norm - 0.5 * self.mixture.dim * math.log(2 * math.pi)
        )
        return c, log_comp, coords / var

    def _score_and_denoiser(
        self, x: Tensor, t: float | Tensor
    ) -> tuple[ScheduleValues, Tensor, Tensor]:
        """Schedule ``(B, 1)``, ``grad log p_t(x)`` and ``E[x1 | x_t = x]``, both ``(B, D)``."""
        c, log_comp, whitened = self._components(x, t)
        gamma = torch.softmax(log_comp, dim=1)[:, :, None]  # posterior p(k | x), (B, K, 1)
        eigvals, eigvecs = self._eigvals.to(x), self._eigvecs.to(x)
        # C^{-1} r = U (whitened); Sigma C^{-1} r = U (lambda * whitened)
        score = -torch.einsum("kdi,bki->bd", eigvecs, gamma * whitened)
        shrink = torch.einsum("kdi,bki->bd", eigvecs, gamma * eigvals * whitened)
        denoised = gamma.squeeze(2) @ self._means.to(x) + c.alpha * shrink
        return c, score, denoised

    # ------------------------------------------------------------------ public API
    def log_prob(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``log p_t(x)`` of the marginal path, ``x (B, D)`` -> ``(B,)``."""
        _, log_comp, _ = self._components(x, t)
        return torch.logsumexp(log_comp, dim=1)

    def score(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Marginal score ``grad_x log p_t(x)``, ``(B, D)``."""
        return self._score_and_denoiser(x, t)[1]

    def posterior_mean(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``E[x1 | x_t = x]``, the ideal ``x1``-prediction (denoiser), ``(B, D)``."""
        return self._score_and_denoiser(x, t)[2]

    def _field_and_score(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """``u_t(x)`` and ``grad log p_t(x)`` from one posterior computation, both ``(B, D)``."""
        c, score, denoised = self._score_and_denoiser(x, t)
        return c.d_alpha * denoised - c.d_beta * c.beta * score, score

    def vector_field(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Marginal vector field ``u_t(x) = d_alpha E[x1 | x] - d_beta beta_t grad log p_t(x)``,
        ``(B, D)``: the field whose flow maps ``N(0, I)`` at t=0 onto the mixture at t=1."""
        return self._field_and_score(x, t)[0]

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``flowdiff.dynamics.ODE`` drift: the marginal vector field."""
        return self.vector_field(x, t)

    def sde(self, sigma: float | Callable[[Tensor], Tensor]) -> SDE:
        """The SDE ``dX = [u_t(X) + sigma_t^2 / 2 grad log p_t(X)] dt + sigma_t dW`` (course
        notes, SDE extension trick): for every ``sigma_t >= 0`` it has the same marginals
        ``p_t`` as the ODE.

        Args:
            sigma: a constant ``>= 0`` or a function ``sigma(t (B,)) -> (B,)``.
        """

        def drift(x: Tensor, t: Tensor) -> Tensor:
            field, score = self._field_and_score(x, t)
            return field + 0.5 * sde.diffusion(x, t) ** 2 * score

        def diffusion_of_t(x: Tensor, t: Tensor) -> Tensor:
            return expand_like(sigma(t), x)  # type: ignore[operator]

        # FunctionSDE validates a constant sigma; the noise never depends on x.
        sde = FunctionSDE(drift, diffusion_of_t if callable(sigma) else sigma, additive_noise=True)
        return sde
