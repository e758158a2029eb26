"""Networks for vector fields: an MLP for any event shape, a U-Net for images, embeddings.

Every network follows ``net(x, t, y=None) -> tensor shaped like x``, has a JSON-able
:attr:`~flowdiff.nets.base.Net.config` and is rebuilt by :func:`build`.
"""

from flowdiff.nets.base import Net, build, registered_nets
from flowdiff.nets.layers import (
    ACTIVATIONS,
    LabelEmbedding,
    TimeEmbedding,
    activation_lipschitz,
    make_activation,
    maybe_spectral_norm,
)
from flowdiff.nets.mlp import MLP, mlp
from flowdiff.nets.unet import UNet

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "LabelEmbedding",
    "Net",
    "TimeEmbedding",
    "UNet",
    "activation_lipschitz",
    "build",
    "make_activation",
    "maybe_spectral_norm",
    "mlp",
    "registered_nets",
]
