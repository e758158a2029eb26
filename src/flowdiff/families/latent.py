"""Latent flow matching: a generative model on the latent space of a VAE.

Latent diffusion (Rombach et al., 2022) trains an autoencoder once, then fits the generative
model to the *latents* ``z ~ q(z | x)`` instead of the data, and decodes its samples. Here the
autoencoder is a :class:`~flowdiff.families.vae.VAE` and the latent model any
:class:`GenerativeModel` on ``(latent_dim,)``, a :class:`~flowdiff.models.FlowModel` by default:

    sample:  z ~ p_theta(z) (the flow's ODE from N(0, I)),  x ~ p(x | z) (the VAE decoder).

The model's density is ``p(x) = int p(x | z) p_theta(z) dz``; :meth:`LatentFlow.log_prob` is the
importance-weighted lower bound of that integral with the VAE encoder as proposal (Burda et al.
2016), the flow's exact ``log p_theta(z)`` taking the place of the ``N(0, I)`` prior.

Training goes through the one loop in two stages (:meth:`LatentFlow.training_phases`): the first
``vae_steps`` steps train the VAE (phase ``"vae"``, the negative ELBO), the rest train the flow on
posterior samples of the then frozen VAE (phase ``"flow"``). With ``vae_steps=0`` the VAE must
come trained and stays frozen throughout.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from flowdiff.families.vae import VAE
from flowdiff.models import FlowModel
from flowdiff.models.base import GenerativeModel, model_class
from flowdiff.utils import check_name, positive_int

__all__ = ["LatentFlow"]


def _as_model(
    model: GenerativeModel | dict[str, Any], name: str, default_kind: str
) -> GenerativeModel:
    """A model instance from itself or from ``{"kind": ..., "config": {...}}``."""
    if isinstance(model, GenerativeModel):
        return model
    if not isinstance(model, dict) or "config" not in model:
        raise TypeError(
            f"{name} must be a GenerativeModel or a dict {{'kind': ..., 'config': {{...}}}}, "
            f"got {type(model).__name__}"
        )
    return model_class(model.get("kind", default_kind))(**model["config"])


class LatentFlow(GenerativeModel):
    """A VAE and a generative model of its latents, sampled and decoded (kind ``"latent_flow"``).

    Args:
        event_shape: shape of one data sample.
        latent_dim: latent dimension of the default VAE (8 if ``None``); with ``vae`` given it
            must be ``None`` or the VAE's.
        vae: the autoencoder: a :class:`VAE`, a ``{"kind": "vae", "config": ...}`` dict, or
            ``None`` for ``VAE(event_shape, latent_dim=latent_dim)``. A trained VAE with EMA
            weights is copied with its EMA weights as its weights (the latent space it samples
            with).
        flow: the latent model: a :class:`GenerativeModel` on ``(latent_dim,)``, a
            ``{"kind": ..., "config": ...}`` dict, or ``None`` for ``FlowModel((latent_dim,))``.
        vae_steps: number of initial training steps spent on the VAE; ``0`` means the VAE is
            already trained and is never updated.
    """

    kind = "latent_flow"

    def __init__(
        self,
        event_shape: int | tuple[int, ...],
        *,
        latent_dim: int | None = None,
        vae: VAE | dict[str, Any] | None = None,
        flow: GenerativeModel | dict[str, Any] | None = None,
        vae_steps: int = 0,
    ) -> None:
        super().__init__(event_shape)
        if not isinstance(vae_steps, int) or isinstance(vae_steps, bool) or vae_steps < 0:
            raise ValueError(f"vae_steps must be an int >= 0, got {vae_steps!r}")
        if vae is None:
            vae = VAE(self.event_shape, latent_dim=8 if latent_dim is None else latent_dim)
        elif isinstance(vae, VAE):
            # A copy whose weights are the EMA weights (if any): the VAE is frozen as it samples.
            with vae.averaged():
                vae = copy.deepcopy(vae)
            vae.ema_state = None
        vae = _as_model(vae, "vae", "vae")
        if not isinstance(vae, VAE):
            raise TypeError(f"vae must be a VAE, got a {type(vae).__name__}")
        if vae.event_shape != self.event_shape:
            raise ValueError(f"vae has event_shape {vae.event_shape}, the model {self.event_shape}")
        if latent_dim is not None and latent_dim != vae.latent_dim:
            raise ValueError(
                f"latent_dim={latent_dim!r} but the vae has latent_dim {vae.latent_dim}"
            )
        flow = _as_model(FlowModel((vae.latent_dim,)) if flow is None else flow, "flow", "flow")
        if flow.event_shape != (vae.latent_dim,):
            raise ValueError(
                f"flow must model the VAE's latents, event_shape ({vae.latent_dim},), got "
                f"{flow.event_shape}"
            )
        self.vae = vae
        self.flow = flow
        self.vae_steps = vae_steps

    def config(self) -> dict[str, Any]:
        return {
            "event_shape": list(self.event_shape),
            "latent_dim": self.vae.latent_dim,
            "vae": {"kind": self.vae.kind, "config": self.vae.config()},
            "flow": {"kind": self.flow.kind, "config": self.flow.config()},
            "vae_steps": self.vae_steps,
        }

    # ------------------------------------------------------------------ training protocol
    def optim_groups(self) -> dict[str, list[nn.Parameter]]:
        """``"flow"``, plus ``"vae"`` when the VAE is trained here (``vae_steps > 0``)."""
        groups = {"flow": [p for p in self.flow.parameters() if p.requires_grad]}
        if self.vae_steps > 0:
            groups["vae"] = [p for p in self.vae.parameters() if p.requires_grad]
        return groups

    def training_phases(self, step: int) -> list[str]:
        """``["vae"]`` for the first ``vae_steps`` steps, ``["flow"]`` after."""
        return ["vae"] if step < self.vae_steps else ["flow"]

    def encode_sample(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """A posterior draw ``z ~ q(z | x)`` (no gradient): ``(B, *event) -> (B, latent_dim)``."""
        with torch.no_grad():
            return VAE.reparameterize(*self.vae.encode(x), generator=generator)

    def loss(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        phase: str = "flow",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-sample loss ``(B,)``: the VAE's negative ELBO (``"vae"``) or the latent model's
        loss on ``z ~ q(z | x)`` (``"flow"``)."""
        check_name(phase, ["vae", "flow"], "phase")
        self.check_data(x)
        self.check_labels(y, x.shape[0])
        if phase == "vae":
            return self.vae.loss(x, generator=generator)
        return self.flow.loss(self.encode_sample(x, generator=generator), generator=generator)

    @contextlib.contextmanager
    def averaged(self, enabled: bool = True) -> Iterator[LatentFlow]:
        """Load the EMA weights of the *flow* only; the VAE keeps its final weights.

        The flow was fitted to latents of the VAE's final (frozen) weights: decoding with the
        VAE's averaged weights would put its samples in another latent space.
        """
        full = self.ema_state
        if full is not None:
            self.ema_state = {k: v for k, v in full.items() if k.startswith("flow.")}
        try:
            with super().averaged(enabled):
                yield self
        finally:
            self.ema_state = full

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        mean: bool = False,
        use_ema: bool = True,
        denormalize: bool = True,
        **flow_options: Any,
    ) -> Tensor:
        """Draw ``n`` samples ``(n, *event_shape)``: ``z`` from the flow, then ``x ~ p(x | z)``.

        Args:
            n: number of samples.
            generator: random source of the flow's noise and of the decoder's.
            mean: decode to ``E[x | z]`` instead of drawing from ``p(x | z)``.
            use_ema: use the flow's EMA weights when the model has them.
            denormalize: map the samples back to data units (:meth:`denormalize`).
            flow_options: passed to the latent model's ``sample`` (``steps``, ``solver``...).
        """
        positive_int(n, "n")
        with self.averaged(use_ema):
            z = self.flow.sample(n, generator=generator, **flow_options)
            x = self.vae.draw(z, mean=mean, generator=generator)
        return self.denormalize(x) if denormalize else x

    def log_prob(
        self,
        x: Tensor,
        *,
        n_samples: int = 16,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        normalize: bool = True,
        **flow_options: Any,
    ) -> Tensor:
        """Importance-weighted lower bound on ``log p(x)``, ``(B,)`` nats (``x`` in data units
        with ``normalize``: mapped by :attr:`normalization`, its log-determinant added).

        ``L_K = log (1/K) sum_k p(x | z_k) p_theta(z_k) / q(z_k | x)`` with the flow's exact
        ``log p_theta`` (``flow_options`` go to its ``log_prob``): one likelihood solve over
        ``K * B`` latents. ``E[L_K] <= log p(x)``, tightening as ``K`` grows.
        """
        x, log_det = self.normalize_with_log_det(x) if normalize else (x, 0.0)
        with torch.no_grad(), self.averaged(use_ema):
            return log_det + self.vae.importance_weighted_bound(
                x,
                n_samples=n_samples,
                log_prior=lambda z: self.flow.log_prob(z, **flow_options),
                generator=generator,
            )
