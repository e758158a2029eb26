"""Denoising diffusion probabilistic model (Ho, Jain & Abbeel, 2020).

DDPM counts steps the other way round from the notes: ``x_0`` is *data* and ``x_K`` (``K`` steps,
Ho et al.'s ``T``) is nearly pure noise. The forward chain adds Gaussian noise with variances
``beta_1 < ... < beta_K``::

    q(x_k | x_{k-1}) = N(sqrt(1 - beta_k) x_{k-1}, beta_k I)                        (Ho eq. 2)
    q(x_k | x_0)     = N(sqrt(abar_k) x_0, (1 - abar_k) I)                          (eq. 4)

with ``abar_k = prod_{j <= k} (1 - beta_j)``.

A network ``eps_theta(x_k, k/K)`` predicts the noise in ``x_k = sqrt(abar_k) x_0 +
sqrt(1 - abar_k) eps`` (loss ``L_simple``, Algorithm 1), which parameterises the learned reverse
chain ``p(x_{k-1} | x_k) = N(mu_theta(x_k, k), sigma_k^2 I)`` with

    mu_theta = (x_k - beta_k / sqrt(1 - abar_k) * eps_theta) / sqrt(1 - beta_k)    (eq. 11)

and ``sigma_k^2 = beta_k`` or the posterior variance ``(1 - abar_{k-1}) / (1 - abar_k) beta_k``;
sampling runs it from ``x_K ~ N(0, I)`` (ancestral sampling, Algorithm 2).

Link to the continuous-time model of the notes (t=0 noise, t=1 data): step ``k`` is time
``t = 1 - k/K`` and ``q(x_k | x_0)`` is the Gaussian path ``x_t = alpha_t x_1 + beta_t x_0`` with
``alpha_t^2 = abar_k`` and ``beta_t^2 = 1 - abar_k`` (``alpha_t^2 + beta_t^2 = 1``: variance
preserving; DDPM's ``beta_k`` is a noise variance, not the path's ``beta_t``). With
``beta_k = b(k/K) / K`` and ``K -> inf`` the forward chain becomes the VP SDE
``dX_s = -b(s)/2 X_s ds + sqrt(b(s)) dW_s`` in ``s = 1 - t`` (Song et al. 2021, eq. 11) and
``abar_k -> exp(-int_0^s b)``; the linear schedule 1e-4..0.02 over ``K = 1000`` is
``b(s) = 0.1 + 19.9 s``. The noise prediction is a scaled score, ``grad log p_t(x) =
-eps_theta / beta_t``, and ``eps`` is the source sample ``x_0`` of the notes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from flowdiff import nets
from flowdiff.distributions import IsotropicGaussian
from flowdiff.models.base import GenerativeModel
from flowdiff.models.path_model import default_net_config
from flowdiff.utils import check_name, event_dims, expand_like, positive_int, randn, sum_event

__all__ = ["DDPM", "ddpm_betas"]

SCHEDULES = ("linear", "cosine")
VARIANCES = ("beta", "posterior")


def ddpm_betas(
    num_steps: int,
    schedule: str = "linear",
    *,
    beta_start: float | None = None,
    beta_end: float | None = None,
    cosine_offset: float = 0.008,
) -> Tensor:
    """Noise variances ``beta_1..beta_K`` of the forward chain, float64 ``(K,)``.

    ``"linear"``: evenly spaced from ``beta_start`` to ``beta_end``; by default Ho et al.'s
    ``1e-4 .. 0.02`` for ``K = 1000``, scaled by ``1000 / K`` for other ``K`` (as in Nichol &
    Dhariwal's code) so that every ``K`` discretises the same VP SDE ``b(s) = 0.1 + 19.9 s`` and
    ``abar_K`` stays near 0. ``"cosine"``: ``abar_k = f(k) / f(0)``,
    ``f(k) = cos((k/K + s) / (1 + s) * pi/2)^2`` with ``s = cosine_offset`` and
    ``beta_k = 1 - abar_k / abar_{k-1}`` clipped at 0.999 (Nichol & Dhariwal 2021, eq. 17), so
    that the last step stays a proper Gaussian transition.
    """
    positive_int(num_steps, "num_steps")
    check_name(schedule, SCHEDULES, "schedule")
    if schedule == "linear":
        beta_start = 1e-4 * 1000 / num_steps if beta_start is None else beta_start
        beta_end = 0.02 * 1000 / num_steps if beta_end is None else beta_end
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start!r}, "
                f"beta_end={beta_end!r} (num_steps={num_steps}; the default ends are "
                "1e-4 and 0.02 scaled by 1000 / num_steps, so num_steps must be >= 21)"
            )
        return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    k = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos((k / num_steps + cosine_offset) / (1 + cosine_offset) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)


class DDPM(GenerativeModel):
    """Discrete-time diffusion with noise prediction and ancestral sampling (kind ``"ddpm"``).

    Args:
        event_shape: shape of one sample.
        num_steps: ``K``, the number of noising steps.
        schedule: ``"linear"`` or ``"cosine"`` (see :func:`ddpm_betas`).
        beta_start, beta_end: ends of the linear schedule (``None``: ``1e-4`` and ``0.02``
            scaled by ``1000 / num_steps``).
        variance: reverse-step variance ``sigma_k^2``: ``"beta"`` (``beta_k``) or
            ``"posterior"`` (``beta~_k``, the variance of ``q(x_{k-1} | x_k, x_0)``); Ho et al.
            section 3.2 find both work. At ``k = 1`` ``beta~_1 = 0``, so ``sigma_1^2 = beta_1``
            for both (it only enters the decoder term of :meth:`elbo`).
        net: the noise predictor ``net(x, t) -> like x`` with ``t = k/K``: a module with a
            JSON ``.config``, a ``flowdiff.nets`` config dict, or ``None`` for the default
            (the flow models' ``default_net_config``: a U-Net for images, else an MLP).
    """

    kind = "ddpm"

    def __init__(
        self,
        event_shape: int | tuple[int, ...],
        *,
        num_steps: int = 1000,
        schedule: str = "linear",
        beta_start: float | None = None,
        beta_end: float | None = None,
        variance: str = "beta",
        net: nn.Module | dict[str, Any] | None = None,
    ) -> None:
        super().__init__(event_shape)
        check_name(variance, VARIANCES, "variance")
        betas = ddpm_betas(num_steps, schedule, beta_start=beta_start, beta_end=beta_end)
        self.num_steps = num_steps
        self.schedule = schedule
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.variance = variance
        if net is None:
            net = default_net_config(self.event_shape, None)
        if isinstance(net, dict):
            net = nets.build(net)
        elif not isinstance(net, nn.Module):
            raise TypeError(
                f"net must be an nn.Module, a config dict or None, got {type(net).__name__}"
            )
        self.net = net
        self.prior = IsotropicGaussian(self.event_shape)  # p(x_K), where sampling starts

        # Every table has an entry for k = 0 (beta_0 = 0, abar_0 = 1) so that index k is step k.
        # Computed in float64: abar_K is a product of 1000 factors.
        betas = torch.cat([betas.new_zeros(1), betas])
        alpha_bars = torch.cumprod(1 - betas, dim=0)
        posterior_var = torch.zeros_like(betas)
        posterior_var[1:] = (1 - alpha_bars[:-1]) / (1 - alpha_bars[1:]) * betas[1:]
        sigma2 = betas.clone() if variance == "beta" else posterior_var.clone()
        sigma2[1] = betas[1]
        dtype = torch.get_default_dtype()
        for name, value in {
            "betas": betas,
            "alpha_bars": alpha_bars,
            "posterior_variances": posterior_var,
            "reverse_variances": sigma2,
        }.items():
            # Derived from the config, so not part of the saved weights.
            self.register_buffer(name, value.to(dtype), persistent=False)

    def config(self) -> dict[str, Any]:
        net_config = getattr(self.net, "config", None)
        if not isinstance(net_config, dict):
            raise TypeError(
                f"this DDPM's net ({type(self.net).__name__}) has no flowdiff.nets config, so the "
                "model cannot be described (saved); build the net with flowdiff.nets"
            )
        return {
            "event_shape": list(self.event_shape),
            "num_steps": self.num_steps,
            "schedule": self.schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "variance": self.variance,
            "net": net_config,
        }

    # ------------------------------------------------------------------ helpers
    def _steps(self, k: int | Tensor, batch_size: int, *, low: int = 1) -> Tensor:
        """Normalise a step index to a long tensor ``(B,)`` with values in ``[low, K]``."""
        if isinstance(k, Tensor):
            if k.is_floating_point() or k.is_complex():
                raise TypeError(f"k must hold integer steps, got dtype {k.dtype}")
            if k.dim() == 0 or k.numel() == 1:
                k = k.reshape(()).expand(batch_size)
            elif k.shape != (batch_size,):
                raise ValueError(
                    f"k must be an int or have shape ({batch_size},), got {tuple(k.shape)}"
                )
        elif isinstance(k, int) and not isinstance(k, bool):
            k = torch.full((batch_size,), k)
        else:
            raise TypeError(f"k must be an int or an integer tensor, got {type(k).__name__}")
        k = k.to(device=self.betas.device, dtype=torch.long)
        if bool(((k < low) | (k > self.num_steps)).any()):
            raise ValueError(
                f"k must lie in [{low}, {self.num_steps}], got values "
                f"{int(k.min())}..{int(k.max())}"
            )
        return k

    def _table(self, name: str, k: Tensor, like: Tensor) -> Tensor:
        """Entry ``k`` of a schedule table as ``(B, 1, ..., 1)``, to broadcast against ``like``."""
        return expand_like(getattr(self, name)[k], like).to(like.dtype)

    def predict_noise(self, x_k: Tensor, k: int | Tensor) -> Tensor:
        """``eps_theta(x_k, k/K)``, shape of ``x_k`` ``(B, *event_shape)``."""
        self.check_data(x_k, "x_k")
        k = self._steps(k, x_k.shape[0])
        eps = self.net(x_k, k.to(x_k.dtype) / self.num_steps)
        if eps.shape != x_k.shape:
            raise ValueError(
                f"net must return the shape of x {tuple(x_k.shape)}, got {tuple(eps.shape)}"
            )
        return eps

    # ------------------------------------------------------------------ forward chain
    def q_step(
        self, x_prev: Tensor, k: int | Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """One forward transition ``x_k ~ q(x_k | x_{k-1})`` (Ho eq. 2), ``(B, *event_shape)``."""
        self.check_data(x_prev, "x_prev")
        k = self._steps(k, x_prev.shape[0])
        beta = self._table("betas", k, x_prev)
        noise = randn(x_prev.shape, generator=generator, device=x_prev.device, dtype=x_prev.dtype)
        return torch.sqrt(1 - beta) * x_prev + torch.sqrt(beta) * noise

    def q_sample(
        self,
        x0: Tensor,
        k: int | Tensor,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``x_k ~ q(x_k | x_0)`` by eq. 4: ``sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps``.

        Args:
            x0: data ``(B, *event_shape)``.
            k: step in ``[0, K]``, an int or ``(B,)`` integers (``k = 0`` returns ``x0``).
            noise: ``eps`` of the shape of ``x0``; drawn with ``generator`` when ``None``.
        """
        self.check_data(x0, "x0")
        k = self._steps(k, x0.shape[0], low=0)
        if noise is None:
            noise = randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        elif noise.shape != x0.shape:
            raise ValueError(
                f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}"
            )
        abar = self._table("alpha_bars", k, x0)
        return torch.sqrt(abar) * x0 + torch.sqrt(1 - abar) * noise

    # ------------------------------------------------------------------ reverse chain
    def reverse_mean(self, x_k: Tensor, k: int | Tensor) -> Tensor:
        """``mu_theta(x_k, k)`` of the learned reverse step (Ho eq. 11), ``(B, *event_shape)``."""
        k = self._steps(k, x_k.shape[0])
        eps = self.predict_noise(x_k, k)
        beta = self._table("betas", k, x_k)
        abar = self._table("alpha_bars", k, x_k)
        return (x_k - beta / torch.sqrt(1 - abar) * eps) / torch.sqrt(1 - beta)

    def reverse_step(
        self, x_k: Tensor, k: int | Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """One ancestral step ``x_{k-1} = mu_theta(x_k, k) + sigma_k z`` (Algorithm 2, line 4).

        ``z ~ N(0, I)`` for ``k > 1`` and ``z = 0`` at ``k = 1``, whose output is the sample.
        """
        k = self._steps(k, x_k.shape[0])
        mean = self.reverse_mean(x_k, k)
        z = randn(x_k.shape, generator=generator, device=x_k.device, dtype=x_k.dtype)
        std = torch.sqrt(self._table("reverse_variances", k, x_k)) * expand_like(k > 1, x_k)
        return mean + std * z

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        denormalize: bool = True,
    ) -> Tensor:
        """Ancestral sampling (Algorithm 2): ``x_K ~ N(0, I)``, then ``K`` reverse steps.

        Returns ``(n, *event_shape)``; uses ``K`` network evaluations. ``use_ema``: use the EMA
        weights when the model has them.
        ``denormalize``: map the samples back to data units (:meth:`denormalize`).
        """
        positive_int(n, "n")
        with self.averaged(use_ema):
            x = self.prior.sample(
                n, generator=generator, device=self.betas.device, dtype=self.betas.dtype
            )
            for k in range(self.num_steps, 0, -1):
                x = self.reverse_step(x, k, generator=generator)
        return self.denormalize(x) if denormalize else x

    # ------------------------------------------------------------------ training and bound
    def loss(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        phase: str = "model",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``L_simple`` (Algorithm 1): ``mean_event |eps - eps_theta(x_k, k/K)|^2``, ``(B,)``.

        ``k ~ U{1..K}`` and ``eps ~ N(0, I)`` per sample.
        """
        check_name(phase, ["model"], "phase")
        self.check_data(x)
        self.check_labels(y, x.shape[0])
        k = torch.randint(
            1, self.num_steps + 1, (x.shape[0],), generator=generator, device=x.device
        )
        eps = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        err = (self.predict_noise(self.q_sample(x, k, noise=eps), k) - eps) ** 2
        return err.mean(dim=event_dims(x))

    @torch.no_grad()
    def elbo(
        self,
        x: Tensor,
        *,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        normalize: bool = True,
    ) -> Tensor:
        """Variational lower bound on ``log p(x)`` in nats (Ho eq. 5), ``(B, *event) -> (B,)``.

        ``-[KL(q(x_K|x_0) || N(0,I)) + sum_{k=2}^K KL(q(x_{k-1}|x_k,x_0) || p(x_{k-1}|x_k))
        - log p(x_0|x_1)]``, each term with one draw of ``x_k ~ q(x_k | x_0)`` (unbiased). For
        continuous data the decoder ``p(x_0 | x_1) = N(mu_theta(x_1, 1), beta_1 I)`` is a density
        (Ho et al. discretise it for 8-bit images). Costs ``K`` network evaluations.
        ``use_ema``: use the EMA weights when the model has them. ``normalize``: ``x`` is in
        data units (mapped by :attr:`normalization`, whose log-determinant is added, so that
        the bound is on the density of the data units, as :meth:`log_prob` is).
        """
        self.check_data(x)
        x, log_det = self.normalize_with_log_det(x) if normalize else (x, 0.0)
        with self.averaged(use_ema):
            abar_K = self.alpha_bars[self.num_steps].to(x.dtype)
            # L_K = KL(q(x_K | x_0) || N(0, I)): no parameters, but it keeps the bound a bound.
            q_K = Normal(torch.sqrt(abar_K) * x, torch.sqrt(1 - abar_K))
            bound = -sum_event(kl_divergence(q_K, Normal(0.0, 1.0)))
            for step in range(1, self.num_steps + 1):
                k = self._steps(step, x.shape[0])
                x_k = self.q_sample(x, k, generator=generator)
                p_reverse = Normal(
                    self.reverse_mean(x_k, k), torch.sqrt(self._table("reverse_variances", k, x))
                )
                if step == 1:
                    bound = bound + sum_event(p_reverse.log_prob(x))  # L_0, the decoder
                    continue
                abar = self._table("alpha_bars", k, x)
                abar_prev = self._table("alpha_bars", k - 1, x)
                beta = self._table("betas", k, x)
                # Posterior q(x_{k-1} | x_k, x_0) (Ho eqs. 6-7).
                post_mean = (
                    torch.sqrt(abar_prev) * beta / (1 - abar) * x
                    + torch.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar) * x_k
                )
                post_std = torch.sqrt(self._table("posterior_variances", k, x))
                bound = bound - sum_event(kl_divergence(Normal(post_mean, post_std), p_reverse))
            return bound + log_det

    def log_prob(
        self,
        x: Tensor,
        *,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        normalize: bool = True,
    ) -> Tensor:
        """The variational *lower bound* :meth:`elbo` on ``log p(x)`` in nats, ``(B,)``.

        DDPM has no tractable exact likelihood (its reverse chain is a latent-variable model
        over ``x_1..x_K``), so this is the bound, in expectation ``<= log p(x)``, as for the VAE
        and the latent flow: what ``flowdiff evaluate --nll`` reports for this family.
        ``normalize``: ``x`` is in data units (the normaliser's log-determinant is added).
        """
        return self.elbo(x, generator=generator, use_ema=use_ema, normalize=normalize)
