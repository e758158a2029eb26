"""Building blocks shared by the networks: activations, spectral normalisation, embeddings.

The course notes require the vector field ``u_t(x)`` to be Lipschitz in ``x`` for the flow ODE to
have a unique solution (existence and uniqueness theorem). A network built from linear maps and
activations is Lipschitz with constant at most ``prod_l ||W_l||_2 * L_act^depth``; smooth
activations (``silu``, ``gelu``, ``tanh``, ``softplus``) also make the field differentiable, and
``spectral_norm=True`` divides every weight by its largest singular value (Miyato et al., 2018,
"Spectral Normalization for Generative Adversarial Networks") so the product above stays bounded.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from flowdiff.utils import positive_int

__all__ = [
    "ACTIVATIONS",
    "LabelEmbedding",
    "TimeEmbedding",
    "activation_lipschitz",
    "make_activation",
    "maybe_spectral_norm",
]

# name -> (module class, Lipschitz constant sup_x |f'(x)|). The two non-trivial constants are the
# maxima of the derivatives, found numerically and rounded up so that they stay upper bounds:
# silu'(x) = s(x) (1 + x (1 - s(x))) peaks at x ~ 2.3994, gelu'(x) = Phi(x) + x phi(x) at sqrt 2.
_ACTIVATIONS: dict[str, tuple[type[nn.Module], float]] = {
    "silu": (nn.SiLU, 1.09984),
    "gelu": (nn.GELU, 1.12891),
    "tanh": (nn.Tanh, 1.0),
    "softplus": (nn.Softplus, 1.0),
    "relu": (nn.ReLU, 1.0),
}
ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)


def _lookup_activation(name: object) -> tuple[type[nn.Module], float]:
    if not isinstance(name, str):
        raise TypeError(f"activation must be a string, got {type(name).__name__}")
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of :data:`ACTIVATIONS`)."""
    return _lookup_activation(name)[0]()


def activation_lipschitz(name: str) -> float:
    """Upper bound on ``sup_x |f'(x)|`` for the activation ``name``."""
    return _lookup_activation(name)[1]


def maybe_spectral_norm(layer: nn.Module, enabled: bool) -> nn.Module:
    """Wrap ``layer`` (Linear or Conv) in spectral normalisation when ``enabled``.

    For a ``Linear`` layer the normalised weight has operator norm ~1 (up to the power-iteration
    estimate of ``sigma_max``). For a convolution PyTorch normalises the reshaped kernel
    ``(out, in * k * k)``, the usual approximation of the convolution's operator norm.
    """
    return _spectral_norm(layer) if enabled else layer


class TimeEmbedding(nn.Module):
    """Sinusoidal features of time (Vaswani et al., 2017; Ho et al., 2020): ``(B,) -> (B, dim)``.

    ``gamma(t) = [sin(w_1 t), ..., sin(w_h t), cos(w_1 t), ..., cos(w_h t)]`` with ``h = dim / 2``
    and angular frequencies ``w_k = scale * max_period^(-(k - 1) / (h - 1))`` spaced geometrically
    from ``scale`` down to ``scale / max_period``. With the defaults (``scale = 1000``) time in
    ``[0, 1]`` is read like the integer steps of DDPM: the high frequencies separate nearby times,
    the low ones vary monotonically over the whole interval. ``||gamma(t)||^2 = h`` for every t and
    ``||gamma(t) - gamma(s)|| <= ||w|| |t - s|``.

    Args:
        dim: number of features, even and positive.
        max_period: ratio of the longest to the shortest period.
        scale: highest angular frequency, in radians per unit of t.
    """

    frequencies: Tensor

    def __init__(self, dim: int, max_period: float = 10_000.0, scale: float = 1000.0) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even integer >= 2, got {dim!r}")
        for name, value in (("max_period", max_period), ("scale", scale)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        self.dim = dim
        exponents = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64)
        # Not persistent: the frequencies follow from the constructor arguments, so they are not
        # part of a saved state dict.
        self.register_buffer(
            "frequencies", (scale * max_period ** (-exponents)).float(), persistent=False
        )

    def forward(self, t: Tensor) -> Tensor:
        """``t: (B,)`` -> features ``(B, dim)`` in ``t``'s dtype."""
        if t.dim() != 1:
            raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
        angles = t[:, None] * self.frequencies.to(t.dtype)[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class LabelEmbedding(nn.Module):
    """Learned class embedding with one extra *null* label for classifier-free guidance.

    Labels ``0 .. num_classes - 1`` are the classes; label ``num_classes`` (:attr:`null_label`)
    stands for "no condition", the ``u_t(x | empty)`` of guidance
    ``u~ = (1 - w) u_t(x | empty) + w u_t(x | y)``.

    Args:
        num_classes: number of real classes (positive).
        dim: embedding size.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        positive_int(num_classes, "num_classes")
        positive_int(dim, "dim")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_label(self) -> int:
        """The index read as "no label": ``num_classes``."""
        return self.num_classes

    def forward(self, y: Tensor) -> Tensor:
        """``y: (B,)`` integers in ``[0, num_classes]`` -> ``(B, dim)``."""
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a tensor of integer labels, got {type(y).__name__}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"y must hold integer labels, got dtype {y.dtype}")
        if y.dim() != 1:
            raise ValueError(f"y must have shape (B,), got {tuple(y.shape)}")
        if y.numel() and bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(
                f"y must lie in [0, {self.num_classes}] ({self.num_classes} = null label), got "
                f"values {int(y.min())}..{int(y.max())}"
            )
        return self.table(y.long())
