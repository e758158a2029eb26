"""Networks: shapes for every event layout, embeddings, config round trips, Lipschitz bounds."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from flowdiff.nets import (
    ACTIVATIONS,
    MLP,
    LabelEmbedding,
    TimeEmbedding,
    UNet,
    activation_lipschitz,
    build,
    make_activation,
    mlp,
)


def _randomise(net: nn.Module, gen: torch.Generator, scale: float = 0.2) -> nn.Module:
    """Give every parameter random values, so zero-initialised layers do not hide a path."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen))
    return net


# ---------------------------------------------------------------------------- time embedding
def test_time_embedding_matches_formula_and_has_constant_norm() -> None:
    emb = TimeEmbedding(64, max_period=10_000.0, scale=1000.0)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    g = emb(t)
    assert g.shape == (101, 64) and g.dtype == torch.float64
    # Highest frequency `scale`, lowest `scale / max_period`, sines first then cosines.
    torch.testing.assert_close(g[:, 0], torch.sin(1000.0 * t), rtol=0, atol=1e-5)
    torch.testing.assert_close(g[:, 31], torch.sin(0.1 * t), rtol=0, atol=1e-7)
    torch.testing.assert_close(g[:, 32], torch.cos(1000.0 * t), rtol=0, atol=1e-5)
    # sin^2 + cos^2 = 1 for each of the 32 frequencies.
    torch.testing.assert_close(g.square().sum(1), torch.full((101,), 32.0, dtype=torch.float64))


def test_time_embedding_separates_nearby_times_and_is_lipschitz() -> None:
    emb = TimeEmbedding(64)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)  # spacing 1e-3
    dist = torch.cdist(emb(t), emb(t))
    dist.fill_diagonal_(float("inf"))
    # Two times 1e-3 apart are ~1.5 apart in feature space (the features have norm sqrt 32).
    assert dist.min() > 1.0
    # ||g(t) - g(s)|| <= ||w|| |t - s|, with equality to first order as s -> t.
    lipschitz = float(emb.frequencies.double().norm())
    gaps = torch.cdist(t[:, None], t[:, None])
    dist.fill_diagonal_(0.0)
    assert bool((dist <= lipschitz * gaps + 1e-9).all())
    h = 1e-7
    ratio = (emb(t[:5] + h) - emb(t[:5])).norm(dim=1) / (lipschitz * h)
    torch.testing.assert_close(ratio, torch.ones(5, dtype=torch.float64), rtol=1e-3, atol=0)


def test_time_embedding_bad_input() -> None:
    with pytest.raises(ValueError, match="dim must be an even integer"):
        TimeEmbedding(63)
    with pytest.raises(ValueError, match="max_period"):
        TimeEmbedding(8, max_period=-1.0)
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        TimeEmbedding(8)(torch.zeros(4, 1))


# ---------------------------------------------------------------------------- labels
def test_label_embedding_null_label_is_its_own_row() -> None:
    emb = LabelEmbedding(10, 16)
    assert emb.null_label == 10
    table = emb(torch.arange(11))
    assert table.shape == (11, 16)
    # The null label's vector differs from every class vector.
    assert bool(((table[:10] - table[10]).norm(dim=1) > 1e-3).all())
    with pytest.raises(ValueError, match=r"y must lie in \[0, 10\]"):
        emb(torch.tensor([0, 11]))
    with pytest.raises(ValueError, match=r"y must lie in \[0, 10\]"):
        emb(torch.tensor([-1, 3]))
    with pytest.raises(TypeError, match="integer labels"):
        emb(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        emb(torch.zeros(2, 2, dtype=torch.long))


# ---------------------------------------------------------------------------- MLP
@pytest.mark.parametrize("event_shape", [(2,), (5,), (7, 3), (2, 3, 4, 4)])
@pytest.mark.parametrize("num_classes", [None, 4])
def test_mlp_shapes_time_and_label_dependence(
    event_shape: tuple[int, ...], num_classes: int | None, gen: torch.Generator
) -> None:
    net = MLP(event_shape, hidden=32, depth=2, num_classes=num_classes)
    x = torch.randn((6, *event_shape), generator=gen)
    y = None if num_classes is None else torch.randint(0, num_classes, (6,), generator=gen)
    out = net(x, 0.3, y=y)
    assert out.shape == x.shape
    # A float, a 0-d tensor and a (B,) tensor are the same time.
    torch.testing.assert_close(net(x, torch.tensor(0.3), y=y), out)
    torch.testing.assert_close(net(x, torch.full((6,), 0.3), y=y), out)
    # Each sample's output depends on that sample only (no mixing across the batch).
    torch.testing.assert_close(net(x[2:3], 0.3, y=None if y is None else y[2:3]), out[2:3])
    assert (net(x, 0.31, y=y) - out).abs().max() > 1e-4
    if num_classes is not None:
        assert (net(x, 0.3, y=(y + 1) % num_classes) - out).abs().max() > 1e-4
        # No label on a conditional net means the null label.
        torch.testing.assert_close(net(x, 0.3), net(x, 0.3, y=torch.full((6,), num_classes)))


def test_mlp_is_the_3x256_network_of_the_benchmarks() -> None:
    net = MLP(2, hidden=256, depth=3, time_dim=64)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (2 + 64, 256),
        (256, 256),
        (256, 256),
        (256, 2),
    ]
    expected = (66 * 256 + 256) + 2 * (256 * 256 + 256) + (256 * 2 + 2)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_mlp_out_shape_and_time_free_body(gen: torch.Generator) -> None:
    critic = MLP((3, 4), hidden=16, depth=1, out_shape=())
    assert critic(torch.randn(5, 3, 4, generator=gen), 0.5).shape == (5,)
    decoder = MLP(8, hidden=16, depth=2, time_dim=0, num_classes=3, out_shape=(2, 5))
    z = torch.randn(4, 8, generator=gen)
    assert decoder(z, y=torch.tensor([0, 1, 2, 0])).shape == (4, 2, 5)
    with pytest.raises(ValueError, match="time-free"):
        decoder(z, 0.5)
    with pytest.raises(ValueError, match="t is required"):
        critic(torch.randn(5, 3, 4, generator=gen))
    body = mlp(3, 2, hidden=8, depth=0)
    assert len(body) == 1 and body(torch.randn(7, 3, generator=gen)).shape == (7, 2)


def test_mlp_runs_in_float64(gen: torch.Generator) -> None:
    net = MLP(3, hidden=8, depth=1, num_classes=2).double()
    out = net(
        torch.randn(4, 3, generator=gen, dtype=torch.float64), 0.2, y=torch.tensor([0, 1] * 2)
    )
    assert out.dtype == torch.float64


def test_mlp_bad_input(gen: torch.Generator) -> None:
    net = MLP(2, hidden=8, depth=1)
    x = torch.randn(3, 2, generator=gen)
    with pytest.raises(ValueError, match="unconditional"):
        net(x, 0.5, y=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\), got \(3, 3\)"):
        net(torch.randn(3, 3, generator=gen), 0.5)
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(3,\)"):
        net(x, torch.zeros(4))
    with pytest.raises(TypeError):
        net(x, 0.5, z=1)  # an unknown conditioning keyword is never swallowed
    with pytest.raises(TypeError, match="floating-point"):
        net(torch.zeros(3, 2, dtype=torch.long), 0.5)
    cond = MLP(2, hidden=8, depth=1, num_classes=3)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\]"):
        cond(x, 0.5, y=torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        cond(x, 0.5, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(2, activation="swish")
    with pytest.raises(ValueError, match="event_shape"):
        MLP((2, 0))
    with pytest.raises(ValueError, match="depth must be an integer >= 0"):
        MLP(2, depth=-1)


# ---------------------------------------------------------------------------- Lipschitz
def test_activation_lipschitz_constants_are_tight_upper_bounds() -> None:
    x = torch.linspace(-30, 30, 600_001, dtype=torch.float64, requires_grad=True)
    for name in ACTIVATIONS:
        (slope,) = torch.autograd.grad(make_activation(name)(x).sum(), x)
        sup = float(slope.abs().max())
        assert sup <= activation_lipschitz(name) < sup + 1e-4, name
    with pytest.raises(TypeError, match="activation must be a string"):
        make_activation(None)  # type: ignore[arg-type]


def _max_jacobian_norm(net: MLP, x: torch.Tensor, t: float) -> float:
    """Largest spectral norm of d net(x, t) / dx over the rows of x (exact Jacobians)."""
    norms = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda v: net(v[None], t)[0], row)
        norms.append(float(torch.linalg.matrix_norm(jac.reshape(row.numel(), -1), ord=2)))
    return max(norms)


@pytest.mark.parametrize("activation", ["silu", "gelu", "tanh"])
def test_spectral_norm_bounds_the_lipschitz_constant(activation: str, gen: torch.Generator) -> None:
    torch.manual_seed(0)
    plain = MLP(5, hidden=64, depth=3, activation=activation).double()
    normed = MLP(5, hidden=64, depth=3, activation=activation, spectral_norm=True).double()
    with torch.no_grad():  # large weights, so that the plain net is far from 1-Lipschitz
        for p in plain.parameters():
            p.mul_(8.0)
    x = torch.randn(200, 5, generator=gen, dtype=torch.float64)
    for _ in range(30):  # training-mode calls run spectral norm's power iteration
        normed(x, 0.5)
    normed.eval()
    # Each normalised weight has operator norm ~1 (up to the power-iteration estimate), so the
    # bound is at most ~L_act^depth.
    with torch.no_grad():
        for layer in (m for m in normed.body if isinstance(m, nn.Linear)):
            assert abs(float(torch.linalg.matrix_norm(layer.weight, ord=2)) - 1.0) < 0.02
    assert normed.lipschitz_bound() <= activation_lipschitz(activation) ** 3 * 1.02
    for net in (plain, normed):
        bound = net.lipschitz_bound()
        jac = _max_jacobian_norm(net, x[:15], 0.7)
        assert jac <= bound, (jac, bound)
        # Finite differences: ||f(x) - f(x')|| <= L ||x - x'|| for random pairs.
        xp = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            ratios = (net(xp, 0.7) - net(x, 0.7)).norm(dim=1) / (xp - x).norm(dim=1)
        assert float(ratios.max()) <= bound
    # Without normalisation the same architecture is far steeper than the normalised bound.
    assert _max_jacobian_norm(plain, x[:15], 0.7) > 5 * activation_lipschitz(activation) ** 3


# ---------------------------------------------------------------------------- UNet
@pytest.mark.parametrize(
    ("shape", "mults"),
    [((1, 8, 8), (1, 2)), ((1, 8, 8), (1, 2, 2)), ((1, 28, 28), (1, 2)), ((3, 32, 32), (1, 2, 2))],
)
@pytest.mark.parametrize("num_classes", [None, 10])
def test_unet_shapes_and_conditioning(
    shape: tuple[int, int, int],
    mults: tuple[int, ...],
    num_classes: int | None,
    gen: torch.Generator,
) -> None:
    net = UNet(shape[0], base_channels=16, channel_mults=mults, num_classes=num_classes)
    x = torch.randn((3, *shape), generator=gen)
    y = None if num_classes is None else torch.tensor([1, 5, 9])
    # The output convolution starts at zero: the untrained field is exactly 0.
    assert torch.equal(net(x, 0.5, y=y), torch.zeros_like(x))
    _randomise(net, gen).eval()
    out = net(x, torch.tensor([0.1, 0.5, 0.9]), y=y)
    assert out.shape == x.shape
    single = net(x[1:2], torch.tensor([0.5]), y=None if y is None else y[1:2])
    torch.testing.assert_close(single, out[1:2], rtol=1e-4, atol=1e-5)
    assert (net(x, torch.tensor([0.1, 0.51, 0.9]), y=y) - out)[1].abs().max() > 1e-4
    if num_classes is not None:
        assert (net(x, torch.tensor([0.1, 0.5, 0.9]), y=y.flip(0)) - out).abs().max() > 1e-4


def test_unet_attention_and_out_channels(gen: torch.Generator) -> None:
    net = UNet(2, base_channels=8, channel_mults=(1, 2), attention=True, out_channels=4)
    _randomise(net, gen)
    x = torch.randn(2, 2, 8, 8, generator=gen)
    with_attention = net(x, 0.4)
    assert with_attention.shape == (2, 4, 8, 8)
    net.mid_attention = None  # the attention block changes the output
    assert (net(x, 0.4) - with_attention).abs().max() > 1e-4


def test_unet_default_size_for_8x8_digits() -> None:
    net = UNet(1, num_classes=10)
    n_params = sum(p.numel() for p in net.parameters())
    assert 100_000 < n_params < 500_000


def test_unet_bad_input(gen: torch.Generator) -> None:
    net = UNet(1, base_channels=8, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match=r"spatial size \(10, 10\).*divisible by .* = 4"):
        net(torch.randn(2, 1, 10, 10, generator=gen), 0.5)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\), got \(2, 3, 8, 8\)"):
        net(torch.randn(2, 3, 8, 8, generator=gen), 0.5)
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(2, 1, 8, 8, generator=gen), 0.5, y=torch.tensor([0, 1]))
    cond = UNet(1, base_channels=8, num_classes=3)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\]"):
        cond(torch.randn(2, 1, 8, 8, generator=gen), 0.5, y=torch.tensor([0, 7]))
    with pytest.raises(TypeError):
        cond(torch.randn(2, 1, 8, 8, generator=gen), 0.5, label=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="multiple of norm_groups"):
        UNet(1, base_channels=12)
    with pytest.raises(ValueError, match="unknown activation 'mish'"):
        UNet(1, activation="mish")
    with pytest.raises(ValueError, match="channel_mults"):
        UNet(1, channel_mults=())


# ---------------------------------------------------------------------------- config / build
@pytest.mark.parametrize(
    "net",
    [
        MLP((4, 3), hidden=16, depth=2, num_classes=5, activation="gelu", out_shape=(2,)),
        MLP(3, hidden=16, depth=2, spectral_norm=True, activation="softplus"),
        UNet(1, base_channels=8, channel_mults=(1, 2, 2), num_classes=3, attention=True),
        UNet(3, base_channels=8, num_res_blocks=2, spectral_norm=True, activation="tanh"),
    ],
)
def test_build_from_json_config_round_trip(net: nn.Module, gen: torch.Generator) -> None:
    config = json.loads(json.dumps(net.config))  # the description must survive JSON
    assert config["type"] in {"mlp", "unet"}
    _randomise(net, gen, scale=0.1).eval()
    copy = build(config).eval()
    assert copy.config == net.config
    copy.load_state_dict(net.state_dict())
    shape = (4, *net.event_shape) if isinstance(net, MLP) else (4, net.in_channels, 8, 8)
    x = torch.randn(shape, generator=gen)
    y = None if net.num_classes is None else torch.tensor([0, 1, 2, 0])
    assert torch.equal(copy(x, 0.25, y=y), net(x, 0.25, y=y))


def test_build_bad_config() -> None:
    with pytest.raises(ValueError, match=r"unknown network type 'unet2'.*did you mean 'unet'"):
        build({"type": "unet2", "in_channels": 1})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['widht'\]"):
        build({"type": "mlp", "event_shape": [2], "widht": 3})
    with pytest.raises(ValueError, match="'type' key"):
        build({"event_shape": [2]})
    with pytest.raises(TypeError, match="config must be a dict"):
        build("mlp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown activation"):
        build({**MLP(2).config, "activation": "sine"})


def test_null_label_property() -> None:
    assert MLP(2, num_classes=7).null_label == 7
    assert UNet(1, base_channels=8, num_classes=4).null_label == 4
    with pytest.raises(ValueError, match="unconditional"):
        _ = MLP(2).null_label
