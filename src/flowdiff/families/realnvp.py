"""RealNVP: a normalizing flow of affine coupling layers (Dinh, Sohl-Dickstein & Bengio, 2017).

A normalizing flow is an invertible map ``f`` from data ``x`` to noise ``z = f(x)`` with
``z ~ N(0, I)``; the change-of-variables formula gives the exact likelihood

    log p(x) = log N(f(x); 0, I) + log |det df/dx (x)|.                       (Dinh et al., eq. 3)

In the notes' convention (t=0 noise, t=1 data) sampling runs the inverse, ``x = f^{-1}(z)``.
``f`` is a composition of affine couplings: with a binary mask ``m`` the masked half passes
through unchanged and conditions an elementwise affine map of the other half,

    y = m * x + (1 - m) * (x * exp(s(m * x)) + t(m * x)),                      (eqs. 4-9)

whose Jacobian is triangular with ``log |det| = sum((1 - m) * s(m * x))``. The inverse only needs
``s`` and ``t`` at ``m * y = m * x``, so neither network is ever inverted. Masks alternate between
the even and odd coordinates of the flattened event, so every coordinate is transformed by every
other layer; any event shape works by flattening.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from flowdiff.distributions import IsotropicGaussian
from flowdiff.models.base import GenerativeModel
from flowdiff.nets import mlp
from flowdiff.utils import check_name, positive_int

__all__ = ["RealNVP"]


class RealNVP(GenerativeModel):
    """Affine-coupling normalizing flow with exact ``log_prob`` (kind ``"realnvp"``).

    Args:
        event_shape: shape of one sample; flattened to ``D = prod(event_shape) >= 2``.
        n_layers: number of coupling layers (masks alternate even/odd coordinates).
        hidden: width of each coupling network ``(s, t)``.
        depth: hidden layers of each coupling network.
        scale_bound: log-scales are soft-clamped as ``c * tanh(s / c)`` with ``c = scale_bound``,
            so one layer scales a coordinate by at most ``exp(c)``: an unbounded ``exp(s)`` can
            blow up early maximum-likelihood training.
        activation: activation of the coupling networks.
    """

    kind = "realnvp"

    def __init__(
        self,
        event_shape: int | tuple[int, ...],
        *,
        n_layers: int = 8,
        hidden: int = 128,
        depth: int = 2,
        scale_bound: float = 2.0,
        activation: str = "silu",
    ) -> None:
        super().__init__(event_shape)
        self.dim = math.prod(self.event_shape)
        if self.dim < 2:
            raise ValueError(
                f"event_shape must hold at least 2 coordinates for a coupling flow, "
                f"got {self.event_shape}"
            )
        positive_int(n_layers, "n_layers")
        if not (isinstance(scale_bound, (int, float)) and 0 < scale_bound < math.inf):
            raise ValueError(f"scale_bound must be a positive finite number, got {scale_bound!r}")
        self.n_layers = n_layers
        self.hidden = hidden
        self.depth = depth
        self.scale_bound = float(scale_bound)
        self.activation = activation
        parity = torch.arange(self.dim) % 2
        masks = torch.stack([(parity + k) % 2 for k in range(n_layers)]).to(
            torch.get_default_dtype()
        )
        # Derived from the config, so not part of the saved weights.
        self.register_buffer("masks", masks, persistent=False)
        self.base = IsotropicGaussian(self.event_shape)
        self.couplings = nn.ModuleList(
            mlp(self.dim, 2 * self.dim, hidden=hidden, depth=depth, activation=activation)
            for _ in range(n_layers)
        )
        for net in self.couplings:
            # Zero output layer: every coupling starts as the identity, so training starts from
            # log p = log N(x; 0, I) instead of a random, possibly extreme, volume change.
            last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def config(self) -> dict[str, Any]:
        return {
            "event_shape": list(self.event_shape),
            "n_layers": self.n_layers,
            "hidden": self.hidden,
            "depth": self.depth,
            "scale_bound": self.scale_bound,
            "activation": self.activation,
        }

    # ------------------------------------------------------------------ the bijection
    def _scale_shift(self, k: int, masked: Tensor) -> tuple[Tensor, Tensor]:
        """Log-scale ``s`` and shift ``t`` of coupling ``k``, both zero on the masked half."""
        raw_s, t = self.couplings[k](masked).chunk(2, dim=1)
        free = 1 - self.masks[k]
        s = self.scale_bound * torch.tanh(raw_s / self.scale_bound)
        return s * free, t * free

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalizing direction ``z = f(x)``.

        Args:
            x: data ``(B, *event_shape)``.

        Returns:
            ``z`` of shape ``(B, *event_shape)`` and ``log |det df/dx|`` of shape ``(B,)``.
        """
        self.check_data(x)
        h = x.reshape(x.shape[0], self.dim)
        log_det = h.new_zeros(h.shape[0])
        for k in range(self.n_layers):
            m = self.masks[k]
            s, t = self._scale_shift(k, h * m)
            h = m * h + (1 - m) * (h * torch.exp(s) + t)
            log_det = log_det + s.sum(dim=1)
        return h.reshape(x.shape), log_det

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Generative direction ``x = f^{-1}(z)``, the couplings undone in reverse order.

        Args:
            z: noise ``(B, *event_shape)``.

        Returns:
            ``x`` of shape ``(B, *event_shape)`` and ``log |det df^{-1}/dz|`` of shape ``(B,)``
            (minus the forward log-determinant at ``x``).
        """
        self.check_data(z, "z")
        h = z.reshape(z.shape[0], self.dim)
        log_det = h.new_zeros(h.shape[0])
        for k in reversed(range(self.n_layers)):
            m = self.masks[k]
            s, t = self._scale_shift(k, h * m)
            h = m * h + (1 - m) * (h - t) * torch.exp(-s)
            log_det = log_det - s.sum(dim=1)
        return h.reshape(z.shape), log_det

    # ------------------------------------------------------------------ likelihood and sampling
    def _log_prob(self, x: Tensor) -> Tensor:
        z, log_det = self(x)
        return self.base.log_prob(z) + log_det

    def log_prob(self, x: Tensor, *, use_ema: bool = True, normalize: bool = True) -> Tensor:
        """Exact ``log p(x)`` in nats by the change of variables (Dinh et al., eq. 3): ``(B,)``.

        ``use_ema``: use the EMA weights when the model has them. ``normalize``: ``x`` is in
        data units (mapped by :attr:`normalization`, whose log-determinant is added).
        """
        x, log_det = self.normalize_with_log_det(x) if normalize else (x, 0.0)
        with self.averaged(use_ema):
            return self._log_prob(x) + log_det

    def loss(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        phase: str = "model",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Maximum likelihood: the per-sample negative log-likelihood ``-log p(x)``, ``(B,)``."""
        check_name(phase, ["model"], "phase")
        self.check_labels(y, x.shape[0])
        return -self._log_prob(x)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        denormalize: bool = True,
    ) -> Tensor:
        """Draw ``n`` samples ``x = f^{-1}(z)``, ``z ~ N(0, I)``: shape ``(n, *event_shape)``.

        ``use_ema``: use the EMA weights when the model has them.
        ``denormalize``: map the samples back to data units (:meth:`denormalize`).
        """
        positive_int(n, "n")
        with self.averaged(use_ema):
            z = self.base.sample(
                n, generator=generator, device=self.masks.device, dtype=self.masks.dtype
            )
            x = self.inverse(z)[0]
        return self.denormalize(x) if denormalize else x
