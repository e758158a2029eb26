"""``Normalizer``: the stated maps, exact inversion, a bit-for-bit JSON round trip, bad input."""

import json

import pytest
import torch

from flowdiff.data import Normalizer


def roundtrip_json(norm: Normalizer) -> Normalizer:
    return Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))


def test_standard_per_feature_any_event_shape(gen: torch.Generator) -> None:
    scale = torch.tensor([[1.0, 10.0], [0.1, 3.0], [5.0, 0.5]])
    x = torch.randn(400, 3, 2, generator=gen) * scale + torch.tensor([2.0, -7.0])
    norm = Normalizer.fit(x)  # auto: a (3, 2) event is not an image -> standard
    assert norm.kind == "standard" and norm.mean.shape == (3, 2)
    z = norm.forward(x)
    assert torch.allclose(z.mean(0), torch.zeros(3, 2), atol=1e-5)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(3, 2), atol=1e-5)
    assert torch.allclose(norm.inverse(z), x, rtol=1e-6, atol=1e-5)
    back = roundtrip_json(norm)
    assert back == norm and torch.equal(back.forward(x), z)  # float32 -> JSON -> float32: exact


def test_constant_feature_is_only_centred() -> None:
    x = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 5.0]])
    norm = Normalizer.fit(x, "standard")
    z = norm.forward(x)
    assert torch.isfinite(z).all() and torch.equal(z[:, 0], torch.zeros(3))
    assert torch.equal(norm.std[0], torch.tensor(1.0))


def test_images_map_0_max_onto_minus1_1(gen: torch.Generator) -> None:
    x = torch.randint(0, 256, (5, 3, 4, 4), generator=gen).float()
    norm = Normalizer.fit(x, max_value=255)  # auto: (C, H, W) -> images
    assert norm.kind == "images"
    z = norm.forward(torch.tensor([0.0, 127.5, 255.0]).reshape(3, 1, 1, 1))
    assert torch.allclose(z.flatten(), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(norm.inverse(norm.forward(x)), x, atol=1e-4)
    assert Normalizer.fit(x).max_value == float(x.max())  # default: the data's own maximum
    back = roundtrip_json(norm)
    assert back == norm and torch.equal(back.inverse(z), norm.inverse(z))


def test_none_is_identity(gen: torch.Generator) -> None:
    x = torch.randn(4, 2, generator=gen)
    norm = roundtrip_json(Normalizer.fit(x, "none"))
    assert torch.equal(norm.forward(x), x) and torch.equal(norm.inverse(x), x)


def test_bad_input(gen: torch.Generator) -> None:
    x = torch.randn(10, 2, generator=gen)
    with pytest.raises(ValueError, match="normalize must be 'auto' or one of"):
        Normalizer.fit(x, "zscore")
    with pytest.raises(ValueError, match="kind must be one of"):
        Normalizer("zscore")
    with pytest.raises(ValueError, match="non-finite"):
        Normalizer.fit(torch.tensor([[0.0], [float("nan")]]))
    with pytest.raises(ValueError, match="minimum is -1"):
        Normalizer.fit(torch.tensor([[-1.0], [2.0]]), "images")
    with pytest.raises(ValueError, match="positive finite max_value, got 0"):
        Normalizer("images", max_value=0)
    with pytest.raises(ValueError, match="std must be positive"):
        Normalizer("standard", mean=torch.zeros(2), std=torch.tensor([1.0, 0.0]))
    norm = Normalizer.fit(x)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\) .* got \(10, 3\)"):
        norm.forward(torch.randn(10, 3, generator=gen))
    with pytest.raises(TypeError, match="z must be a floating-point tensor"):
        norm.inverse(torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="unexpected key"):
        Normalizer.from_dict({"kind": "none", "scale": 2})
    with pytest.raises(ValueError, match="must be a dict with a 'kind'"):
        Normalizer.from_dict(["standard"])
    with pytest.raises(ValueError, match="mean/std must be nested lists of numbers"):
        Normalizer.from_dict({"kind": "standard", "mean": ["a"], "std": [1.0]})
