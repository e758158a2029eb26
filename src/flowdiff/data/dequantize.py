"""Uniform dequantisation: a continuous density for quantised data (Theis, van den Oord & Bethge,
2016, "A note on the evaluation of generative models").

Data whose values sit on a grid of step ``w`` (grey levels, 8-bit pixels) has no density: a
continuous model can put unbounded density on the grid points and its likelihood diverges. The
fix is to train on ``v = x + u`` with ``u ~ U(-w/2, w/2)^D``, the grid point spread over its
bin ``B(x)`` (volume ``w^D``), and, by Jensen's inequality, the model density ``p`` then bounds
the discrete probability ``P(x) = int_{B(x)} p(v) dv`` of the grid point from below::

    log P(x) >= E_u[log p(x + u)] + D log w.                                          (1)

Two things make this a valid bound rather than a memorised one:

- the noise is drawn afresh every time a training sample is used (:class:`Dequantized`): a
  fixed draw turns the data into ``N`` continuous points, which a flexible density can learn to
  peak on, and its held-out likelihood then collapses;
- the held-out ``log p`` is evaluated at an independent draw (:func:`dequantize`, one draw per
  point is an unbiased estimate of the expectation), and ``D log w`` is added
  (:func:`discrete_log_likelihood_bound`); ``flowdiff.metrics.bits_per_dim`` with
  ``data_scale = w`` turns it into bits per dimension.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from flowdiff.utils import check_finite, check_positive, check_tensor, positive_int

__all__ = ["Dequantized", "dequantize", "discrete_log_likelihood_bound"]


def dequantize(x: Tensor, bin_width: float, *, generator: torch.Generator | None = None) -> Tensor:
    """``x + u``, ``u ~ U(-w/2, w/2)`` independently per entry, ``w = bin_width``: the grid point
    ``x`` spread uniformly over its bin. ``x: (B, *shape) -> (B, *shape)``."""
    check_tensor(x, "x")
    width = check_positive(bin_width, "bin_width")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (u - 0.5) * width


def discrete_log_likelihood_bound(log_prob: Tensor, bin_width: float, dim: int) -> Tensor:
    """Lower bound ``log p(x + u) + D log w`` on ``log P(x)`` per sample (module eq. 1),
    ``(B,) -> (B,)``, for a density ``p`` of the dequantised data in the units where the grid
    step is ``w`` and events of ``D = dim`` entries. Averaged over the noise ``u`` (e.g. over a
    test set, one draw per point) it bounds the discrete log-likelihood in expectation."""
    check_tensor(log_prob, "log_prob")
    if log_prob.dim() != 1:
        raise ValueError(f"log_prob must have shape (B,), got {tuple(log_prob.shape)}")
    width = check_positive(bin_width, "bin_width")
    return log_prob + positive_int(dim, "dim") * math.log(width)


class Dequantized(Dataset):
    """A map-style dataset of quantised data that dequantises every item afresh when drawn.

    ``dataset[i]`` is ``dequantize(x[i])`` (or ``(that, y[i])``) with new noise on every access,
    so a model trained for many epochs never sees the same continuous point twice (module notes).
    The training loop (``flowdiff.train.fit``) fetches a whole batch at once through
    :meth:`__getitems__`: one vectorised draw per batch.

    Args:
        x: quantised data ``(N, *event_shape)``, floating point, on a grid of step ``bin_width``
            (e.g. ``flowdiff.data.load_data("digits").x``, whose step is ``2 / 16``).
        bin_width: the grid step ``w`` in the units of ``x``.
        y: optional labels ``(N,)``.
        seed: seed of the noise generator. A fresh dataset replays the same noise, so a run is
            reproducible from its start; a resumed run draws new noise (any draw is as valid:
            the noise is not part of the data). In ``DataLoader`` worker processes, each
            worker's copy reseeds itself once from the worker's own seed (``torch`` derives it
            from the main process's generator), so that no two workers repeat the same noise.
    """

    def __init__(
        self, x: Tensor, bin_width: float, *, y: Tensor | None = None, seed: int = 0
    ) -> None:
        check_finite(check_tensor(x, "x", min_dim=2), "x")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if y is not None and (not isinstance(y, Tensor) or y.shape != (len(x),)):
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y must be a tensor of shape ({len(x)},), got {shape}")
        self.x, self.y = x, y
        self.bin_width = check_positive(bin_width, "bin_width")
        self.generator = torch.Generator().manual_seed(seed)
        self._worker: int | None = None  # the DataLoader worker this copy was reseeded for

    def __len__(self) -> int:
        return len(self.x)

    def _batch(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        worker = get_worker_info()
        if worker is not None and self._worker != worker.id:
            self.generator.manual_seed(worker.seed)
            self._worker = worker.id
        x = dequantize(self.x[index], self.bin_width, generator=self.generator)
        return x, None if self.y is None else self.y[index]

    def __getitem__(self, i: int) -> Tensor | tuple[Tensor, Tensor]:
        x, y = self._batch(torch.tensor([i]))
        return x[0] if y is None else (x[0], y[0])

    def __getitems__(self, indices: list[int]) -> list[Tensor | tuple[Tensor, Tensor]]:
        """The items at ``indices`` with one noise draw for all (the ``DataLoader`` batch path)."""
        x, y = self._batch(torch.as_tensor(indices, dtype=torch.long))
        if y is None:
            return list(x.unbind(0))
        return list(zip(x.unbind(0), y.unbind(0), strict=True))
