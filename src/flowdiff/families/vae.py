"""Variational autoencoder (Kingma & Welling, 2014).

A latent-variable model ``p(z) = N(0, I)``, ``p(x | z)`` given by a decoder network, trained by
maximising the evidence lower bound with a Gaussian encoder
``q(z | x) = N(mu(x), diag sigma^2(x))``:

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || N(0, I))  <=  log p(x),          (K&W eq. 3)

with equality iff ``q(z | x)`` is the exact posterior ``p(z | x)`` (the gap is
``KL(q(z | x) || p(z | x))``). The expectation is estimated with the reparameterisation
``z = mu + eps * sigma``, ``eps ~ N(0, I)`` (K&W section 2.4), so gradients flow through the sample;
the KL to the standard normal is used in closed form (K&W appendix B).

The likelihood ``p(x | z)`` is ``"gaussian"`` (decoder gives the mean, the standard deviation is a
fixed number or a learned per-coordinate parameter) or ``"bernoulli"`` (decoder gives logits; the
reconstruction term is minus the binary cross-entropy, for data in ``[0, 1]``; it is a normalised
density only for binary data).

:meth:`VAE.log_prob` is the importance-weighted bound of Burda, Grosse & Salakhutdinov (2016),
``ELBO <= L_K <= log p(x)``, which tightens to ``log p(x)`` as the number of samples ``K`` grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Normal
from torch.nn import functional as F

from flowdiff.distributions import IsotropicGaussian
from flowdiff.models.base import GenerativeModel
from flowdiff.nets import mlp
from flowdiff.utils import check_name, check_tensor, positive_int, randn

__all__ = ["VAE"]

LIKELIHOODS = ("gaussian", "bernoulli")
# Starting value of a learned decoder standard deviation, for data of unit scale (standardised,
# or images in [-1, 1]). Starting at 1 lets the decoder explain the whole data as noise, and the
# posterior collapses onto the prior for good: on 8gaussians, 2000 steps gave W2 0.55 (the fitted
# Gaussian's) from 1, but 0.30 from 0.3 (``benchmarks/bench_families.py`` settings).
_INITIAL_DECODER_STD = 0.3


class VAE(GenerativeModel):
    """Gaussian-encoder VAE with a Gaussian or Bernoulli decoder (kind ``"vae"``).

    Args:
        event_shape: shape of one sample; encoder and decoder work on the flattened event.
        latent_dim: dimension of ``z``.
        hidden: width of the encoder and decoder networks.
        depth: hidden layers of each network (``0``: linear encoder and decoder).
        likelihood: ``"gaussian"`` or ``"bernoulli"``.
        decoder_std: fixed standard deviation of the Gaussian likelihood, or ``None`` to learn one
            per coordinate (starting at 0.3). Must be ``None`` for ``"bernoulli"``.
        activation: activation of the networks.
    """

    kind = "vae"

    def __init__(
        self,
        event_shape: int | tuple[int, ...],
        *,
        latent_dim: int = 2,
        hidden: int = 128,
        depth: int = 2,
        likelihood: str = "gaussian",
        decoder_std: float | None = None,
        activation: str = "silu",
    ) -> None:
        super().__init__(event_shape)
        positive_int(latent_dim, "latent_dim")
        check_name(likelihood, LIKELIHOODS, "likelihood")
        if decoder_std is not None:
            if likelihood != "gaussian":
                raise ValueError(
                    f"decoder_std applies to the gaussian likelihood only, got decoder_std="
                    f"{decoder_std!r} with likelihood={likelihood!r}"
                )
            if isinstance(decoder_std, bool) or not (
                isinstance(decoder_std, (int, float)) and 0 < decoder_std < math.inf
            ):
                raise ValueError(
                    f"decoder_std must be a positive finite number or None, got {decoder_std!r}"
                )
            decoder_std = float(decoder_std)
        self.dim = math.prod(self.event_shape)
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.depth = depth
        self.likelihood = likelihood
        self.decoder_std = decoder_std
        self.activation = activation
        self.encoder = mlp(
            self.dim, 2 * latent_dim, hidden=hidden, depth=depth, activation=activation
        )
        self.decoder = mlp(latent_dim, self.dim, hidden=hidden, depth=depth, activation=activation)
        self.prior = IsotropicGaussian(latent_dim)
        if likelihood == "gaussian" and decoder_std is None:
            self.log_std = nn.Parameter(torch.full((self.dim,), math.log(_INITIAL_DECODER_STD)))

    def config(self) -> dict[str, Any]:
        return {
            "event_shape": list(self.event_shape),
            "latent_dim": self.latent_dim,
            "hidden": self.hidden,
            "depth": self.depth,
            "likelihood": self.likelihood,
            "decoder_std": self.decoder_std,
            "activation": self.activation,
        }

    # ------------------------------------------------------------------ encoder / decoder
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Parameters of ``q(z | x)``: mean and log-variance, each ``(B, latent_dim)``."""
        self.check_data(x)
        mu, logvar = self.encoder(x.reshape(x.shape[0], self.dim)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Mean of ``p(x | z)`` (Bernoulli: probabilities), ``(B, latent_dim) -> (B, *event)``."""
        check_tensor(z, "z")
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            out = torch.sigmoid(out)
        return out.reshape(z.shape[0], *self.event_shape)

    def _gaussian_std(self, like: Tensor) -> Tensor:
        """Per-coordinate standard deviation ``(D,)`` of the Gaussian likelihood."""
        if self.decoder_std is None:
            return self.log_std.exp()
        return like.new_full((self.dim,), self.decoder_std)

    def _reconstruction_log_likelihood(self, x_flat: Tensor, out: Tensor) -> Tensor:
        """``log p(x | z)`` for flat ``x (..., D)``, decoder outputs ``out (..., D)``: ``(...)``."""
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(
                out, x_flat.expand_as(out), reduction="none"
            ).sum(dim=-1)
        return Normal(out, self._gaussian_std(out)).log_prob(x_flat).sum(dim=-1)

    @staticmethod
    def prior_kl(mu: Tensor, logvar: Tensor) -> Tensor:
        """Closed-form ``KL(N(mu, diag exp(logvar)) || N(0, I))`` (K&W appendix B).

        ``0.5 * sum(mu^2 + sigma^2 - log sigma^2 - 1)``; ``mu, logvar: (B, L) -> (B,)``.
        """
        return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(dim=1)

    def _check_input(self, x: Tensor) -> Tensor:
        self.check_data(x)
        if self.likelihood == "bernoulli" and bool(((x < 0) | (x > 1)).any()):
            raise ValueError(
                f"x must lie in [0, 1] for the bernoulli likelihood, got values in "
                f"[{float(x.min()):.3g}, {float(x.max()):.3g}]"
            )
        return x

    # ------------------------------------------------------------------ bounds
    @staticmethod
    def reparameterize(
        mu: Tensor,
        logvar: Tensor,
        *,
        n_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``z = mu + eps * exp(logvar / 2)``, ``eps ~ N(0, I)`` (K&W section 2.4).

        A draw of ``q(z | x) = N(mu, diag exp(logvar))`` that is differentiable in ``mu`` and
        ``logvar``: ``(B, L)``, or ``(K, B, L)`` with ``n_samples=K``.
        """
        shape = mu.shape if n_samples is None else (n_samples, *mu.shape)
        eps = randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)

    def _elbo(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        mu, logvar = self.encode(self._check_input(x))
        z = self.reparameterize(mu, logvar, generator=generator)
        x_flat = x.reshape(x.shape[0], self.dim)
        recon = self._reconstruction_log_likelihood(x_flat, self.decoder(z))
        return recon - self.prior_kl(mu, logvar)

    def elbo(
        self,
        x: Tensor,
        *,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        normalize: bool = True,
    ) -> Tensor:
        """One-sample estimate of the ELBO (K&W eq. 3) in nats, ``(B, *event_shape) -> (B,)``.

        Unbiased for ``E_q[log p(x | z)] - KL(q(z | x) || N(0, I))``, a lower bound on
        ``log p(x)``. ``use_ema``: use the EMA weights when the model has them. ``normalize``:
        ``x`` is in data units (mapped by :attr:`normalization`, whose log-determinant is
        added), as in :meth:`log_prob`.
        """
        x, log_det = self.normalize_with_log_det(x) if normalize else (x, 0.0)
        with self.averaged(use_ema):
            return self._elbo(x, generator) + log_det

    def importance_weighted_bound(
        self,
        x: Tensor,
        *,
        n_samples: int = 64,
        log_prior: Callable[[Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``L_K = log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x)``, ``z_k ~ q(z | x)``, ``(B,)``.

        Burda et al. 2016, eq. 8: in expectation ``ELBO = L_1 <= L_K <= L_{K+1} <= log p(x)``
        and ``L_K -> log p(x)`` as ``K -> inf``. Runs with the current weights.

        Args:
            x: ``(B, *event_shape)``.
            n_samples: ``K``, the number of importance samples per point.
            log_prior: ``log p(z)`` of a batch ``(N, latent_dim) -> (N,)``; ``None`` is the
                VAE's ``N(0, I)``. Another density (a flow on the latents) gives the bound of
                that latent-variable model.
        """
        positive_int(n_samples, "n_samples")
        mu, logvar = self.encode(self._check_input(x))
        z = self.reparameterize(mu, logvar, n_samples=n_samples, generator=generator)  # (K, B, L)
        log_q = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(dim=-1)  # (K, B)
        z = z.reshape(-1, self.latent_dim)
        log_p_z = (self.prior.log_prob if log_prior is None else log_prior)(z)
        out = self.decoder(z).reshape(n_samples, x.shape[0], self.dim)
        recon = self._reconstruction_log_likelihood(x.reshape(1, x.shape[0], self.dim), out)
        log_w = recon + log_p_z.reshape(n_samples, x.shape[0]) - log_q
        return torch.logsumexp(log_w, dim=0) - math.log(n_samples)

    def log_prob(
        self,
        x: Tensor,
        *,
        n_samples: int = 64,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        normalize: bool = True,
    ) -> Tensor:
        """Importance-weighted *lower bound* ``L_K`` on ``log p(x)`` in nats, ``(B,)``.

        See :meth:`importance_weighted_bound`; a bound that tightens with ``n_samples``, not
        the exact likelihood (which a VAE does not have). ``use_ema``: use the EMA weights.
        ``normalize``: ``x`` is in data units (mapped by :attr:`normalization`, whose
        log-determinant is added).
        """
        x, log_det = self.normalize_with_log_det(x) if normalize else (x, 0.0)
        with self.averaged(use_ema):
            bound = self.importance_weighted_bound(x, n_samples=n_samples, generator=generator)
        return bound + log_det

    def loss(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        phase: str = "model",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Negative ELBO per sample, ``(B,)``."""
        check_name(phase, ["model"], "phase")
        self.check_labels(y, x.shape[0])
        return -self._elbo(x, generator)

    # ------------------------------------------------------------------ sampling
    def draw(
        self, z: Tensor, *, mean: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """``x ~ p(x | z)`` (or its mean with ``mean=True``): ``(B, latent_dim) -> (B, *event)``."""
        mean_x = self.decode(z)
        if mean:
            return mean_x
        if self.likelihood == "bernoulli":
            return torch.bernoulli(mean_x, generator=generator)
        noise = randn(mean_x.shape, generator=generator, device=mean_x.device, dtype=mean_x.dtype)
        return mean_x + self._gaussian_std(mean_x).reshape(self.event_shape) * noise

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        mean: bool = False,
        use_ema: bool = True,
        denormalize: bool = True,
    ) -> Tensor:
        """Draw ``n`` samples ``(n, *event_shape)``: ``z ~ N(0, I)``, then ``x ~ p(x | z)``.

        Args:
            n: number of samples.
            generator: random source for ``z`` and the decoder noise.
            mean: return the decoder mean ``E[x | z]`` instead of a draw from ``p(x | z)``
                (smooth pictures; not a sample from the model's ``p(x)``).
            use_ema: use the EMA weights when the model has them.
            denormalize: map the samples back to data units (:meth:`denormalize`).
        """
        positive_int(n, "n")
        with self.averaged(use_ema):
            weight = next(self.decoder.parameters())
            z = self.prior.sample(n, generator=generator, device=weight.device, dtype=weight.dtype)
            x = self.draw(z, mean=mean, generator=generator)
        return self.denormalize(x) if denormalize else x
