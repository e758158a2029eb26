"""Classifier-free guidance as a wrapper around a conditional network.

The course notes (section on guidance) train one network on labelled data in which a fraction of
the labels is replaced by a null label ``∅``, so that the same network gives the conditional
field ``u_t(x | y)`` and the unconditional one ``u_t(x | ∅)``. Sampling then follows the guided
field

    u~_t(x | y) = (1 - w) u_t(x | ∅) + w u_t(x | y),

with ``w = 0`` the unconditional model, ``w = 1`` the conditional one and ``w > 1`` pushing the
samples towards what distinguishes class ``y``.

Because the wrapper has the network's own signature ``net(x, t, y=labels)``, every dynamics
object and every solver uses it unchanged. It may wrap a network predicting a velocity, a score,
a noise ``epsilon`` or ``x1``: on a Gaussian path each prediction is an affine function of the
others at fixed ``(x, t)`` (``path.convert``), and the weights ``(1 - w, w)`` sum to one, so
guiding any of them gives the same guided velocity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["ClassifierFreeGuidance"]


class ClassifierFreeGuidance(nn.Module):
    """``net~(x, t, y) = (1 - w) net(x, t, y=∅) + w net(x, t, y=y)``.

    Both terms come from one call of ``net`` on a doubled batch ``(2B, *shape)``, so a guided
    evaluation costs one (twice as wide) network pass and a solver's NFE count is unchanged.

    Args:
        net: conditional network ``net(x, t, y=labels) -> like x`` that was trained with label
            dropout, with ``null_label`` meaning "no label".
        guidance: the weight ``w`` (a finite float; ``w >= 0`` in practice).
        null_label: the integer the network reads as ``∅`` (``num_classes`` in ``flowdiff.nets``).
    """

    def __init__(
        self, net: nn.Module | Callable[..., Tensor], guidance: float, null_label: int
    ) -> None:
        super().__init__()
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
            raise TypeError(f"guidance must be a float, got {type(guidance).__name__}")
        if not math.isfinite(guidance):
            raise ValueError(f"guidance must be finite, got {guidance}")
        self.net = net
        self.guidance = float(guidance)
        self.null_label = int(null_label)

    def forward(self, x: Tensor, t: Tensor, *, y: Tensor) -> Tensor:
        """Guided output ``(B, *shape)`` for ``x: (B, *shape)``, ``t: (B,)``, labels ``y: (B,)``."""
        if y.shape != x.shape[:1]:
            raise ValueError(
                f"y must have shape ({x.shape[0]},) to match x {tuple(x.shape)}, "
                f"got {tuple(y.shape)}"
            )
        null = torch.full_like(y, self.null_label)
        both = self.net(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([null, y]))
        unconditional, conditional = both.chunk(2)
        return torch.lerp(unconditional, conditional, self.guidance)
