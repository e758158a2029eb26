"""Families against closed forms: change of variables, linear-Gaussian VAE, the GAN's optimal
discriminator, DDPM's marginals, reverse chain and bound, and its continuous-time limit.

Nothing here trains a generative model end to end (that is ``test_families_fit.py``); networks
are either set to known maps or given random weights from a seeded generator.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from flowdiff.data import Normalizer
from flowdiff.families import DDPM, GAN, VAE, RealNVP
from flowdiff.families.ddpm import ddpm_betas
from flowdiff.paths import get_schedule


def _randomize(module: nn.Module, std: float, generator: torch.Generator) -> None:
    """Overwrite every parameter with N(0, std^2) draws (a non-trivial, reproducible map)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


# ---------------------------------------------------------------------- RealNVP
@pytest.mark.parametrize("event_shape", [(2,), (2, 3)])
def test_realnvp_log_prob_matches_brute_force_change_of_variables(event_shape, gen):
    """log p(x) = log N(f(x)) + log|det J_f(x)| with J_f from autograd (float64, 1e-9)."""
    flow = RealNVP(event_shape, n_layers=4, hidden=16, depth=1).double()
    _randomize(flow, 0.3, gen)
    x = torch.randn(6, *event_shape, generator=gen, dtype=torch.float64)
    dim = math.prod(event_shape)

    def f_flat(v: Tensor) -> Tensor:
        return flow(v.reshape(1, *event_shape))[0].reshape(dim)

    expected = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(f_flat, xi.reshape(dim))
        z = f_flat(xi.reshape(dim))
        log_base = Normal(0.0, 1.0).log_prob(z).sum()
        expected.append(log_base + torch.linalg.slogdet(jac).logabsdet)
    expected = torch.stack(expected)
    # The map must be far from volume preserving, or a dropped log-det would pass.
    assert flow(x)[1].abs().max() > 0.5
    torch.testing.assert_close(flow.log_prob(x), expected, atol=1e-9, rtol=0)


def test_realnvp_inverse_undoes_forward(gen):
    flow = RealNVP((3, 2, 2), n_layers=5, hidden=16, depth=2).double()
    _randomize(flow, 0.3, gen)
    x = torch.randn(8, 3, 2, 2, generator=gen, dtype=torch.float64)
    z, log_det = flow(x)
    x_back, log_det_inverse = flow.inverse(z)
    assert (z - x).abs().max() > 0.1  # not the identity
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(log_det_inverse, -log_det, atol=1e-10, rtol=0)
    z2 = torch.randn(8, 3, 2, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(flow(flow.inverse(z2)[0])[0], z2, atol=1e-10, rtol=0)


def test_realnvp_density_integrates_to_one(gen):
    """Riemann sum of exp(log_prob) over [-10, 10]^2 (801^2 points) is 1 to 1e-3."""
    flow = RealNVP(2, n_layers=4, hidden=16, depth=1).double()
    _randomize(flow, 0.3, gen)
    u = torch.linspace(-10, 10, 801, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * (u[1] - u[0]) ** 2
    assert abs(float(mass) - 1) < 1e-3


def test_realnvp_starts_as_identity():
    """Zero-initialised couplings: before training p(x) is exactly N(0, I)."""
    flow = RealNVP(3)
    x = torch.linspace(-2, 2, 12).reshape(4, 3)
    torch.testing.assert_close(flow.log_prob(x), Normal(0.0, 1.0).log_prob(x).sum(1))


# ---------------------------------------------------------------------- VAE
def test_vae_prior_kl_matches_torch_and_monte_carlo(gen):
    mu = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    logvar = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    closed = VAE.prior_kl(mu, logvar)
    q = Normal(mu, torch.exp(0.5 * logvar))
    reference = kl_divergence(q, Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(closed, reference, atol=1e-12, rtol=0)
    # Monte Carlo E_q[log q - log p] with 200k draws: standard error ~ 0.01.
    z = mu + torch.exp(0.5 * logvar) * torch.randn(200_000, 5, 3, generator=gen, dtype=mu.dtype)
    mc = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)
    assert ((mc.mean(0) - closed).abs() < 5 * mc.std(0) / math.sqrt(len(mc))).all()


def _linear_gaussian_vae(gen: torch.Generator, learned_std: bool) -> tuple[VAE, Tensor, Tensor]:
    """VAE with linear decoder x = W z + b + s eps (s = 0.5): p(x) = N(b, W W^T + s^2 I).

    W has orthogonal columns so that the exact posterior is diagonal.
    """
    s = 0.5
    vae = VAE(4, latent_dim=2, depth=0, decoder_std=None if learned_std else s).double()
    _randomize(vae, 0.5, gen)
    q, _ = torch.linalg.qr(torch.randn(4, 2, generator=gen, dtype=torch.float64))
    w = q * torch.tensor([1.5, 0.7], dtype=torch.float64)
    (decoder,) = _linears(vae.decoder)
    with torch.no_grad():
        decoder.weight.copy_(w)
        if learned_std:
            vae.log_std.fill_(math.log(s))
    cov = w @ w.T + s**2 * torch.eye(4, dtype=torch.float64)
    return vae, decoder.bias.detach().clone(), cov


@pytest.mark.parametrize("learned_std", [False, True])
def test_vae_elbo_is_log_evidence_minus_posterior_kl(learned_std, gen):
    """Linear-Gaussian VAE, random encoder: E[ELBO] = log p(x) - KL(q(z|x) || p(z|x)) < log p(x).

    Both sides in closed form; E[ELBO] averaged over 4000 reparameterised draws (4.5 SE).
    """
    vae, b, cov = _linear_gaussian_vae(gen, learned_std)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 1.5
    log_px = MultivariateNormal(b, cov).log_prob(x)
    (decoder,) = _linears(vae.decoder)
    w, s2 = decoder.weight.detach(), 0.25
    post_cov = torch.linalg.inv(torch.eye(2, dtype=w.dtype) + w.T @ w / s2)
    post_mean = (x - b) @ w @ post_cov / s2
    mu, logvar = vae.encode(x)
    q = MultivariateNormal(mu.detach(), torch.diag_embed(logvar.detach().exp()))
    gap = kl_divergence(q, MultivariateNormal(post_mean, post_cov))
    assert (gap > 0.05).all()  # a random encoder is not the posterior
    with torch.no_grad():
        draws = vae.elbo(x.repeat(4000, 1), generator=gen).reshape(4000, len(x))
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert ((mean - (log_px - gap)).abs() < 4.5 * se + 1e-6).all()
    assert (mean + 4.5 * se < log_px).all()


def test_vae_importance_weights_are_exact_with_the_true_posterior(gen):
    """With q(z|x) = p(z|x) every weight p(x, z) / q(z | x) equals p(x): L_1 = log p(x) exactly."""
    vae, b, cov = _linear_gaussian_vae(gen, learned_std=False)
    (decoder,), (encoder,) = _linears(vae.decoder), _linears(vae.encoder)
    w, s2 = decoder.weight.detach(), 0.25
    post_var = 1 / (1 + (w * w).sum(0) / s2)  # W^T W is diagonal
    with torch.no_grad():
        # mu = Sigma W^T (x - b) / s^2, logvar = log diag Sigma: both affine in x.
        encoder.weight.copy_(torch.cat([post_var[:, None] * w.T / s2, torch.zeros(2, 4)]))
        encoder.bias.copy_(torch.cat([-post_var * (w.T @ b) / s2, post_var.log()]))
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    log_px = MultivariateNormal(b, cov).log_prob(x)
    torch.testing.assert_close(vae.log_prob(x, n_samples=1, generator=gen), log_px)
    torch.testing.assert_close(vae.log_prob(x, n_samples=16, generator=gen), log_px)


def test_vae_bernoulli_bounds_against_quadrature(gen):
    """Bernoulli VAE with a 1-D latent on the 4 points of {0,1}^2, where p(x) and the exact ELBO
    are 1-D integrals (trapezoid on 4001 points): E[ELBO] matches its quadrature (4.5 SE over
    20000 draws), ELBO < E[L_64] <= log p(x), and E[L_4096] = log p(x) to 0.002 (+ 4.5 SE)."""
    vae = VAE(2, latent_dim=1, hidden=8, depth=1, likelihood="bernoulli").double()
    _randomize(vae.decoder, 1.0, gen)
    # An encoder near the prior: importance sampling with a proposal far from the posterior
    # has heavy-tailed weights, and L_K would converge too slowly to test.
    _randomize(vae.encoder, 0.2, gen)
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    z = torch.linspace(-10, 10, 4001, dtype=torch.float64)
    with torch.no_grad():
        probs = vae.decode(z[:, None])[:, None, :]  # (G, 1, 2)
        log_lik = (x * probs.log() + (1 - x) * (1 - probs).log()).sum(-1)  # (G, 4)
        log_px = torch.trapezoid(
            (log_lik + Normal(0.0, 1.0).log_prob(z)[:, None]).exp(), z, dim=0
        ).log()
        assert abs(float(log_px.exp().sum()) - 1) < 1e-8  # the quadrature itself is accurate
        mu, logvar = vae.encode(x)
        q = Normal(mu[:, 0], (0.5 * logvar[:, 0]).exp()).log_prob(z[:, None]).exp()  # (G, 4)
        exact_elbo = torch.trapezoid(q * log_lik, z, dim=0) - VAE.prior_kl(mu, logvar)
        draws = vae.elbo(x.repeat(20_000, 1), generator=gen).reshape(20_000, 4)
        l64 = vae.log_prob(x.repeat(200, 1), n_samples=64, generator=gen).reshape(200, 4)
        l4096 = vae.log_prob(x.repeat(20, 1), n_samples=4096, generator=gen).reshape(20, 4)
    se = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - exact_elbo).abs() < 4.5 * se).all()
    assert (exact_elbo < l64.mean(0)).all()
    assert (l64.mean(0) < log_px + 4.5 * l64.std(0) / math.sqrt(len(l64))).all()
    se = l4096.std(0) / math.sqrt(len(l4096))
    assert ((l4096.mean(0) - log_px).abs() < 0.002 + 4.5 * se).all()


# ---------------------------------------------------------------------- GAN
def test_gan_discriminator_reaches_the_optimum_for_a_fixed_generator(gen):
    """p_data = N(0, 1), affine generator p_g = N(1, 0.6^2): the trained D approaches
    D*(x) = p_data / (p_data + p_g) (Goodfellow et al., Prop. 1), and the loss at D* is
    log 4 - 2 JSD(p_data || p_g) (Theorem 1's C(G))."""
    torch.manual_seed(0)  # network initialisation
    gan = GAN(1, latent_dim=1, depth=0, discriminator_hidden=32, discriminator_depth=2)
    (affine,) = _linears(gan.generator)
    with torch.no_grad():
        affine.weight.fill_(0.6)
        affine.bias.fill_(1.0)
    p_data, p_g = Normal(0.0, 1.0), Normal(1.0, 0.6)
    optimizer = torch.optim.Adam(gan.optim_groups()["discriminator"], lr=3e-3)
    for _ in range(800):
        optimizer.zero_grad()
        loss = gan.loss(torch.randn(256, 1, generator=gen), phase="discriminator", generator=gen)
        loss.mean().backward()
        optimizer.step()
    grid = torch.linspace(-2.0, 2.5, 46)
    d_star = 1 / (1 + (p_g.log_prob(grid) - p_data.log_prob(grid)).exp())
    with torch.no_grad():
        d = gan.discriminator_prob(grid[:, None])
        final = gan.loss(torch.randn(100_000, 1, generator=gen), phase="discriminator").mean()
    assert (d - d_star).abs().max() < 0.1
    assert (d - d_star).abs().mean() < 0.02
    u = torch.linspace(-12.0, 12.0, 20001, dtype=torch.float64)
    pd, pg = p_data.log_prob(u).exp(), p_g.log_prob(u).exp()
    m = (pd + pg) / 2
    jsd = 0.5 * torch.trapezoid(pd * (pd / m).log(), u) + 0.5 * torch.trapezoid(
        pg * (pg / m).log(), u
    )
    assert abs(float(final) - (math.log(4) - 2 * float(jsd))) < 0.02


@pytest.mark.parametrize("generator_loss", ["minimax", "non_saturating"])
def test_gan_generator_losses_and_gradient_isolation(generator_loss, gen):
    """Generator loss is log(1 - D(G(z))) or -log D(G(z)) of the same fakes; each phase leaves
    gradients on its own player only."""
    gan = GAN(3, latent_dim=2, hidden=16, depth=1, generator_loss=generator_loss)
    x = torch.randn(32, 3, generator=gen)
    seed = torch.Generator().manual_seed(7)
    loss = gan.loss(x, phase="generator", generator=seed)
    with torch.no_grad():
        d_fake = gan.discriminator_prob(gan.sample(32, generator=torch.Generator().manual_seed(7)))
    expected = torch.log1p(-d_fake) if generator_loss == "minimax" else -torch.log(d_fake)
    torch.testing.assert_close(loss.detach(), expected)
    for phase, player, other in [
        ("generator", gan.generator, gan.discriminator),
        ("discriminator", gan.discriminator, gan.generator),
    ]:
        gan.zero_grad(set_to_none=True)
        gan.loss(x, phase=phase, generator=gen).mean().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in player.parameters())
        assert all(p.grad is None for p in other.parameters())
        assert all(p.requires_grad for p in gan.parameters())  # the freeze is undone


def test_gan_alternates_k_discriminator_steps_then_one_generator_step():
    gan = GAN(2, discriminator_steps=3)
    assert gan.training_phases(0) == ["discriminator"] * 3 + ["generator"]
    assert set(gan.optim_groups()) == {"discriminator", "generator"}
    n_params = sum(len(v) for v in gan.optim_groups().values())
    assert n_params == len(list(gan.parameters()))


# ---------------------------------------------------------------------- DDPM
class _GaussianNoiseOracle(nn.Module):
    """Exact E[eps | x_k] for data N(m, diag s^2): x_k = sqrt(abar) x_0 + sqrt(1 - abar) eps
    gives sqrt(1 - abar) (x_k - sqrt(abar) m) / (abar s^2 + 1 - abar). Reads k from t = k/K."""

    def __init__(self, alpha_bars: Tensor, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.alpha_bars, self.mean, self.std = alpha_bars, mean, std
        self.num_steps = len(alpha_bars) - 1

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        abar = self.alpha_bars[torch.round(t * self.num_steps).long()][:, None]
        return (1 - abar).sqrt() * (x - abar.sqrt() * self.mean) / (abar * self.std**2 + 1 - abar)


_DATA_MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
_DATA_STD = torch.tensor([0.5, 2.0], dtype=torch.float64)


def _oracle_ddpm(num_steps: int, variance: str) -> DDPM:
    betas = torch.cat([torch.zeros(1, dtype=torch.float64), ddpm_betas(num_steps)])
    oracle = _GaussianNoiseOracle(torch.cumprod(1 - betas, 0), _DATA_MEAN, _DATA_STD)
    return DDPM(2, num_steps=num_steps, variance=variance, net=oracle).double()


def _reverse_chain_law(ddpm: DDPM) -> tuple[Tensor, Tensor]:
    """Mean and variance of the sampler's output with the oracle net (the chain is linear:
    x_{k-1} = a_k x_k + c_k + sigma_k z, and eps = e1 x + e0), by moment recursion."""
    mean, var = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    for k in range(ddpm.num_steps, 0, -1):
        abar, beta = ddpm.alpha_bars[k], ddpm.betas[k]
        e1 = (1 - abar).sqrt() / (abar * _DATA_STD**2 + 1 - abar)
        e0 = -e1 * abar.sqrt() * _DATA_MEAN
        a = (1 - beta / (1 - abar).sqrt() * e1) / (1 - beta).sqrt()
        c = -beta / (1 - abar).sqrt() * e0 / (1 - beta).sqrt()
        mean, var = a * mean + c, a**2 * var + (ddpm.reverse_variances[k] if k > 1 else 0.0)
    return mean, var


def test_ddpm_closed_form_marginal_matches_the_iterated_chain(gen):
    """q(x_k | x_0) = N(sqrt(abar_k) x_0, 1 - abar_k): exactly against the moment recursion of
    eq. 2 for every k, and statistically against 20000 chains run with ``q_step``."""
    ddpm = DDPM(2, num_steps=50, schedule="cosine").double()
    x0 = torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    mean, var = x0.clone(), torch.zeros_like(x0)
    for k in range(1, 51):
        beta = ddpm.betas[k]
        mean, var = (1 - beta).sqrt() * mean, (1 - beta) * var + beta
        # The tables are stored in float32: agreement to float32 rounding.
        torch.testing.assert_close(mean, ddpm.alpha_bars[k].sqrt() * x0, atol=1e-6, rtol=0)
        torch.testing.assert_close(var, (1 - ddpm.alpha_bars[k]).expand_as(x0), atol=1e-6, rtol=0)
    n = 20_000
    chain = x0.expand(n, 2).clone()
    for k in range(1, 26):
        chain = ddpm.q_step(chain, k, generator=gen)
    direct = ddpm.q_sample(x0.expand(n, 2), 25, generator=gen)
    abar = ddpm.alpha_bars[25]
    for sample in (chain, direct):
        se_mean = (1 - abar).sqrt() / math.sqrt(n)
        assert ((sample.mean(0) - abar.sqrt() * x0[0]).abs() < 4.5 * se_mean).all()
        # Var of a sample variance of a Gaussian: 2 sigma^4 / (n - 1).
        se_var = (1 - abar) * math.sqrt(2 / (n - 1))
        assert ((sample.var(0) - (1 - abar)).abs() < 4.5 * se_var).all()


def test_ddpm_schedules():
    k = torch.arange(1, 1001, dtype=torch.float64)
    linear = ddpm_betas(1000)
    torch.testing.assert_close(linear[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    # Other K: the same ends scaled by 1000 / K (same continuous-time limit).
    torch.testing.assert_close(ddpm_betas(250)[[0, -1]], 4 * linear[[0, -1]])
    cosine = ddpm_betas(1000, "cosine")
    abar = torch.cumprod(1 - cosine, 0)
    f = torch.cos((k / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    f0 = math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    unclipped = cosine < 0.999
    torch.testing.assert_close(abar[unclipped], (f / f0)[unclipped], atol=1e-12, rtol=1e-9)
    assert cosine.max() == 0.999  # only the last step hits the clip


def test_ddpm_chain_converges_to_the_vp_sde_at_first_order():
    """abar_k of the linear schedule vs alpha_t^2 of ``get_schedule("vp")`` at t = 1 - k/K:
    max |log abar_k - log alpha_t^2| shrinks like 1/K (slope -1 +- 0.1 over K = 100..10000)."""
    vp = get_schedule("vp")
    errors = []
    for K in (100, 1000, 10000):
        log_abar = torch.cumsum(torch.log1p(-ddpm_betas(K)), 0)
        t = 1 - torch.arange(1, K + 1, dtype=torch.float64) / K
        errors.append(float((log_abar - 2 * vp(t).alpha.log()).abs().max()))
    slopes = [math.log10(errors[i + 1] / errors[i]) for i in range(2)]
    assert all(abs(s + 1) < 0.1 for s in slopes), (errors, slopes)


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_ancestral_sampler_has_the_law_of_its_reverse_chain(variance, gen):
    """Oracle noise predictor for Gaussian data, K = 200: Algorithm 2's samples have the
    mean/variance of the (linear) reverse chain (4.5 SE over 10000 samples), and that law is
    the data's up to the discretisation (0.05)."""
    ddpm = _oracle_ddpm(200, variance)
    mean, var = _reverse_chain_law(ddpm)
    torch.testing.assert_close(mean, _DATA_MEAN, atol=0.05, rtol=0)
    torch.testing.assert_close(var.sqrt(), _DATA_STD, atol=0.05, rtol=0)
    n = 10_000
    x = ddpm.sample(n, generator=gen)
    assert ((x.mean(0) - mean).abs() < 4.5 * (var / n).sqrt()).all()
    assert ((x.var(0) - var).abs() < 4.5 * var * math.sqrt(2 / (n - 1))).all()


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_elbo_is_a_bound_on_the_model_likelihood(variance, gen):
    """Oracle net: the model's p(x_0) is Gaussian (linear chain + decoder). E[ELBO(x)] <=
    log p(x) (4 SE), and with sigma_k^2 = beta_k the bound is tight to 0.1 nats."""
    ddpm = _oracle_ddpm(200, variance)
    mean, var = _reverse_chain_law(ddpm)
    var = var + ddpm.reverse_variances[1]  # the decoder's N(mu_theta(x_1, 1), sigma_1^2)
    x = _DATA_MEAN + _DATA_STD * torch.randn(4000, 2, generator=gen, dtype=torch.float64)
    log_p = Normal(mean, var.sqrt()).log_prob(x).sum(1)
    gap = ddpm.elbo(x, generator=gen) - log_p
    se = float(gap.std()) / math.sqrt(len(gap))
    assert float(gap.mean()) < 4 * se
    if variance == "beta":
        assert float(gap.mean()) > -0.1


def test_bounds_are_in_data_units_and_ddpm_log_prob_is_its_elbo(gen):
    """A recorded normalisation z = (x - m) / s makes log p_data(x) = log p_model(z) - sum log s:
    the ELBOs of data-unit input equal those of the normalised input plus that closed-form
    log-determinant (same noise), and DDPM's log_prob is its ELBO, a bound, as the CLI's
    ``evaluate --nll`` reads it."""
    normalizer = Normalizer(
        "standard", mean=torch.tensor([1.0, -2.0]), std=torch.tensor([2.0, 4.0])
    )
    x = normalizer.inverse(torch.randn(6, 2, generator=gen))
    z = normalizer.forward(x)
    ddpm = DDPM(2, num_steps=30, net={"type": "mlp", "event_shape": [2], "hidden": 8})
    vae = VAE(2, hidden=8, depth=1)
    for model in (ddpm, vae):
        model.normalization = normalizer.to_dict()
        data = model.elbo(x, generator=torch.Generator().manual_seed(5))
        plain = model.elbo(z, generator=torch.Generator().manual_seed(5), normalize=False)
        torch.testing.assert_close(data, plain - math.log(8.0))
    torch.testing.assert_close(
        ddpm.log_prob(x, generator=torch.Generator().manual_seed(5)),
        ddpm.elbo(x, generator=torch.Generator().manual_seed(5)),
    )


def test_ddpm_loss_matches_the_oracle_posterior_variance(gen):
    """With the exact E[eps | x_k], L_simple averages Var(eps | x_k) = abar s^2 / (abar s^2 +
    1 - abar) over k ~ U{1..K} (2D mean), checked to 4.5 SE over 40000 samples."""
    ddpm = _oracle_ddpm(200, "beta")
    x = _DATA_MEAN + _DATA_STD * torch.randn(40_000, 2, generator=gen, dtype=torch.float64)
    loss = ddpm.loss(x, generator=gen)
    abar = ddpm.alpha_bars[1:, None]
    expected = (abar * _DATA_STD**2 / (abar * _DATA_STD**2 + 1 - abar)).mean()
    assert abs(float(loss.mean()) - float(expected)) < 4.5 * float(loss.std()) / math.sqrt(len(x))


def test_ddpm_sampler_shapes_and_determinism_on_images():
    ddpm = DDPM((1, 4, 4), num_steps=25)  # default net: a U-Net
    first = ddpm.sample(3, generator=torch.Generator().manual_seed(1))
    again = ddpm.sample(3, generator=torch.Generator().manual_seed(1))
    other = ddpm.sample(3, generator=torch.Generator().manual_seed(2))
    assert first.shape == (3, 1, 4, 4) and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert ddpm.loss(first, generator=torch.Generator().manual_seed(0)).shape == (3,)
