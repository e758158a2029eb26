"""Multilayer perceptrons: the vector field for data of any event shape, and a plain builder.

:class:`MLP` flattens ``x: (B, *event_shape)`` to ``(B, D)``, concatenates the sinusoidal time
features ``gamma(t)`` (and a label embedding), runs ``depth`` hidden layers of width ``hidden``
and reshapes the output back: ``u_t^theta(x) = W_{L+1} f(W_L ... f(W_1 [x, gamma(t), e(y)]))``.
``depth=3, hidden=256`` is the "3x256 MLP" of the benchmarks: three hidden layers of 256 units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowdiff.nets.base import Net
from flowdiff.nets.layers import (
    LabelEmbedding,
    TimeEmbedding,
    activation_lipschitz,
    make_activation,
    maybe_spectral_norm,
)
from flowdiff.utils import check_tensor, positive_int, shape_tuple

__all__ = ["MLP", "mlp"]


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: int = 256,
    depth: int = 3,
    activation: str = "silu",
    spectral_norm: bool = False,
) -> nn.Sequential:
    """Plain time-free MLP ``(B, in_dim) -> (B, out_dim)``: ``depth`` x (Linear + activation),
    then an output Linear. ``depth=0`` is a single affine map.

    For families that need a body without time (GAN, VAE, coupling layers).
    """
    positive_int(in_dim, "in_dim")
    positive_int(out_dim, "out_dim")
    positive_int(hidden, "hidden")
    positive_int(depth, "depth", minimum=0)
    make_activation(activation)  # validate the name before building anything
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [maybe_spectral_norm(nn.Linear(width, hidden), spectral_norm)]
        layers += [make_activation(activation)]
        width = hidden
    layers.append(maybe_spectral_norm(nn.Linear(width, out_dim), spectral_norm))
    return nn.Sequential(*layers)


class MLP(Net):
    """Vector field ``u_t(x)`` (or any map) on tensors of any event shape.

    ``forward(x: (B, *event_shape), t: float | 0-d | (B,), y: (B,) int | None) -> (B, *out_shape)``.

    Args:
        event_shape: shape of one input sample, e.g. ``2``, ``(N, 3)``, ``(T, C, H, W)``.
        hidden: width of each hidden layer.
        depth: number of hidden layers.
        time_dim: size of the sinusoidal time features; ``0`` makes a time-free net whose
            ``forward(x, y=None)`` takes no ``t`` (GAN generators, VAE encoders).
        num_classes: number of labels for a conditional net (plus the null label
            ``num_classes``); ``None`` for an unconditional one.
        activation: one of ``silu, gelu, tanh, softplus, relu``.
        spectral_norm: normalise every Linear layer by its largest singular value.
        out_shape: shape of one output, default ``event_shape``; ``()`` gives ``(B,)``.
        label_dim: size of the label embedding (only with ``num_classes``).
    """

    type_name = "mlp"

    def __init__(
        self,
        event_shape: int | Sequence[int],
        hidden: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        num_classes: int | None = None,
        activation: str = "silu",
        spectral_norm: bool = False,
        out_shape: int | Sequence[int] | None = None,
        label_dim: int = 64,
    ) -> None:
        super().__init__()
        self.event_shape = shape_tuple(event_shape, "event_shape")
        self.out_shape = (
            self.event_shape
            if out_shape is None
            else shape_tuple(out_shape, "out_shape", allow_empty=True)
        )
        positive_int(time_dim, "time_dim", minimum=0)
        self.time_embedding = TimeEmbedding(time_dim) if time_dim else None
        self.label_embedding = (
            None if num_classes is None else LabelEmbedding(num_classes, label_dim)
        )
        in_dim = math.prod(self.event_shape) + time_dim + (label_dim if num_classes else 0)
        self.body = mlp(in_dim, math.prod(self.out_shape), hidden, depth, activation, spectral_norm)
        self.activation = activation
        self._config = {
            "event_shape": list(self.event_shape),
            "hidden": hidden,
            "depth": depth,
            "time_dim": time_dim,
            "num_classes": num_classes,
            "activation": activation,
            "spectral_norm": bool(spectral_norm),
            "out_shape": list(self.out_shape),
            "label_dim": label_dim,
        }

    def forward(
        self, x: Tensor, t: float | Tensor | None = None, y: int | Tensor | None = None
    ) -> Tensor:
        """``x: (B, *event_shape)`` -> ``(B, *out_shape)``; ``y=None`` on a conditional net uses
        the null label."""
        check_tensor(x, "x")
        if tuple(x.shape[1:]) != self.event_shape:
            want = ", ".join(map(str, self.event_shape))
            raise ValueError(f"x must have shape (B, {want}), got {tuple(x.shape)}")
        batch = x.shape[0]
        parts = [x.reshape(batch, -1)]
        if self.time_embedding is not None:
            if t is None:
                raise ValueError("t is required: this MLP is time-dependent (time_dim > 0)")
            parts.append(self.time_embedding(self._batch_time(t, x)))
        elif t is not None:
            raise ValueError("t given but this MLP is time-free (time_dim=0)")
        if y is not None or self.label_embedding is not None:
            parts.append(self._embed_labels(y, batch, x.device).to(x.dtype))
        return self.body(torch.cat(parts, dim=1)).reshape(batch, *self.out_shape)

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """Upper bound on the Lipschitz constant of ``x -> net(x, t, y)`` (any fixed t, y).

        ``||W_1[:, :D]||_2 * prod_{l >= 2} ||W_l||_2 * L_act^depth``, where ``W_1[:, :D]`` is the
        block of the first layer that reads ``x`` (time and label features are constants here)
        and ``||.||_2`` is the exact largest singular value. Evaluated with the weights the net
        uses in eval mode (spectral normalisation's stored power-iteration vectors).
        """
        was_training = self.training
        self.eval()
        try:
            linears = [m for m in self.body if isinstance(m, nn.Linear)]
            in_x = math.prod(self.event_shape)
            weights = [linears[0].weight[:, :in_x]] + [layer.weight for layer in linears[1:]]
            norms = [float(torch.linalg.matrix_norm(w.double(), ord=2)) for w in weights]
        finally:
            self.train(was_training)
        depth = len(linears) - 1
        return math.prod(norms) * activation_lipschitz(self.activation) ** depth
