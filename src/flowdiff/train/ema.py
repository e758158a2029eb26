"""Exponential moving average of the weights, the weights sampling uses by default."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["EMA"]


class EMA:
    """``ema_k = d_k ema_{k-1} + (1 - d_k) theta_k`` with ``ema_0 = theta_0`` and the warmed-up
    decay ``d_k = min(decay, (1 + k) / (10 + k))`` at update ``k = 1, 2, ...``.

    The warm-up (TensorFlow's ``ExponentialMovingAverage(num_updates=...)``) keeps a short run
    from sampling with weights still dominated by the random initialisation: with a constant
    ``d = 0.999`` the initial weights would keep ``0.999^2000 = 13%`` of the average after 2000
    steps; with the warm-up the average spans roughly the last ``k / 9`` steps until ``d_k``
    reaches ``decay``.

    Args:
        params: name -> parameter (the tensors the average follows).
        decay: the long-run decay ``d`` in ``[0, 1)``.
    """

    def __init__(self, params: Mapping[str, Tensor], decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.num_updates = 0
        self._names = list(params)
        self._params = [params[name] for name in self._names]
        # The average lives in the parameters' dtype and device, detached from autograd.
        self.state: dict[str, Tensor] = {
            name: p.detach().clone() for name, p in zip(self._names, self._params)
        }

    def decay_at(self, update: int) -> float:
        """The decay ``d_k`` used by update number ``k`` (1-based)."""
        return min(self.decay, (1.0 + update) / (10.0 + update))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameter values into the average (one call per optimizer step)."""
        self.num_updates += 1
        weight = 1.0 - self.decay_at(self.num_updates)
        # lerp: ema + w (theta - ema) = (1 - w) ema + w theta, one fused pass over all tensors.
        torch._foreach_lerp_(list(self.state.values()), [p.detach() for p in self._params], weight)

    def load(self, state: Mapping[str, Tensor], num_updates: int) -> None:
        """Restore a saved average (e.g. from a checkpoint) in place."""
        if set(state) != set(self.state):
            missing = sorted(set(self.state) - set(state))
            unexpected = sorted(set(state) - set(self.state))
            raise ValueError(f"EMA state mismatch: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            for name, value in state.items():
                self.state[name].copy_(value)
        self.num_updates = int(num_updates)
