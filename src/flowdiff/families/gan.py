"""Generative adversarial network (Goodfellow et al., 2014).

A generator ``G`` pushes latent noise ``z ~ N(0, I)`` forward to samples ``G(z)``; a discriminator
``D(x) = sigmoid(logit(x))`` tells data from samples. They play the min-max game

    min_G max_D  V(D, G) = E_{x ~ p_data}[log D(x)] + E_{z ~ p_z}[log(1 - D(G(z)))]   (eq. 1)

trained by the alternating algorithm (Goodfellow et al., Algorithm 1): ``k`` discriminator ascent
steps, then one generator step. For a fixed generator with density ``p_g`` the best
discriminator is ``D*(x) = p_data(x) / (p_data(x) + p_g(x))`` (Proposition 1), and at that
discriminator the generator minimises ``2 JSD(p_data || p_g) - log 4``.

Early in training ``log(1 - D(G(z)))`` saturates (its gradient vanishes where ``D(G(z)) ~ 0``), so
the paper recommends maximising ``log D(G(z))`` instead: the *non-saturating* generator loss,
the default here. ``generator_loss="minimax"`` keeps eq. 1 as written.

Both networks are MLPs on the flattened event, so any event shape works.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowdiff.distributions import IsotropicGaussian
from flowdiff.models.base import GenerativeModel
from flowdiff.nets import mlp
from flowdiff.utils import check_name, positive_int

__all__ = ["GAN"]

GENERATOR_LOSSES = ("non_saturating", "minimax")
PHASES = ("discriminator", "generator")


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Build graphs without ``module``'s parameters as leaves; restore ``requires_grad`` on exit.

    The generator's loss backpropagates *through* the discriminator, but its gradient with
    respect to the discriminator's weights is never used: not computing it saves that part of the
    backward pass, and a loop that does not zero every gradient between phases cannot then feed
    the generator's objective to the discriminator's optimizer.
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class GAN(GenerativeModel):
    """Generator and discriminator MLPs trained on the min-max objective (kind ``"gan"``).

    Args:
        event_shape: shape of one sample.
        latent_dim: dimension of the generator's input noise ``z ~ N(0, I)``.
        hidden: width of the generator.
        depth: hidden layers of the generator (``0``: an affine map, ``p_g`` Gaussian).
        discriminator_hidden: width of the discriminator (default ``hidden``).
        discriminator_depth: hidden layers of the discriminator (default ``depth``).
        generator_loss: ``"non_saturating"`` (``-log D(G(z))``) or ``"minimax"``
            (``log(1 - D(G(z)))``, eq. 1).
        discriminator_steps: ``k``, discriminator steps per generator step (Algorithm 1).
        spectral_norm: spectrally normalise the discriminator's layers (Miyato et al. 2018),
            which bounds its Lipschitz constant and steadies the game.
        activation: activation of both networks.
    """

    kind = "gan"

    def __init__(
        self,
        event_shape: int | tuple[int, ...],
        *,
        latent_dim: int = 8,
        hidden: int = 128,
        depth: int = 2,
        discriminator_hidden: int | None = None,
        discriminator_depth: int | None = None,
        generator_loss: str = "non_saturating",
        discriminator_steps: int = 1,
        spectral_norm: bool = False,
        activation: str = "silu",
    ) -> None:
        super().__init__(event_shape)
        positive_int(latent_dim, "latent_dim")
        check_name(generator_loss, GENERATOR_LOSSES, "generator_loss")
        positive_int(discriminator_steps, "discriminator_steps")
        self.dim = math.prod(self.event_shape)
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.depth = depth
        self.discriminator_hidden = hidden if discriminator_hidden is None else discriminator_hidden
        self.discriminator_depth = depth if discriminator_depth is None else discriminator_depth
        self.generator_loss = generator_loss
        self.discriminator_steps = discriminator_steps
        self.spectral_norm = spectral_norm
        self.activation = activation
        self.latent = IsotropicGaussian(latent_dim)
        self.generator = mlp(latent_dim, self.dim, hidden, depth, activation)
        self.discriminator = mlp(
            self.dim,
            1,
            self.discriminator_hidden,
            self.discriminator_depth,
            activation,
            spectral_norm=spectral_norm,
        )

    def config(self) -> dict[str, Any]:
        return {
            "event_shape": list(self.event_shape),
            "latent_dim": self.latent_dim,
            "hidden": self.hidden,
            "depth": self.depth,
            "discriminator_hidden": self.discriminator_hidden,
            "discriminator_depth": self.discriminator_depth,
            "generator_loss": self.generator_loss,
            "discriminator_steps": self.discriminator_steps,
            "spectral_norm": self.spectral_norm,
            "activation": self.activation,
        }

    # ------------------------------------------------------------------ networks
    def _generate(self, n: int, generator: torch.Generator | None) -> Tensor:
        """``G(z)`` for ``z ~ N(0, I)``: ``(n, *event_shape)``."""
        weight = next(self.generator.parameters())
        z = self.latent.sample(n, generator=generator, device=weight.device, dtype=weight.dtype)
        return self.generator(z).reshape(n, *self.event_shape)

    def _logit(self, x: Tensor) -> Tensor:
        """Discriminator logit ``(B,)``: ``D(x) = sigmoid(logit)``."""
        return self.discriminator(x.reshape(x.shape[0], self.dim)).squeeze(1)

    def discriminator_prob(self, x: Tensor) -> Tensor:
        """``D(x)``, the probability that ``x`` is data, not a sample: ``(B, *event) -> (B,)``.

        Uses the current (not the EMA) weights: averaging a discriminator has no use.
        """
        return torch.sigmoid(self._logit(self.check_data(x)))

    # ------------------------------------------------------------------ training protocol
    def optim_groups(self) -> dict[str, list[nn.Parameter]]:
        """Two optimizers, one per player."""
        return {
            "discriminator": list(self.discriminator.parameters()),
            "generator": list(self.generator.parameters()),
        }

    def training_phases(self, step: int) -> list[str]:
        """``k`` discriminator steps, then one generator step (Algorithm 1)."""
        return ["discriminator"] * self.discriminator_steps + ["generator"]

    def loss(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        phase: str = "model",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-sample loss ``(B,)`` of one player on the data batch ``x (B, *event_shape)``.

        ``"discriminator"``: ``-log D(x_i) - log(1 - D(G(z_i)))``, whose batch mean is ``-V``
        (the discriminator ascends eq. 1). ``"generator"``: ``log(1 - D(G(z_i)))`` (minimax) or
        ``-log D(G(z_i))`` (non-saturating), with a fresh ``z_i`` per data point; ``x`` only sets
        the batch size there. In logits, ``log D = -softplus(-l)``, ``log(1 - D) = -softplus(l)``.
        """
        check_name(phase, PHASES, "phase")
        self.check_data(x)
        self.check_labels(y, x.shape[0])
        if phase == "discriminator":
            with torch.no_grad():  # the generator is held fixed in this phase
                fake = self._generate(x.shape[0], generator)
            return F.softplus(-self._logit(x)) + F.softplus(self._logit(fake))
        with _frozen(self.discriminator):
            logit_fake = self._logit(self._generate(x.shape[0], generator))
        if self.generator_loss == "minimax":
            return -F.softplus(logit_fake)
        return F.softplus(-logit_fake)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        denormalize: bool = True,
    ) -> Tensor:
        """Draw ``n`` samples ``G(z)``, ``z ~ N(0, I)``: ``(n, *event_shape)``, one network pass.

        ``use_ema``: use the EMA weights of the generator when the model has them.
        ``denormalize``: map the samples back to data units (:meth:`denormalize`).
        """
        positive_int(n, "n")
        with self.averaged(use_ema):
            x = self._generate(n, generator)
        return self.denormalize(x) if denormalize else x
