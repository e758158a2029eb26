"""Exact marginal field, score and density of Gaussian-mixture data under an affine path from a
Gaussian or Gaussian-mixture source.

If ``x1 ~ sum_k w_k N(mu_k, Sigma_k)``, ``x0 ~ sum_l v_l N(m_l, S_l)`` independent (``N(0, I)``,
i.e. ``L = 1``, for a Gaussian path) and ``x_t = alpha_t x1 + beta_t x0``, then ``(x1, x0, x_t)``
given the pair of components ``(k, l)`` is jointly Gaussian, and the marginal path is a mixture
of ``K L`` Gaussians (course notes, section 3: marginal probability path):

    p_t(x) = sum_kl w_k v_l N(x; alpha_t mu_k + beta_t m_l, C_klt),
    C_klt  = alpha_t^2 Sigma_k + beta_t^2 S_l.

With the posterior ``gamma_kl(x) = p(k, l | x_t = x)``, the residual ``r = x - alpha_t mu_k -
beta_t m_l`` and the per-pair Gaussian regressions

    E[x1 | x_t = x, k, l] = mu_k + alpha_t Sigma_k C_klt^{-1} r,
    E[x0 | x_t = x, k, l] = m_l  + beta_t  S_l     C_klt^{-1} r,

the marginal score and vector field (the posterior-weighted conditional fields, course eq.
``u_t(x) = int u_t(x | z) p(z | x) dz``) are

    grad log p_t(x) = -sum_kl gamma_kl C_klt^{-1} r,
    u_t(x)          = d_alpha E[x1 | x] + d_beta E[x0 | x]
                    = d_alpha E[x1 | x] + d_beta E[m_l | x] + (beta_t d_beta_t) E[S_l C^{-1} r | x].

The last form multiplies ``S_l C^{-1} r`` by the schedule's closed-form ``beta_d_beta``, not by
``beta_t`` and ``d_beta_t`` separately: at t=1 ``beta_t = 0`` while ``d_beta_t`` is unbounded for
the ``sqrt``, ``vp`` and ``linear_vp`` schedules, and only their product has a finite limit. For
the standard normal source this is ``u_t = d_alpha E[x1 | x] - beta_t d_beta_t grad log p_t``.

Each pair is diagonalised once: with ``S_l = L_l L_l^T`` and ``L_l^{-1} Sigma_k L_l^{-T} = U
diag(lambda) U^T``, ``A = L_l U`` gives ``Sigma_k = A diag(lambda) A^T``, ``S_l = A A^T`` and
``C_klt = A diag(alpha_t^2 lambda + beta_t^2) A^T``, so ``C_klt^{-1}`` is a rescaling in fixed
coordinates at every t (``A = U``, the eigenvectors of ``Sigma_k``, for the standard normal
source). ``C_klt`` stays positive definite on all of ``[0, 1]`` (it is ``S_l`` at t=0 and
``Sigma_k`` at t=1), so nothing is divided by a vanishing coefficient: score, density and field
are exact at both endpoints (the field is unbounded only where the schedule's velocity is, i.e.
``d_beta E[m_l | x]`` at t=1 for a source with non-zero means on those three schedules, and
``polynomial`` with ``n < 1`` at t=0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowdiff.distributions import GaussianMixture
from flowdiff.dynamics import ODE, SDE, FunctionSDE
from flowdiff.paths.affine import AffinePath, GaussianPath
from flowdiff.paths.schedules import Schedule, ScheduleValues
from flowdiff.utils import check_tensor, expand_like

__all__ = ["GaussianMixtureOracle"]


class GaussianMixtureOracle(ODE):
    """Ground truth for a :class:`GaussianMixture` data distribution under an affine path.

    The oracle is itself a ``flowdiff.dynamics.ODE`` whose ``drift`` is the marginal vector
    field, so ``simulate(oracle, x0, ts)`` transports the source onto the mixture;
    :meth:`sde` gives the SDE with the same marginals for any diffusion ``sigma_t``.

    Args:
        mixture: the data distribution, ``(B, D)`` points, full covariances allowed.
        path: without ``source``, a :class:`GaussianPath` (or a schedule / schedule name to build
            one; source ``N(0, I)``). With ``source``, any :class:`AffinePath` (e.g.
            :class:`LinearPath`), or a schedule / name to build an ``AffinePath``.
        source: ``None`` (the standard normal of a Gaussian path) or a :class:`GaussianMixture`
            of ``x0``, independent of ``x1`` (the independent coupling).
    """

    def __init__(
        self,
        mixture: GaussianMixture,
        path: AffinePath | Schedule | str = "linear",
        *,
        source: GaussianMixture | None = None,
    ) -> None:
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        if source is None:
            if isinstance(path, (Schedule, str)):
                path = GaussianPath(path)
            if not isinstance(path, GaussianPath):
                raise TypeError(
                    f"path must be a GaussianPath (source N(0, I)), got {type(path).__name__}; "
                    "pass source= for another source"
                )
            d = mixture.dim
            source = GaussianMixture(torch.zeros(1, d, dtype=torch.float64), 1.0)
        else:
            if not isinstance(source, GaussianMixture):
                raise TypeError(f"source must be a GaussianMixture, got {type(source).__name__}")
            if source.dim != mixture.dim:
                raise ValueError(
                    f"source and mixture must have the same dimension, got {source.dim} "
                    f"and {mixture.dim}"
                )
            if isinstance(path, (Schedule, str)):
                path = AffinePath(path, source=source)
            if isinstance(path, GaussianPath) or not isinstance(path, AffinePath):
                raise TypeError(
                    "with a source, path must be an AffinePath or LinearPath (a GaussianPath "
                    f"fixes the source to N(0, I)), got {type(path).__name__}"
                )
        self.mixture, self.source, self.path = mixture, source, path
        self._prepare()

    def _prepare(self) -> None:
        """Per pair ``(k, l)``, flattened to ``p = k L + l``, in float64 (cast on use): means,
        ``A`` and ``G = A^{-T}``, eigenvalues ``lambda``, ``log w_k v_l`` and ``log det L_l``."""
        f64 = torch.float64
        covs1, covs0 = self.mixture.covs.to(f64), self.source.covs.to(f64)
        chol0 = torch.linalg.cholesky(covs0)  # (L, D, D)
        eye = torch.eye(self.mixture.dim, dtype=f64)
        chol0_inv = torch.linalg.solve_triangular(chol0, eye.expand_as(chol0), upper=False)
        # whitened data covariances L_l^{-1} Sigma_k L_l^{-T}, (K, L, D, D)
        whitened = chol0_inv[None] @ covs1[:, None] @ chol0_inv.transpose(-1, -2)[None]
        eigvals, eigvecs = torch.linalg.eigh(whitened)
        n_pairs = eigvals.shape[0] * eigvals.shape[1]
        self._eigvals = eigvals.reshape(n_pairs, -1)  # (P, D)
        self._a = (chol0[None] @ eigvecs).reshape(n_pairs, *eye.shape)  # A = L U
        # A^{-T} = L^{-T} U (U orthogonal)
        self._g = (chol0_inv.transpose(-1, -2)[None] @ eigvecs).reshape(n_pairs, *eye.shape)
        k, l = self.mixture.n_components, self.source.n_components
        self._means1 = self.mixture.means.to(f64).repeat_interleave(l, 0)  # (P, D)
        self._means0 = self.source.means.to(f64).repeat(k, 1)
        log_w = self.mixture.weights.to(f64).log()[:, None] + self.source.weights.to(f64).log()
        half_logdet0 = torch.diagonal(chol0, dim1=-2, dim2=-1).log().sum(-1)  # (L,)
        self._log_norm = (log_w - half_logdet0).reshape(n_pairs)

    # ------------------------------------------------------------------ core computation
    def _components(self, x: Tensor, t: float | Tensor) -> tuple[ScheduleValues, Tensor, Tensor]:
        """Schedule at t ``(B, 1)``, ``log w_k v_l + log N(x; alpha mu_k + beta m_l, C_klt)``
        ``(B, P)`` and the whitened residual ``diag(1/var) A^{-1} r`` ``(B, P, D)``."""
        check_tensor(x, "x")
        if x.dim() != 2 or x.shape[1] != self.mixture.dim:
            raise ValueError(f"x must have shape (B, {self.mixture.dim}), got {tuple(x.shape)}")
        _, c = self.path.coefficients(t, x)
        alpha, beta = c.alpha[:, :, None], c.beta[:, :, None]  # (B, 1, 1)
        means1, means0 = self._means1.to(x), self._means0.to(x)
        resid = x[:, None, :] - alpha * means1 - beta * means0  # (B, P, D)
        coords = torch.einsum("pdi,bpd->bpi", self._g.to(x), resid)  # A^{-1} r = G^T r
        var = alpha**2 * self._eigvals.to(x) + beta**2  # eigenvalues of C_klt in A's frame
        log_norm = -0.5 * ((coords**2 / var) + var.log()).sum(-1)
        log_comp = self._log_norm.to(x) + log_norm - 0.5 * self.mixture.dim * math.log(2 * math.pi)
        return c, log_comp, coords / var

    def _posterior(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``u_t(x)``, ``grad log p_t(x)``, ``E[x1 | x_t = x]`` and ``E[x0 | x_t = x]``, each
        ``(B, D)``, from one posterior computation."""
        c, log_comp, whitened = self._components(x, t)
        gamma = torch.softmax(log_comp, dim=1)  # posterior p(k, l | x), (B, P)
        a, g = self._a.to(x), self._g.to(x)
        weighted = gamma[:, :, None] * whitened
        # C^{-1} r = G w, Sigma_k C^{-1} r = A (lambda w), S_l C^{-1} r = A w  (w = whitened)
        score = -torch.einsum("pdi,bpi->bd", g, weighted)
        shrink1 = torch.einsum("pdi,bpi->bd", a, self._eigvals.to(x) * weighted)
        shrink0 = torch.einsum("pdi,bpi->bd", a, weighted)
        mean1, mean0 = gamma @ self._means1.to(x), gamma @ self._means0.to(x)
        denoised = mean1 + c.alpha * shrink1
        source_mean = mean0 + c.beta * shrink0
        field = c.d_alpha * denoised + c.d_beta * mean0 + c.beta_d_beta * shrink0
        return field, score, denoised, source_mean

    # ------------------------------------------------------------------ public API
    def log_prob(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``log p_t(x)`` of the marginal path, ``x (B, D)`` -> ``(B,)``."""
        _, log_comp, _ = self._components(x, t)
        return torch.logsumexp(log_comp, dim=1)

    def score(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Marginal score ``grad_x log p_t(x)``, ``(B, D)``."""
        return self._posterior(x, t)[1]

    def posterior_mean(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``E[x1 | x_t = x]``, the ideal ``x1``-prediction (denoiser), ``(B, D)``."""
        return self._posterior(x, t)[2]

    def source_posterior_mean(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``E[x0 | x_t = x]``, the ideal ``epsilon``-prediction, ``(B, D)``."""
        return self._posterior(x, t)[3]

    def vector_field(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Marginal vector field ``u_t(x) = d_alpha E[x1 | x] + d_beta E[x0 | x]`` (module
        notes), ``(B, D)``: the field whose flow maps the source at t=0 onto the mixture at t=1."""
        return self._posterior(x, t)[0]

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``flowdiff.dynamics.ODE`` drift: the marginal vector field."""
        return self.vector_field(x, t)

    def sde(self, sigma: float | Callable[[Tensor], Tensor]) -> SDE:
        """The SDE ``dX = [u_t(X) + sigma_t^2 / 2 grad log p_t(X)] dt + sigma_t dW`` (course
        notes, SDE extension trick): for every ``sigma_t >= 0`` it has the same marginals
        ``p_t`` as the ODE (the Fokker-Planck argument needs only the marginal path, so this
        holds for a mixture source too).

        Args:
            sigma: a constant ``>= 0`` or a function ``sigma(t (B,)) -> (B,)``.
        """

        def drift(x: Tensor, t: Tensor) -> Tensor:
            field, score, _, _ = self._posterior(x, t)
            return field + 0.5 * sde.diffusion(x, t) ** 2 * score

        def diffusion_of_t(x: Tensor, t: Tensor) -> Tensor:
            return expand_like(sigma(t), x)  # type: ignore[operator]

        # FunctionSDE validates a constant sigma; the noise never depends on x.
        sde = FunctionSDE(drift, diffusion_of_t if callable(sigma) else sigma, additive_noise=True)
        return sde
