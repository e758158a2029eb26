"""The shared model interface: registry, data units, EMA swap, and save/load refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from flowdiff.data import Normalizer, load_data
from flowdiff.families import CNF, DDPM, GAN, VAE, LatentFlow, RealNVP
from flowdiff.models import FlowModel, GenerativeModel, model_class, registered_models

FAMILIES = {
    "gan": lambda: GAN(2),
    "vae": lambda: VAE(2),
    "realnvp": lambda: RealNVP(2, n_layers=2, hidden=16),
    "ddpm": lambda: DDPM(2, num_steps=25),
    "cnf": lambda: CNF(2, hidden=16, steps=2),
    "latent_flow": lambda: LatentFlow(2, latent_dim=2),
    "flow": lambda: FlowModel(2),
}


def test_every_family_is_registered_and_named_errors_suggest() -> None:
    assert set(FAMILIES) <= set(registered_models())
    with pytest.raises(ValueError, match="did you mean 'realnvp'"):
        model_class("realnvpp")


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_samples_come_back_in_data_units(kind: str) -> None:
    """A model fitted on normalised data samples in data units: ``inverse`` of model units."""
    torch.manual_seed(0)
    model = FAMILIES[kind]()
    scale = torch.tensor([3.0, 0.5])
    raw = torch.randn(64, 2) * scale + torch.tensor([10.0, -2.0])
    normalizer = Normalizer.fit(raw, "standard")
    model.normalization = normalizer.to_dict()
    options = {"steps": 2} if kind in ("flow", "cnf", "latent_flow") else {}
    data_units = model.sample(16, generator=torch.Generator().manual_seed(3), **options)
    model_units = model.sample(
        16, generator=torch.Generator().manual_seed(3), denormalize=False, **options
    )
    torch.testing.assert_close(data_units, normalizer.inverse(model_units))


@pytest.mark.parametrize("kind", ["realnvp", "cnf", "flow"])
def test_log_prob_in_data_units_adds_the_log_determinant(kind: str) -> None:
    """``log p_data(x) = log p_model(z) - sum log std`` for ``z = (x - mean) / std``."""
    torch.manual_seed(0)
    model = FAMILIES[kind]()
    raw = torch.randn(64, 2) * torch.tensor([3.0, 0.5]) + 1.0
    normalizer = Normalizer.fit(raw, "standard")
    model.normalization = normalizer.to_dict()
    x = raw[:8]
    z = normalizer.forward(x)
    options = {} if kind == "realnvp" else {"solver": "rk4", "steps": 4}
    expected = model.log_prob(z, normalize=False, **options) - normalizer.std.log().sum()
    torch.testing.assert_close(model.log_prob(x, **options), expected, rtol=1e-5, atol=1e-5)


def test_fit_records_the_normaliser_of_flowdiff_data() -> None:
    data = load_data("moons", n=256, generator=torch.Generator().manual_seed(0))
    model = RealNVP(2, n_layers=2, hidden=8)
    model.fit(data, steps=2, batch_size=32, progress=False)
    assert Normalizer.from_dict(model.normalization) == data.normalizer


def test_averaged_swaps_in_ema_weights_and_restores() -> None:
    model = RealNVP(2, n_layers=1, hidden=4)
    name, param = next(iter(model.named_parameters()))
    original = param.detach().clone()
    model.ema_state = {name: torch.full_like(param, 7.0)}
    with model.averaged():
        assert torch.equal(dict(model.named_parameters())[name], torch.full_like(param, 7.0))
    assert torch.equal(dict(model.named_parameters())[name], original)
    with model.averaged(enabled=False):
        assert torch.equal(dict(model.named_parameters())[name], original)


def test_save_load_refuses_other_files(tmp_path: Path) -> None:
    model = RealNVP(2, n_layers=1, hidden=4)
    path = model.save(tmp_path / "m.safetensors")
    assert isinstance(GenerativeModel.load(path), RealNVP)
    with pytest.raises(ValueError, match="'realnvp' model, not a 'gan' model"):
        GAN.load(path)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ValueError, match=r"cut\.safetensors"):
        GenerativeModel.load(truncated)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a flowdiff model"):
        GenerativeModel.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        GenerativeModel.load(tmp_path / "none.safetensors")


def test_bad_event_shape_and_labels() -> None:
    with pytest.raises(ValueError, match="event_shape"):
        RealNVP((2, 0))
    model = FlowModel(2, num_classes=3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        model.check_labels(torch.tensor([0, 3]), 2)
    with pytest.raises(ValueError, match="non-finite"):
        model.check_data(torch.tensor([[0.0, math.nan]]))
