"""U-Net vector field for images ``(B, C, H, W)`` (Ronneberger et al., 2015; as used by
Ho et al., 2020, "Denoising Diffusion Probabilistic Models").

Layout, for ``channel_mults = (m_1, ..., m_L)``: a 3x3 input convolution; at each level ``i``,
``num_res_blocks`` residual blocks with ``base_channels * m_i`` channels and (except at the
last level) a stride-2 3x3 convolution; a middle residual block (plus optional self-attention);
the mirror path, whose residual blocks read the matching down-path outputs (skip connections)
and whose upsampling is nearest neighbour + 3x3 conv; GroupNorm, activation and a
zero-initialised 3x3 output convolution, so the untrained field is ``u = 0``. Compared with
DDPM's layout this keeps one skip per residual block and one middle block, which roughly halves
the cost: small images train in minutes on a CPU.

Time enters through :class:`TimeEmbedding` followed by a two-layer MLP, the label through
:class:`LabelEmbedding` (added to the time embedding); every residual block reads the sum as a
FiLM scale and shift of its second GroupNorm: ``h <- GN(h) * (1 + s) + b`` (Perez et al., 2018;
"adaptive group normalisation" of Dhariwal & Nichol, 2021).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowdiff.nets.base import Net
from flowdiff.nets.layers import LabelEmbedding, TimeEmbedding, make_activation, maybe_spectral_norm
from flowdiff.utils import check_tensor, positive_int

__all__ = ["UNet"]


def _zero_init(layer: nn.Module, enabled: bool) -> nn.Module:
    """Zero a layer's weight and bias so a residual branch (or the output) starts at 0.

    Skipped under spectral normalisation, which divides by the (then zero) singular value.
    """
    if enabled:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return layer


class _ResBlock(nn.Module):
    """``x + conv(act(FiLM(GN(conv(act(GN(x)))), emb)))`` with a 1x1 conv on the skip when the
    channel count changes."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        *,
        groups: int,
        activation: str,
        dropout: float,
        spectral_norm: bool,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = maybe_spectral_norm(nn.Conv2d(in_ch, out_ch, 3, padding=1), spectral_norm)
        self.film = nn.Sequential(
            make_activation(activation),
            maybe_spectral_norm(nn.Linear(emb_dim, 2 * out_ch), spectral_norm),
        )
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        conv2 = _zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1), not spectral_norm)
        self.conv2 = maybe_spectral_norm(conv2, spectral_norm)
        self.skip = (
            nn.Identity()
            if in_ch == out_ch
            else maybe_spectral_norm(nn.Conv2d(in_ch, out_ch, 1), spectral_norm)
        )
        self.act = make_activation(activation)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(self.act(h)))
        return self.skip(x) + h


class _SelfAttention(nn.Module):
    """Single-head self-attention over the ``H * W`` positions, residual and zero-initialised."""

    def __init__(self, channels: int, *, groups: int, spectral_norm: bool) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = maybe_spectral_norm(nn.Conv2d(channels, 3 * channels, 1), spectral_norm)
        proj = _zero_init(nn.Conv2d(channels, channels, 1), not spectral_norm)
        self.proj = maybe_spectral_norm(proj, spectral_norm)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(Net):
    """Image vector field ``u_t(x | y)``: ``(B, C, H, W) -> (B, out_channels, H, W)``.

    ``H`` and ``W`` must be divisible by ``2 ** (len(channel_mults) - 1)``: with the default
    ``(1, 2)`` that is 2, so 8x8 digits, 28x28 and 32x32 images all work; ``(1, 2, 2)`` needs 4.

    Args:
        in_channels: image channels ``C``.
        base_channels: channels of the first level (a multiple of ``norm_groups``).
        channel_mults: channel multiplier per resolution level.
        num_res_blocks: residual blocks per level, on each path.
        num_classes: labels for a conditional net (null label ``num_classes``), or ``None``.
        attention: add self-attention in the middle (lowest-resolution) block.
        dropout: dropout probability inside residual blocks.
        out_channels: output channels, default ``in_channels``.
        activation: one of ``silu, gelu, tanh, softplus, relu``.
        spectral_norm: normalise every conv/linear layer (then nothing is zero-initialised).
        norm_groups: GroupNorm groups.
    """

    type_name = "unet"

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        num_classes: int | None = None,
        attention: bool = False,
        dropout: float = 0.0,
        out_channels: int | None = None,
        activation: str = "silu",
        spectral_norm: bool = False,
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        positive_int(in_channels, "in_channels")
        positive_int(base_channels, "base_channels")
        positive_int(num_res_blocks, "num_res_blocks")
        positive_int(norm_groups, "norm_groups")
        mults = tuple(channel_mults)
        if not mults:
            raise ValueError("channel_mults must hold at least one level, got ()")
        for m in mults:
            positive_int(m, "channel_mults entries")
        if base_channels % norm_groups:
            raise ValueError(
                f"base_channels ({base_channels}) must be a multiple of norm_groups ({norm_groups})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        out_channels = in_channels if out_channels is None else out_channels
        positive_int(out_channels, "out_channels")
        self.in_channels = in_channels
        self.size_factor = 2 ** (len(mults) - 1)

        emb_dim = 4 * base_channels
        self.time_embedding = nn.Sequential(
            TimeEmbedding(base_channels),
            maybe_spectral_norm(nn.Linear(base_channels, emb_dim), spectral_norm),
            make_activation(activation),
            maybe_spectral_norm(nn.Linear(emb_dim, emb_dim), spectral_norm),
        )
        self.label_embedding = None if num_classes is None else LabelEmbedding(num_classes, emb_dim)

        def block(cin: int, cout: int) -> _ResBlock:
            return _ResBlock(
                cin,
                cout,
                emb_dim,
                groups=norm_groups,
                activation=activation,
                dropout=dropout,
                spectral_norm=spectral_norm,
            )

        def conv(cin: int, cout: int, **kw: int) -> nn.Module:
            return maybe_spectral_norm(nn.Conv2d(cin, cout, 3, padding=1, **kw), spectral_norm)

        self.conv_in = conv(in_channels, base_channels)
        # Down path; every residual block's output is kept as a skip connection.
        self.down = nn.ModuleList()
        skip_channels = []
        ch = base_channels
        for level, mult in enumerate(mults):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, base_channels * mult))
                ch = base_channels * mult
                skip_channels.append(ch)
            if level < len(mults) - 1:
                self.down.append(conv(ch, ch, stride=2))
        self.mid = block(ch, ch)
        self.mid_attention = (
            _SelfAttention(ch, groups=norm_groups, spectral_norm=spectral_norm)
            if attention
            else None
        )
        # Up path, the mirror image: each residual block reads the matching skip connection;
        # the upsampling convolution already maps to the next level's (smaller) width, which
        # halves its cost at the higher resolution.
        self.up = nn.ModuleList()
        for level in reversed(range(len(mults))):
            for _ in range(num_res_blocks):
                self.up.append(block(ch + skip_channels.pop(), base_channels * mults[level]))
                ch = base_channels * mults[level]
            if level > 0:
                upsample = conv(ch, base_channels * mults[level - 1])
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2.0), upsample))
                ch = base_channels * mults[level - 1]
        self.norm_out = nn.GroupNorm(norm_groups, ch)
        self.act_out = make_activation(activation)
        self.conv_out = maybe_spectral_norm(
            _zero_init(nn.Conv2d(ch, out_channels, 3, padding=1), not spectral_norm),
            spectral_norm,
        )
        self._config = {
            "in_channels": in_channels,
            "base_channels": base_channels,
            "channel_mults": list(mults),
            "num_res_blocks": num_res_blocks,
            "num_classes": num_classes,
            "attention": bool(attention),
            "dropout": float(dropout),
            "out_channels": out_channels,
            "activation": activation,
            "spectral_norm": bool(spectral_norm),
            "norm_groups": norm_groups,
        }

    def forward(self, x: Tensor, t: float | Tensor, y: int | Tensor | None = None) -> Tensor:
        """``x: (B, C, H, W)``, ``t: float | 0-d | (B,)``, ``y: (B,)`` int or ``None`` (null label
        on a conditional net) -> ``(B, out_channels, H, W)``."""
        check_tensor(x, "x")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        if height % self.size_factor or width % self.size_factor:
            raise ValueError(
                f"x has spatial size ({height}, {width}); this UNet needs H and W divisible by "
                f"2**(len(channel_mults) - 1) = {self.size_factor}"
            )
        emb = self.time_embedding(self._batch_time(t, x))
        if y is not None or self.label_embedding is not None:
            emb = emb + self._embed_labels(y, x.shape[0], x.device).to(emb.dtype)

        h = self.conv_in(x)
        skips = []
        for layer in self.down:
            if isinstance(layer, _ResBlock):
                h = layer(h, emb)
                skips.append(h)
            else:
                h = layer(h)
        h = self.mid(h, emb)
        if self.mid_attention is not None:
            h = self.mid_attention(h)
        for layer in self.up:
            if isinstance(layer, _ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.conv_out(self.act_out(self.norm_out(h)))
