"""Sampling a flow / diffusion model is simulating the right ODE or SDE.

The network is replaced by the exact marginal quantity of a Gaussian mixture under the path
(``GaussianMixtureOracle``): then every sampler of the model must reproduce the mixture, whatever
the parameterisation (velocity, score, noise) and whatever the diffusion coefficient: flow as an
SDE, diffusion as its probability-flow ODE (course notes: "flow = diffusion with sigma = 0").
The exact likelihood of the flow must match the mixture's density, and classifier-free guidance
with ``w = 1`` / ``w = 0`` must give the conditional / unconditional laws.
"""

import math

import pytest
import torch
from torch import Tensor, nn

from flowdiff.data import Normalizer
from flowdiff.distributions import GaussianMixture
from flowdiff.dynamics import FunctionSDE
from flowdiff.models import ClassifierFreeGuidance, DiffusionModel, FlowModel
from flowdiff.paths import GaussianMixtureOracle
from flowdiff.solvers import simulate, time_grid

MEANS = torch.tensor([[-2.0, -1.5], [2.5, -1.0], [0.0, 2.5]])
STDS = torch.tensor([0.5, 0.3, 0.4])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])
N = 4000


def mixture(component: int | None = None) -> GaussianMixture:
    """Three well-separated isotropic modes with unequal weights (or one of them alone)."""
    if component is None:
        return GaussianMixture(MEANS, STDS**2, WEIGHTS)
    return GaussianMixture(MEANS[component : component + 1], STDS[component : component + 1] ** 2)


class OracleNet(nn.Module):
    """A "network" that is the exact marginal velocity, score or noise of a mixture."""

    def __init__(self, oracle: GaussianMixtureOracle, prediction: str) -> None:
        super().__init__()
        self.oracle, self.prediction = oracle, prediction

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.prediction == "velocity":
            return self.oracle.vector_field(x, t)
        score = self.oracle.score(x, t)
        if self.prediction == "score":
            return score
        _, c = self.oracle.path.coefficients(t, x)
        return -c.beta * score  # epsilon = E[x0 | x_t] = -beta_t grad log p_t (Tweedie)


class ConditionalOracleNet(nn.Module):
    """Velocity of component ``y`` alone for labels ``0..2``, of the mixture for the null label 3:
    the ideal class-conditional network trained with label dropout."""

    def __init__(self, schedule: str = "linear") -> None:
        super().__init__()
        self.oracles = [GaussianMixtureOracle(mixture(k), schedule) for k in range(3)]
        self.oracles.append(GaussianMixtureOracle(mixture(), schedule))
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        out = torch.empty_like(x)
        for label, oracle in enumerate(self.oracles):
            rows = y == label
            if rows.any():
                out[rows] = oracle.vector_field(x[rows], t[rows])
        return out


def oracle_model(kind: str, prediction: str = "velocity", schedule: str = "linear"):
    net = OracleNet(GaussianMixtureOracle(mixture(), schedule), prediction)
    if kind == "flow":
        return FlowModel(2, net=net, path=schedule)
    return DiffusionModel(2, net=net, path=schedule, prediction=prediction, data_std=None)


def assert_is_mixture(x: Tensor, mix: GaussianMixture, *, mean_tol: float = 0.06) -> None:
    """Mode weights, per-mode means and standard deviations of ``x`` match the mixture.

    Tolerances, for N = 4000: a weight has standard error <= 0.008 (tolerance 0.025, ~3 s.e.); a
    per-mode mean has s.e. <= 0.5 / sqrt(0.2 N) = 0.018 per coordinate (tolerance ``mean_tol``);
    a per-mode standard deviation is checked to 8% (s.e. 1 / sqrt(2 * 800) = 2.5% for the smallest
    mode); doubling the SDE's score term moves it by 30% (``test_law_check_...``).
    """
    assert torch.isfinite(x).all()
    nearest = torch.cdist(x, mix.means.to(x)).argmin(dim=1)
    for k in range(mix.n_components):
        points = x[nearest == k]
        weight = len(points) / len(x)
        assert abs(weight - float(mix.weights[k])) < 0.025, (k, weight)
        assert (points.mean(0) - mix.means[k]).abs().max() < mean_tol, (k, points.mean(0))
        std = points.std(0)
        expected = float(mix.covs[k, 0, 0].sqrt())
        assert ((std / expected - 1).abs() < 0.08).all(), (k, std, expected)


# ---------------------------------------------------------------------- the laws
@pytest.mark.parametrize(
    ("solver", "steps", "sigma"),
    [
        ("midpoint", 20, None),  # the flow's ODE (its default)
        ("euler_maruyama", 400, 1.0),  # constant diffusion
        ("stochastic_heun", 200, lambda t: 2.0 * (1 - t)),  # time-dependent diffusion
    ],
)
def test_flow_model_samples_the_data_as_ode_and_as_sde(solver, steps, sigma, gen):
    model = oracle_model("flow")
    x = model.sample(N, steps=steps, solver=solver, sigma=sigma, generator=gen)
    assert x.shape == (N, 2)
    assert_is_mixture(x, mixture())


@pytest.mark.parametrize("prediction", ["score", "epsilon"])
@pytest.mark.parametrize(
    ("schedule", "solver", "steps", "sigma"),
    [
        ("linear", "euler_maruyama", 400, None),  # the default SDE, sigma_t = beta_t
        ("cosine", "euler_maruyama", 400, 1.5),
        ("linear", "rk4", 25, 0.0),  # probability-flow ODE
        ("cosine", "heun", 50, 0.0),
    ],
)
def test_diffusion_model_samples_the_data_as_sde_and_as_ode(
    prediction, schedule, solver, steps, sigma, gen
):
    model = oracle_model("diffusion", prediction, schedule)
    x = model.sample(N, steps=steps, solver=solver, sigma=sigma, generator=gen)
    # The sampler starts at t_eps = 0.01 from N(0, I) instead of p_{t_eps}: the modes are shifted
    # by at most alpha_{t_eps} |mu| < 0.04 (module docstring of the model), inside the tolerance.
    assert_is_mixture(x, mixture())


def test_sde_and_ode_differ_path_by_path_but_not_in_law(gen):
    """Same noise, two diffusion coefficients: different samples (the SDE is not secretly an
    ODE), the same law (checked above); and sigma = 0 is exactly the ODE."""
    model = oracle_model("flow")
    ode = model.sample(500, steps=50, solver="euler", generator=torch.Generator().manual_seed(1))
    zero = model.sample(
        500,
        steps=50,
        solver="euler_maruyama",
        sigma=0.0,
        generator=torch.Generator().manual_seed(1),
    )
    sde = model.sample(
        500,
        steps=50,
        solver="euler_maruyama",
        sigma=1.0,
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(zero, ode, rtol=0, atol=0)
    assert (sde - ode).norm(dim=1).mean() > 0.1


def test_law_check_detects_a_wrong_score_correction(gen):
    """The law check above has power: the SDE with its score term doubled (drift
    ``u + sigma^2 s`` instead of ``u + sigma^2 / 2 s``) over-concentrates the modes and fails it."""
    oracle = GaussianMixtureOracle(mixture(), "linear")
    wrong = FunctionSDE(lambda x, t: oracle.vector_field(x, t) + oracle.score(x, t), 1.0)
    x0 = torch.randn(N, 2, generator=gen)
    x = simulate(wrong, x0, time_grid(400, t1=0.99), "euler_maruyama", generator=gen).x
    with pytest.raises(AssertionError):
        assert_is_mixture(x, mixture())


def test_trajectory_times_and_nfe(gen):
    flow = oracle_model("flow")
    sol = flow.sample(64, steps=8, solver="midpoint", generator=gen, return_solution=True)
    assert sol.nfe == 16  # two stages per midpoint step
    assert sol.xs.shape == (9, 64, 2)
    torch.testing.assert_close(sol.ts, torch.linspace(0, 1, 9))
    torch.testing.assert_close(sol.xs[-1], sol.x)
    # the trajectory starts from p_init = N(0, I) (mean ~0, std ~1 over 64 points)
    assert sol.xs[0].mean().abs() < 0.3 and (sol.xs[0].std() - 1).abs() < 0.2
    diffusion = oracle_model("diffusion", "epsilon")
    sol = diffusion.sample(16, steps=10, generator=gen, return_solution=True, t_eps=0.02)
    assert sol.nfe == 10  # Euler-Maruyama: one drift evaluation per step
    # a noise prediction cannot give a velocity at t=0 nor a score at t=1: the grid keeps away
    assert math.isclose(float(sol.ts[0]), 0.02, abs_tol=1e-6)
    assert math.isclose(float(sol.ts[-1]), 0.98, abs_tol=1e-6)


# ---------------------------------------------------------------------- likelihood
def test_flow_log_prob_is_the_mixture_density(gen):
    model = oracle_model("flow")
    x = mixture().sample(64, generator=gen)
    torch.testing.assert_close(
        model.log_prob(x, solver="dopri5"), mixture().log_prob(x), rtol=0, atol=1e-3
    )


def test_log_prob_in_data_units_adds_the_normalisation_jacobian(gen):
    """A model of z = (x - m) / s has the data density p_x(x) = p_z((x - m) / s) / prod(s)."""
    model = oracle_model("flow")
    mean, std = torch.tensor([10.0, -3.0]), torch.tensor([2.0, 0.5])
    model.normalization = Normalizer("standard", mean=mean, std=std).to_dict()
    z = mixture().sample(64, generator=gen)
    x = z * std + mean
    expected = mixture().log_prob(z) - std.log().sum()
    torch.testing.assert_close(
        model.log_prob(x, solver="rk4", steps=40), expected, atol=3e-3, rtol=0
    )
    torch.testing.assert_close(
        model.log_prob(z, solver="rk4", steps=40, normalize=False),
        mixture().log_prob(z),
        atol=3e-3,
        rtol=0,
    )
    # and sampling inverts the normalisation
    samples = model.sample(N, steps=10, generator=gen)
    assert_is_mixture((samples - mean) / std, mixture())


def test_diffusion_log_prob_via_probability_flow(gen):
    """The noise model's probability-flow ODE over [t_eps, 1 - t_eps] gives the density of the
    slightly noised data p_{1 - t_eps}, up to starting from N(0, I) in place of p_{t_eps}
    (|log N(0, I) - log p_{t_eps}| = O(t_eps) nats)."""
    model = oracle_model("diffusion", "epsilon")
    x = mixture().sample(32, generator=gen)
    exact = GaussianMixtureOracle(mixture(), "linear").log_prob(x, 0.999)
    log_prob = model.log_prob(x, solver="dopri5", t_eps=1e-3)
    torch.testing.assert_close(log_prob, exact, atol=1e-2, rtol=0)


# ---------------------------------------------------------------------- guidance
def conditional_oracle_model() -> FlowModel:
    return FlowModel(2, net=ConditionalOracleNet(), num_classes=3)


@pytest.mark.parametrize("label", [0, 2])
def test_guidance_weight_one_samples_the_class(label, gen):
    model = conditional_oracle_model()
    x = model.sample(N, steps=10, y=label, guidance=1.0, generator=gen)
    assert_is_mixture(x, mixture(label))


def test_guidance_weight_zero_and_no_label_sample_the_mixture(gen):
    model = conditional_oracle_model()
    unconditional = model.sample(N, steps=10, generator=torch.Generator().manual_seed(0))
    assert_is_mixture(unconditional, mixture())
    guided = model.sample(
        N, steps=10, y=1, guidance=0.0, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(guided, unconditional, rtol=0, atol=1e-5)


def test_strong_guidance_pushes_samples_away_from_other_classes(gen):
    """w > 1 extrapolates away from u(x | null): the class's samples move further from the other
    modes than the conditional (w = 1) samples do, and none lands in another mode."""
    model = conditional_oracle_model()
    seed = torch.Generator().manual_seed(3)
    conditional = model.sample(2000, steps=20, y=2, guidance=1.0, generator=seed)
    seed = torch.Generator().manual_seed(3)
    guided = model.sample(2000, steps=20, y=2, guidance=4.0, generator=seed)

    def distance_to_others(x):
        return torch.cdist(x, MEANS[:2]).min(dim=1).values.mean()

    assert distance_to_others(guided) > distance_to_others(conditional) + 0.1
    assert (torch.cdist(guided, MEANS).argmin(dim=1) == 2).all()


def test_guided_evaluation_is_one_network_call_per_step(gen):
    model = conditional_oracle_model()
    sol = model.sample(8, steps=5, solver="rk4", y=0, guidance=2.0, return_solution=True)
    assert sol.nfe == 20 and model.net.calls == 20


def test_guidance_wrapper_is_the_affine_combination():
    """(1 - w) net(x, t, null) + w net(x, t, y), exactly, for a net whose output encodes the
    label it was given and the time; a batch of mismatched labels is refused."""

    def net(x, t, y):
        return x + t[:, None] + 10.0 * y[:, None].to(x.dtype)

    x, t, y = torch.randn(5, 2), torch.rand(5), torch.tensor([0, 1, 2, 1, 0])
    for w in (0.0, 1.0, 3.5, -0.5):
        guided = ClassifierFreeGuidance(net, w, null_label=3)(x, t, y=y)
        expected = (1 - w) * net(x, t, torch.full_like(y, 3)) + w * net(x, t, y)
        torch.testing.assert_close(guided, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"y must have shape \(5,\)"):
        ClassifierFreeGuidance(net, 2.0, null_label=3)(x, t, y=y[:3])
