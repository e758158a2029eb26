"""Bad input to the families raises ValueError/TypeError naming the argument and what was
expected."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flowdiff.families import DDPM, GAN, VAE, LatentFlow, RealNVP
from flowdiff.models import FlowModel

X2 = torch.zeros(4, 2)


class _WrongShapeNet(nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (
            lambda: GAN(2, generator_loss="wasserstein"),
            ValueError,
            "unknown generator_loss 'wasserstein'",
        ),
        (
            lambda: GAN(2, discriminator_steps=0),
            ValueError,
            "discriminator_steps must be an integer >= 1",
        ),
        (
            lambda: GAN(2, latent_dim=True),
            ValueError,
            "latent_dim must be an integer >= 1, got True",
        ),
        (lambda: VAE(2, likelihood="poisson"), ValueError, "unknown likelihood 'poisson'"),
        (
            lambda: VAE(2, likelihood="bernoulli", decoder_std=0.1),
            ValueError,
            "decoder_std applies",
        ),
        (lambda: VAE(2, decoder_std=-1.0), ValueError, "decoder_std must be a positive finite"),
        (lambda: RealNVP(1), ValueError, "at least 2 coordinates"),
        (lambda: RealNVP(2, n_layers=0), ValueError, "n_layers must be an integer >= 1"),
        (lambda: RealNVP(2, scale_bound=0.0), ValueError, "scale_bound must be a positive"),
        (lambda: DDPM(2, schedule="quadratic"), ValueError, "unknown schedule 'quadratic'"),
        (lambda: DDPM(2, variance="learned"), ValueError, "unknown variance 'learned'"),
        (lambda: DDPM(2, num_steps=10), ValueError, "num_steps must be >= 21"),
        (lambda: DDPM(2, beta_start=0.1, beta_end=0.01), ValueError, "beta_start <= beta_end"),
        (lambda: DDPM(2, net="mlp"), TypeError, "net must be an nn.Module, a config dict or None"),
        (lambda: LatentFlow(2, vae_steps=-1), ValueError, "vae_steps must be an int >= 0"),
        (lambda: LatentFlow(3, vae=VAE(2)), ValueError, r"vae has event_shape \(2,\)"),
        (lambda: LatentFlow(2, latent_dim=3, vae=VAE(2, latent_dim=2)), ValueError, "latent_dim=3"),
        (lambda: LatentFlow(2, latent_dim=2, flow=FlowModel(3)), ValueError, r"event_shape \(2,\)"),
        (lambda: LatentFlow(2, vae=GAN(2)), TypeError, "vae must be a VAE"),
        (lambda: LatentFlow(2, flow="flow"), TypeError, "flow must be a GenerativeModel"),
    ],
)
def test_bad_constructor_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


MODELS = {
    "gan": lambda: GAN(2, hidden=8, depth=1),
    "vae": lambda: VAE(2, hidden=8, depth=1),
    "realnvp": lambda: RealNVP(2, n_layers=2, hidden=8, depth=1),
    "ddpm": lambda: DDPM(2, num_steps=30, net={"type": "mlp", "event_shape": [2], "hidden": 8}),
    "latent_flow": lambda: LatentFlow(2, latent_dim=2),
}
PHASE = {
    "gan": "generator",
    "vae": "model",
    "realnvp": "model",
    "ddpm": "model",
    "latent_flow": "flow",
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bad_batches_and_arguments_are_rejected(name):
    model = MODELS[name]()
    phase = PHASE[name]
    with pytest.raises(
        ValueError, match=r"x must have shape \(B, 2\) for this model, got \(4, 3\)"
    ):
        model.loss(torch.zeros(4, 3), phase=phase)
    with pytest.raises(ValueError, match="x has 1 non-finite value"):
        model.loss(torch.tensor([[0.0, float("nan")]]), phase=phase)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        model.loss(torch.zeros(4, 2, dtype=torch.long), phase=phase)
    with pytest.raises(ValueError, match="unknown phase 'critic'"):
        model.loss(X2, phase="critic")
    with pytest.raises(ValueError, match="y given but this model is unconditional"):
        model.loss(X2, torch.zeros(4, dtype=torch.long), phase=phase)
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        model.sample(0)


def test_family_specific_bad_input():
    vae = VAE(2, likelihood="bernoulli", hidden=8)
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\] for the bernoulli likelihood"):
        vae.elbo(torch.tensor([[0.5, 1.5]]))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 2\), got \(3, 4\)"):
        vae.decode(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="n_samples must be an integer >= 1"):
        vae.log_prob(X2, n_samples=0)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 3\) for this model"):
        RealNVP(3).inverse(torch.zeros(2, 2))
    ddpm = DDPM(2, num_steps=30)
    with pytest.raises(ValueError, match=r"k must lie in \[1, 30\], got values 0..0"):
        ddpm.reverse_step(X2, 0)
    with pytest.raises(ValueError, match=r"k must lie in \[0, 30\], got values 31..31"):
        ddpm.q_sample(X2, 31)
    with pytest.raises(TypeError, match="k must hold integer steps"):
        ddpm.q_sample(X2, torch.tensor(0.5))
    with pytest.raises(ValueError, match=r"k must be an int or have shape \(4,\), got \(2,\)"):
        ddpm.q_step(X2, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"noise must have the shape of x0 \(4, 2\)"):
        ddpm.q_sample(X2, 3, noise=torch.zeros(4, 3))
    bad_net = DDPM(2, num_steps=30, net=_WrongShapeNet())
    with pytest.raises(ValueError, match=r"net must return the shape of x \(4, 2\), got \(4, 1\)"):
        bad_net.loss(X2)
    with pytest.raises(TypeError, match=r"has no flowdiff\.nets config"):
        bad_net.config()
