"""Dynamics: the worked examples' closed forms, their laws under simulation (OU transient and
stationary moments, Langevin toward a Gaussian mixture), construction errors, and the figures.

Statistical checks use fixed seeds and tolerances of about 5 standard errors plus the
discretisation bias of the scheme, stated next to each assert.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from flowdiff.distributions import Gaussian, GaussianMixture, IsotropicGaussian
from flowdiff.dynamics import (
    ODE,
    SDE,
    BrownianMotion,
    FunctionSDE,
    LangevinDynamics,
    LinearODE,
    OrnsteinUhlenbeck,
    VectorFieldODE,
)
from flowdiff.paths import GaussianMixtureOracle
from flowdiff.solvers import simulate, time_grid

F64 = torch.float64


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float = 1.0) -> float:
    """Unbiased squared MMD with a Gaussian kernel (Gretton et al. 2012, eq. 3)."""

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(a, b).square() / (2 * bandwidth**2))

    n, m = len(x), len(y)
    kxx, kyy = kernel(x, x), kernel(y, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * kernel(x, y).mean())


# ---------------------------------------------------------------- closed forms


def test_linear_flow_solves_its_ode() -> None:
    ode = LinearODE(theta=0.8)
    x0 = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.rand(5, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    flow = ode.flow(x0, t)
    # d/dt phi_t(x0) = u_t(phi_t(x0)), and phi_0 = id
    (dflow,) = torch.autograd.grad(flow.sum(), t)
    torch.testing.assert_close(dflow, ode.drift(flow, t).sum(1).detach())
    torch.testing.assert_close(ode.flow(x0, 0.0), x0)
    # semigroup: phi_s(phi_t(x)) = phi_{s+t}(x)
    torch.testing.assert_close(ode.flow(ode.flow(x0, 0.3), 0.5), ode.flow(x0, 0.8))


def test_ou_moments_solve_their_moment_odes() -> None:
    # m' = -theta m and v' = -2 theta v + sigma^2 with m(0) = x0, v(0) = 0 (Ito calculus)
    ou = OrnsteinUhlenbeck(theta=1.3, sigma=0.7)
    t = torch.linspace(0.01, 3.0, 7, dtype=F64, requires_grad=True)
    var = ou.variance(t)
    (dvar,) = torch.autograd.grad(var.sum(), t)
    torch.testing.assert_close(dvar, -2 * 1.3 * var.detach() + 0.7**2)
    assert float(ou.variance(0.0)) == 0.0
    assert math.isclose(ou.stationary_std, 0.7 / math.sqrt(2.6))
    assert math.isclose(float(ou.variance(torch.tensor(50.0, dtype=F64))), ou.stationary_std**2)
    x0 = torch.ones(2, 2, dtype=F64)
    torch.testing.assert_close(ou.mean(x0, 1.0), x0 * math.exp(-1.3))
    bm = BrownianMotion(sigma=0.5)
    torch.testing.assert_close(bm.variance(torch.tensor([0.0, 2.0])), torch.tensor([0.0, 0.5]))
    torch.testing.assert_close(bm.mean(x0, 3.0), x0)


def test_langevin_drift_is_half_sigma_squared_score() -> None:
    mix = GaussianMixture.symmetric_2d(n_modes=3, radius=2.0, std=0.5)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    t = torch.zeros(7)
    for target in (mix, mix.score):  # a density with .score, or the score function itself
        lang = LangevinDynamics(target, sigma=0.6)
        torch.testing.assert_close(lang.drift(x, t), 0.18 * mix.score(x))
        assert lang.diffusion(x, t) == 0.6 and lang.additive_noise


def test_wrappers_pass_conditioning_and_constants() -> None:
    def net(x: torch.Tensor, t: torch.Tensor, *, y: torch.Tensor) -> torch.Tensor:
        return x * y[:, None] + t[:, None]

    x, t, y = torch.ones(3, 2), torch.full((3,), 0.5), torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(VectorFieldODE(net, y=y).drift(x, t), x * y[:, None] + 0.5)
    with pytest.raises(TypeError, match="unexpected keyword"):
        VectorFieldODE(net, label=y).drift(x, t)  # a typo is not silently dropped
    sde = FunctionSDE(lambda x, t: -x, 0.3)
    assert sde.diffusion(x, t) == 0.3 and sde.additive_noise
    assert not FunctionSDE(lambda x, t: -x, lambda x, t: x.abs()).additive_noise
    assert isinstance(sde, SDE) and isinstance(sde, ODE)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: LinearODE(math.nan), ValueError, "theta must be a finite number"),
        (lambda: OrnsteinUhlenbeck(theta=0.0), ValueError, "theta must be > 0"),
        (lambda: OrnsteinUhlenbeck(sigma=-1.0), ValueError, "sigma must be a finite number >= 0"),
        (lambda: BrownianMotion(sigma="1"), TypeError, "sigma must be a number"),
        (lambda: LangevinDynamics(3.0), TypeError, "score"),
        (lambda: LangevinDynamics(lambda x: -x, sigma=0.0), ValueError, "sigma must be > 0"),
        (lambda: VectorFieldODE(3), TypeError, "net must be callable"),
        (lambda: FunctionSDE(None, 1.0), TypeError, "drift must be callable"),
        (lambda: FunctionSDE(lambda x, t: x, math.inf), ValueError, "diffusion must be a finite"),
        (lambda: FunctionSDE(lambda x, t: x, 1.0, additive_noise=False), ValueError, "contradicts"),
        (lambda: ODE(), TypeError, "abstract"),
    ],
)
def test_bad_construction_raises(build, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_langevin_rejects_a_time_dependent_score_at_construction() -> None:
    """The oracle's score(x, t) has the .score of a density but takes t too: the error comes at
    construction, naming the signature and the fix, not as a TypeError at the first drift."""
    oracle = GaussianMixtureOracle(GaussianMixture.symmetric_2d(n_modes=3, radius=2.0))
    with pytest.raises(TypeError, match=r"GaussianMixtureOracle.score\(x, t\) cannot be called"):
        LangevinDynamics(oracle)
    with pytest.raises(TypeError, match=r"the score function\(x, y\) cannot"):
        LangevinDynamics(lambda x, y: x)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    fixed = LangevinDynamics(lambda x: oracle.score(x, 1.0), sigma=1.0)
    torch.testing.assert_close(fixed.drift(x, torch.zeros(5)), 0.5 * oracle.score(x, 1.0))
    LangevinDynamics(lambda x, scale=2.0: -scale * x)  # extra parameters with defaults are fine


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: GaussianMixture.symmetric_2d(std=-1.0), ValueError, r"std must be .* -1.0"),
        (lambda: GaussianMixture.symmetric_2d(std=0.0), ValueError, r"std must be .* got 0.0"),
        (lambda: GaussianMixture.symmetric_2d(n_modes=2.5), ValueError, "n_modes must be an int"),
        (lambda: GaussianMixture.symmetric_2d(n_modes=0), ValueError, "n_modes must be an int"),
        (lambda: GaussianMixture.symmetric_2d(radius=math.nan), ValueError, "radius must be"),
        (lambda: GaussianMixture.random_2d(std=-0.5), ValueError, "std must be"),
        (lambda: GaussianMixture.random_2d(n_modes=2.5), ValueError, "n_modes must be an int"),
        (lambda: GaussianMixture.random_2d(scale=math.nan), ValueError, "scale must be"),
        (lambda: GaussianMixture([[0.0, math.nan]], 1.0), ValueError, "means has 1 non-finite"),
        (lambda: GaussianMixture([[0.0, 0.0]], math.inf), ValueError, "covs has 1 non-finite"),
        (lambda: GaussianMixture([[0.0], [1.0]], [1.0, 0.0]), ValueError, r"positive, got \[1"),
        (lambda: GaussianMixture([[0.0]], 1.0, [math.nan]), ValueError, "weights must be"),
        (lambda: GaussianMixture.symmetric_2d().sample(0), ValueError, "n must be an integer"),
        (lambda: GaussianMixture.symmetric_2d().sample(-3), ValueError, "n must be an integer"),
        (lambda: IsotropicGaussian(2).sample(0), ValueError, "n must be an integer >= 1, got 0"),
        (lambda: IsotropicGaussian(2, std=0.0), ValueError, "std must be"),
        (lambda: Gaussian(torch.zeros(2), torch.eye(2)).sample(2.5), ValueError, "n must be an"),
    ],
)
def test_bad_distribution_arguments_raise(build, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        build()


# ---------------------------------------------------------------- laws under simulation


def test_ou_transient_moments_match_closed_forms() -> None:
    ou, n = OrnsteinUhlenbeck(theta=1.0, sigma=0.8), 20_000
    x0 = torch.full((n, 1), 3.0, dtype=F64)
    times = torch.tensor([0.25, 1.0], dtype=F64)
    sol = simulate(
        ou,
        x0,
        time_grid(80, dtype=F64),
        "stochastic_heun",
        save=times,
        generator=torch.Generator().manual_seed(0),
    )
    assert sol.xs is not None
    for t, x in zip(times.tolist(), sol.xs):
        var = float(ou.variance(t))
        # 5 standard errors; Heun's bias at h = 1/80 is ~1e-5, far below
        assert abs(float(x.mean()) - 3.0 * math.exp(-t)) < 5 * math.sqrt(var / n)
        assert abs(float(x.var()) - var) < 5 * var * math.sqrt(2 / n)


@pytest.mark.parametrize("name", ["euler_maruyama", "stochastic_heun"])
def test_ou_forgets_a_far_start_and_reaches_its_stationary_law(name: str) -> None:
    ou, n = OrnsteinUhlenbeck(theta=2.0, sigma=1.0), 20_000
    x0 = torch.full((n, 2), 10.0)  # 14 stationary stds away
    sol = simulate(ou, x0, time_grid(400, t1=8.0), name, generator=torch.Generator().manual_seed(1))
    std = ou.stationary_std  # 0.5
    # after t = 8 the start is forgotten (10 e^{-16} ~ 1e-6); at h = 0.02 Euler-Maruyama's
    # stationary variance is sigma^2 / (theta (2 - theta h)), 2% high: tolerance 5 SE + 3%
    assert abs(float(sol.x.mean())) < 5 * std / math.sqrt(2 * n)
    assert abs(float(sol.x.var()) / std**2 - 1) < 5 * math.sqrt(2 / (2 * n)) + 0.03


def test_langevin_reaches_a_gaussian_mixture() -> None:
    mix = GaussianMixture.symmetric_2d(n_modes=4, radius=2.0, std=0.7)
    gen = torch.Generator().manual_seed(0)
    n = 2000
    x0 = torch.tensor([4.0, 4.0]) + 0.5 * torch.randn(n, 2, generator=gen)  # off to one side
    reference = mix.sample(n, generator=gen)
    sol = simulate(
        LangevinDynamics(mix), x0, time_grid(150, t1=15.0), "stochastic_heun", generator=gen
    )
    # at the start MMD^2 ~ 0.83; two exact samples of this size give |MMD^2| < 1e-3, and the
    # chain measured 2e-4 at t = 15 (seeds 0-3); the bound leaves room for bias and noise
    assert mmd2(x0, reference) > 0.5
    assert mmd2(sol.x, reference) < 2e-3


# ---------------------------------------------------------------- figures


@pytest.mark.parametrize(
    ("name", "kwargs", "size"),
    [
        ("plot_linear_ode", {"starts": 5, "steps": 10}, (600, 400)),
        ("plot_euler_vs_exact", {"step_counts": (2, 8)}, (600, 400)),
        ("plot_brownian_motion", {"sigmas": (0.5, 1.0), "paths": 3, "steps": 50}, (800, 400)),
        ("plot_ornstein_uhlenbeck", {"sigmas": (0.5,), "paths": 3, "steps": 50}, (400, 400)),
        ("plot_langevin", {"times": (0.0, 1.0), "n": 200, "steps_per_unit": 10}, (800, 400)),
    ],
)
def test_figures_write_readable_pngs(tmp_path, name: str, kwargs: dict, size: tuple) -> None:
    from flowdiff.viz import dynamics as figures

    path = getattr(figures, name)(tmp_path / f"{name}.png", **kwargs)
    with Image.open(path) as image:
        image.load()  # decodes the whole file
        assert image.format == "PNG" and image.size == size  # 400 px per panel (viz.figures)
        assert len(image.getcolors(maxcolors=1 << 20) or []) > 20  # something was drawn
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temp file left


def test_figures_reject_bad_arguments(tmp_path) -> None:
    from flowdiff.viz import dynamics as figures

    with pytest.raises(ValueError, match="sigmas must be a non-empty list"):
        figures.plot_ornstein_uhlenbeck(tmp_path / "ou.png", sigmas=(0.5, -1.0))
    with pytest.raises(ValueError, match="times must start at 0 and increase"):
        figures.plot_langevin(tmp_path / "l.png", times=(0.0, 2.0, 1.0))
