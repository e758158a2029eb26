"""FlowModel / DiffusionModel as user-facing objects: networks, descriptions, save/load, shapes,
normalisation, EMA and every bad input (a clear ValueError / TypeError naming the argument)."""

import json

import pytest
import torch
from torch import nn

from flowdiff import nets
from flowdiff.data import load_data
from flowdiff.models import DiffusionModel, FlowModel, GenerativeModel

TINY_MLP = {"type": "mlp", "event_shape": [2], "hidden": 32, "depth": 2}
QUICK = {"batch_size": 64, "lr": 3e-3, "progress": False, "log_every": 10}


def tiny(kind=FlowModel, **kwargs):
    torch.manual_seed(0)
    net = dict(TINY_MLP, num_classes=kwargs.get("num_classes"))
    return kind(2, net=net, **kwargs)


def two_blobs(n=256, seed=0):
    """Points around (-2, 0) (label 0) and (2, 0) (label 1)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 2, generator=gen) * 0.3 + torch.stack([4.0 * y - 2, 0 * y], dim=1)
    return x, y


# ---------------------------------------------------------------------- networks and config
@pytest.mark.parametrize(
    ("shape", "net_type"),
    [((2,), nets.MLP), ((1, 8, 8), nets.UNet), ((3, 7, 7), nets.MLP), ((2, 1, 4, 4), nets.MLP)],
)
def test_default_network_by_event_shape(shape, net_type):
    model = FlowModel(shape, num_classes=3)
    assert isinstance(model.net, net_type)
    assert model.net.num_classes == 3


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        (FlowModel, {"path": "cosine", "time_sampler": "logit_normal", "coupling": "ot"}),
        (
            DiffusionModel,
            {
                "path": {"name": "vp", "beta_min": 0.2, "beta_max": 25.0},
                "prediction": "score",
                "num_classes": 4,
                "label_dropout": 0.2,
                "time_sampler": {"name": "uniform", "t_min": 0.01, "t_max": 1.0},
            },
        ),
    ],
)
def test_config_is_json_and_rebuilds_the_same_model(kind, options):
    model = tiny(kind, **options)
    config = model.config()
    assert json.loads(json.dumps(config)) == config
    assert kind(**config).config() == config
    assert model.kind == {FlowModel: "flow", DiffusionModel: "diffusion"}[kind]


def test_save_load_samples_identically(tmp_path):
    model = tiny(DiffusionModel, num_classes=2)
    data = load_data("moons", n=256, generator=torch.Generator().manual_seed(0))
    model.fit(data, steps=20, ema_decay=0.9, **QUICK)
    assert model.ema_state is not None and model.normalization is not None
    path = model.save(tmp_path / "model.safetensors")
    loaded = GenerativeModel.load(path)
    assert isinstance(loaded, DiffusionModel)
    assert loaded.config() == model.config()
    assert loaded.normalization == model.normalization
    for options in ({}, {"sigma": 0.0, "solver": "rk4"}, {"y": 1, "guidance": 2.0}):
        a = model.sample(50, steps=10, generator=torch.Generator().manual_seed(5), **options)
        b = loaded.sample(50, steps=10, generator=torch.Generator().manual_seed(5), **options)
        assert torch.equal(a, b), options
    with pytest.raises(ValueError, match="not a 'flow' model"):
        FlowModel.load(path)


def test_model_with_a_foreign_network_cannot_be_described(tmp_path):
    class Field(nn.Module):
        def forward(self, x, t):
            return -x

    model = FlowModel(2, net=Field())
    assert model.sample(4, steps=2).shape == (4, 2)  # works in memory
    with pytest.raises(TypeError, match=r"no flowdiff\.nets config"):
        model.save(tmp_path / "m.safetensors")


# ---------------------------------------------------------------------- any event shape
@pytest.mark.parametrize(
    ("kind", "shape"),
    [(FlowModel, (8, 3)), (DiffusionModel, (2, 1, 4, 4))],
    ids=["point_cloud", "video"],
)
def test_point_clouds_and_videos_train_and_sample(kind, shape):
    """Data = a fixed template (a point cloud or a short video) plus noise of std 0.05: after a
    short training the samples have the template's shape, mean and small spread, far from the
    N(0, I) they start from (a mixed-up axis would scramble the template)."""
    gen = torch.Generator().manual_seed(0)
    template = torch.randn(shape, generator=gen)
    data = template + 0.05 * torch.randn(512, *shape, generator=gen)
    torch.manual_seed(0)
    model = kind(shape)
    model.fit(data, steps=300, **QUICK)
    x = model.sample(256, steps=20, generator=gen)
    assert x.shape == (256, *shape)
    assert (x.mean(0) - template).abs().max() < 0.15
    assert x.std(0).mean() < 0.25


# ---------------------------------------------------------------------- normalisation and EMA
def test_fit_on_loaded_data_records_and_inverts_the_normalisation():
    data = load_data("moons", n=256, generator=torch.Generator().manual_seed(0))
    model = tiny()
    model.fit(data, steps=5, **QUICK)
    assert model.normalization == data.normalizer.to_dict()
    kwargs = {"steps": 4, "return_solution": True}
    raw = model.sample(30, generator=torch.Generator().manual_seed(1), **kwargs)
    z = model.sample(30, generator=torch.Generator().manual_seed(1), denormalize=False, **kwargs)
    torch.testing.assert_close(raw.x, data.normalizer.inverse(z.x))
    for s in range(len(z.ts)):
        torch.testing.assert_close(raw.xs[s], data.normalizer.inverse(z.xs[s]))


def test_sampling_uses_the_ema_weights_by_default():
    model = tiny()
    model.fit(two_blobs()[0], steps=30, ema_decay=0.9, **QUICK)
    ema = model.sample(20, steps=4, generator=torch.Generator().manual_seed(0))
    raw = model.sample(20, steps=4, use_ema=False, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(ema, raw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(model.ema_state[name])
    manual = model.sample(20, steps=4, use_ema=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ema, manual)


# ---------------------------------------------------------------------- bad input
def test_data_with_nans_is_refused():
    x = two_blobs()[0]
    x[7, 1] = float("nan")
    model = tiny()
    with pytest.raises(ValueError, match="non-finite"):
        model.fit(x, steps=1, **QUICK)
    with pytest.raises(ValueError, match="non-finite"):
        model.loss(x)


def test_loaded_model_refuses_data_of_another_event_shape(tmp_path):
    loaded = GenerativeModel.load(tiny().save(tmp_path / "m.safetensors"))
    wrong = torch.randn(16, 3)
    with pytest.raises(ValueError, match=r"shape \(B, 2\).*got \(16, 3\)"):
        loaded.fit(wrong, steps=1, **QUICK)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        loaded.loss(wrong)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        loaded.log_prob(wrong)


def test_labels_must_be_in_range():
    model = tiny(num_classes=2)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 2\), got values 2\.\.2"):
        model.sample(4, y=2)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        model.sample(2, y=torch.tensor([0, -1]), guidance=2.0)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        model.sample(4, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"integer class labels, got dtype torch\.bool"):
        model.sample(2, y=torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"integer class labels, got dtype torch\.float32"):
        model.sample(4, y=1.0)
    x, y = two_blobs()
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        model.fit((x, y + 1), steps=1, **QUICK)
    with pytest.raises(ValueError, match="unconditional"):
        tiny().sample(4, y=0)


def test_guidance_needs_a_conditional_model_and_labels():
    with pytest.raises(ValueError, match=r"guidance=3\.0 needs a class-conditional model"):
        tiny().sample(4, y=0, guidance=3.0)
    conditional = tiny(num_classes=2)
    with pytest.raises(ValueError, match="needs the labels y"):
        conditional.sample(4, guidance=3.0)
    with pytest.raises(ValueError, match="guidance must be finite"):
        conditional.sample(4, y=0, guidance=float("inf"))
    with pytest.raises(TypeError, match="guidance must be a float"):
        conditional.sample(4, y=0, guidance="strong")
    untrained_null = tiny(num_classes=2, label_dropout=0.0)
    with pytest.warns(UserWarning, match="label_dropout=0"):
        untrained_null.sample(4, y=0, guidance=3.0)


def test_sampler_arguments_are_checked():
    model = tiny()
    with pytest.raises(ValueError, match="unknown solver 'rk5'; did you mean 'rk4'"):
        model.sample(4, solver="rk5")
    with pytest.raises(ValueError, match="integrates ODEs but dynamics is an SDE"):
        model.sample(4, solver="rk4", sigma=1.0)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0, got -1"):
        model.sample(4, sigma=-1.0)
    with pytest.raises(TypeError, match="sigma must be a number"):
        model.sample(4, sigma="high")
    with pytest.raises(ValueError, match=r"sigma\(t\) must return .* shape \(4,\)"):
        model.sample(4, sigma=lambda t: torch.ones(3))
    with pytest.raises(ValueError, match=r"sigma\(t\) must be finite and >= 0, got values in \[-1"):
        model.sample(4, sigma=lambda t: -t - 1)
    with pytest.raises(ValueError, match=r"sigma\(t\) must be finite and >= 0, got nan"):
        model.sample(4, sigma=lambda t: float("nan"))
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        model.sample(0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        model.sample(4, steps=0)
    with pytest.raises(ValueError, match="t_eps must be a float in"):
        model.sample(4, t_eps=0.7)
    with pytest.raises(ValueError, match="phase must be 'model'"):
        model.loss(two_blobs()[0], phase="discriminator")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prediction": "velocity"}, ValueError, "prediction must be 'epsilon' or 'score'"),
        ({"label_dropout": 1.0}, ValueError, r"label_dropout must be a number in \[0, 1\)"),
        ({"path": "linaer"}, ValueError, "did you mean 'linear'"),
        ({"time_sampler": "normal"}, ValueError, "time sampler"),
        ({"coupling": "optimal"}, ValueError, "coupling"),
        ({"net": 3}, TypeError, "net must be None, a flowdiff.nets config dict or an nn.Module"),
        ({"net": {"type": "mlp", "event_shape": [2]}, "num_classes": 3}, ValueError, "num_classes"),
        ({"net": {"type": "resnet"}}, ValueError, "unknown network type"),
    ],
)
def test_bad_model_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DiffusionModel(2, **kwargs)
