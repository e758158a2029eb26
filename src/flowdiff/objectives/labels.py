"""Label dropout for classifier-free guidance (Ho & Salimans 2022; course notes, section 5).

One network learns both the conditional field ``u_t(x | y)`` and the unconditional ``u_t(x)``
by seeing, with probability ``p``, the reserved null label instead of ``y``; guidance then mixes
the two at sampling time.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["drop_labels"]


def drop_labels(
    y: Tensor, p: float, null_label: int, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each label of ``y`` ``(B,)`` by ``null_label`` independently with probability
    ``p``; returns a new ``(B,)`` tensor (``y`` is not modified).

    Args:
        y: integer labels ``(B,)``.
        p: drop probability in ``[0, 1]``.
        null_label: the "no label" class (``num_classes`` by the nets' convention).
        generator: draws the drop mask.
    """
    if not isinstance(y, Tensor) or y.dim() != 1:
        raise ValueError(f"y must be a (B,) tensor of labels, got {getattr(y, 'shape', y)!r}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer labels, got dtype {y.dtype}")
    if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    if isinstance(null_label, bool) or not isinstance(null_label, int):
        raise TypeError(f"null_label must be an int, got {null_label!r}")
    device = generator.device if generator is not None else y.device
    drop = torch.rand(y.shape[0], generator=generator, device=device).to(y.device) < p
    return torch.where(drop, torch.full_like(y, null_label), y)
