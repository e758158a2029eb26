"""Gaussian, linear and Brownian-bridge paths: conditional laws, velocities, conversions."""

import itertools
import json
import math

import pytest
import torch
from scipy import stats

from flowdiff.dynamics import VectorFieldODE
from flowdiff.paths import (
    AffinePath,
    BrownianBridgePath,
    GaussianPath,
    LinearPath,
    path_from_config,
)
from flowdiff.solvers import simulate

SCHEDULES = ["linear", "sqrt", "cosine", "vp", "linear_vp", "polynomial"]
PARAMS = ["velocity", "x1", "epsilon", "score"]


def _pair(gen, shape=(64, 3), dtype=torch.float64):
    x0 = torch.randn(shape, generator=gen, dtype=dtype)
    x1 = 2.0 + torch.randn(shape, generator=gen, dtype=dtype)
    return x0, x1


def _representations(path, x1, eps, t):
    """Every parameterisation of the pair (x1, eps) at t, by definition (module notes)."""
    _, c = path.coefficients(t, x1)
    x = c.alpha * x1 + c.beta * eps
    values = {
        "x1": x1,
        "epsilon": eps,
        "velocity": c.d_alpha * x1 + c.d_beta * eps,
        "score": -eps / c.beta,
    }
    return x, values


# ---------------------------------------------------------------------- conditional path
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_conditional_samples_follow_the_gaussian_law(schedule, t, gen):
    """x_t | x1 ~ N(alpha_t x1, beta_t^2 I): moments and a KS test at a fixed seed."""
    n = 20_000
    path = GaussianPath(schedule)
    x1 = torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64).expand(n, 3)
    x0 = path.sample_x0(x1, generator=gen)
    x_t = path.sample(x0, x1, t).x_t
    v = path.schedule(torch.tensor(t, dtype=torch.float64))
    mean, std = v.alpha * x1[0], v.beta
    # mean within 5 standard errors; variance within 5 standard errors of the sample variance
    assert ((x_t.mean(0) - mean).abs() <= 5 * std / math.sqrt(n)).all()
    assert ((x_t.var(0) / std**2 - 1).abs() <= 5 * math.sqrt(2 / n)).all()
    z = ((x_t - mean) / std).flatten().numpy()
    assert stats.kstest(z, "norm").pvalue > 1e-3


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_velocity_is_the_time_derivative_of_the_path(schedule, gen):
    path = GaussianPath(schedule)
    x0, x1 = _pair(gen)
    t = torch.linspace(0.05, 0.95, x1.shape[0], dtype=torch.float64)
    h = 1e-6
    s = path.sample(x0, x1, t)
    fd = (path.sample(x0, x1, t + h).x_t - path.sample(x0, x1, t - h).x_t) / (2 * h)
    torch.testing.assert_close(s.dx_t, fd, rtol=1e-6, atol=1e-7)
    # the conditional vector field u_t(x | x1) evaluated on the path is that derivative
    torch.testing.assert_close(path.conditional_vector_field(s.x_t, x1, t), s.dx_t)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_conditional_score_is_the_gradient_of_the_conditional_log_density(schedule, gen):
    path = GaussianPath(schedule)
    _, x1 = _pair(gen)
    x = torch.randn(x1.shape, generator=gen, dtype=torch.float64).requires_grad_(True)
    t = torch.linspace(0.05, 0.95, x1.shape[0], dtype=torch.float64)
    v = path.schedule(t)
    log_p = -0.5 * ((x - v.alpha[:, None] * x1) ** 2).sum(1) / v.beta**2
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    torch.testing.assert_close(path.conditional_score(x.detach(), x1, t), grad)


def test_sample_accepts_any_event_shape_and_time_format(gen):
    path = GaussianPath("cosine")
    x1 = torch.randn(5, 3, 4, 4, generator=gen)
    x0 = path.sample_x0(x1, generator=gen)
    by_float = path.sample(x0, x1, 0.3)
    by_tensor = path.sample(x0, x1, torch.full((5,), 0.3))
    by_scalar = path.sample(x0, x1, torch.tensor(0.3))
    assert by_float.x_t.shape == x1.shape and by_float.t.shape == (5,)
    torch.testing.assert_close(by_float.x_t, by_tensor.x_t)
    torch.testing.assert_close(by_scalar.dx_t, by_tensor.dx_t)
    assert by_float.x0 is x0 and by_float.x1 is x1


def test_sample_x0_is_seeded_standard_normal(gen):
    path = GaussianPath()
    like = torch.zeros(4000, 2)
    a = path.sample_x0(like, generator=torch.Generator().manual_seed(3))
    b = path.sample_x0(like, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == like.dtype
    assert stats.kstest(a.flatten().numpy(), "norm").pvalue > 1e-3
    p_init = path.p_init((2,))
    torch.testing.assert_close(p_init.log_prob(a), -0.5 * (a**2).sum(1) - math.log(2 * math.pi))


# ---------------------------------------------------------------------- conversions
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_conversions_agree_with_the_definitions_in_every_direction(schedule, gen):
    """From any parameterisation of (x1, eps), convert gives every other one (float64)."""
    path = GaussianPath(schedule)
    eps, x1 = _pair(gen)
    t = torch.linspace(0.02, 0.98, x1.shape[0], dtype=torch.float64)
    x, values = _representations(path, x1, eps, t)
    for source, target in itertools.product(PARAMS, PARAMS):
        out = path.convert(values[source], x, t, source=source, target=target)
        torch.testing.assert_close(
            out, values[target], rtol=1e-10, atol=1e-10, msg=f"{source} -> {target}"
        )
        back = path.convert(out, x, t, source=target, target=source)
        torch.testing.assert_close(back, values[source], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conversions_are_finite_at_the_endpoints(schedule, dtype, gen):
    path = GaussianPath(schedule)
    value = torch.randn(8, 2, generator=gen, dtype=dtype)
    x = torch.randn(8, 2, generator=gen, dtype=dtype)
    for t, source, target in itertools.product([0.0, 1.0], PARAMS, PARAMS):
        out = path.convert(value, x, t, source=source, target=target)
        assert torch.isfinite(out).all(), (t, source, target)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_safe_directions_stay_exact_at_the_endpoints(schedule, gen):
    """Directions that divide by no vanishing coefficient are exact at t=0 and t=1: from the
    velocity to anything but the score at t=1, from the score to epsilon, epsilon -> score at 0."""
    path = GaussianPath(schedule)
    eps, x1 = _pair(gen)
    for t in (0.0, 1.0):
        _, c = path.coefficients(t, x1)
        x = c.alpha * x1 + c.beta * eps
        values = {"x1": x1, "epsilon": eps, "velocity": c.d_alpha * x1 + c.d_beta * eps}
        for target, expected in values.items():
            out = path.convert(values["velocity"], x, t, source="velocity", target=target)
            torch.testing.assert_close(out, expected, msg=f"t={t} velocity -> {target}")
    x, values = _representations(path, x1, eps, 0.0)
    out = path.convert(values["score"], x, 0.0, source="score", target="epsilon")
    torch.testing.assert_close(out, eps)
    torch.testing.assert_close(path.convert(eps, x, 0.0, source="epsilon", target="score"), -eps)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("t", [0.0, 1.0])
def test_score_and_velocity_convert_exactly_at_the_endpoints(schedule, t, gen):
    """In the pair (x1_hat, s): x = alpha x1_hat - beta^2 s and u = d_alpha x1_hat - beta d_beta s
    (module notes). At t=1, score -> velocity is exact: u_1 = x + s/2 for sqrt, where going
    through eps_hat = -beta_1 s = 0 gave u_1 = x. Velocity -> score is exact wherever the score
    is determined by u: at t=0 (unless d_alpha_0 = 0) and at t=1 iff beta d_beta != 0 there."""
    path = GaussianPath(schedule)
    x1_hat, s = _pair(gen)
    _, c = path.coefficients(t, x1_hat)
    x = c.alpha * x1_hat - c.beta**2 * s
    u = c.d_alpha * x1_hat - c.beta_d_beta * s
    if t == 1.0:
        out = path.convert(s, x, t, source="score", target="velocity")
        torch.testing.assert_close(out, u, rtol=1e-12, atol=1e-12)
    det = float(c.beta[0] ** 2 * c.d_alpha[0] - c.alpha[0] * c.beta_d_beta[0])
    expected = {1.0: ("sqrt", "vp", "linear_vp"), 0.0: tuple(set(SCHEDULES) - {"polynomial"})}
    assert (det > 0) == (schedule in expected[t])
    if det > 0:
        out = path.convert(u, x, t, source="velocity", target="score")
        torch.testing.assert_close(out, s, rtol=1e-12, atol=1e-12)


def test_guard_bounds_the_division_near_the_endpoint(gen):
    """Below |beta| = guard the denominator is +-guard: x1 -> epsilon at t=1 is (x - x1)/guard."""
    path = GaussianPath("linear", guard=1e-3)
    x, x1 = _pair(gen)
    out = path.convert(x1, x, 1.0, source="x1", target="epsilon")
    torch.testing.assert_close(out, (x - x1) / 1e-3)
    # exact just outside the guard band
    t = 1 - 2e-3
    torch.testing.assert_close(
        path.convert(x1, x, t, source="x1", target="epsilon"), (x - t * x1) / (1 - t)
    )


# ---------------------------------------------------------------------- linear path, any source
def _circles(n, gen):
    angle = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
    radius = 1.0 + (torch.rand(n, generator=gen) < 0.5).double()
    return radius[:, None] * torch.stack([angle.cos(), angle.sin()], 1)


def _checkerboard(n, gen):
    cell = torch.randint(0, 8, (n,), generator=gen)
    row, col = cell // 2, 2 * (cell % 2) + (cell // 2) % 2  # squares with even row + column
    corner = torch.stack([col, row], 1).double() - 2.0
    return corner + torch.rand(n, 2, generator=gen, dtype=torch.float64)


class _Circles:
    def sample(self, n, *, generator=None):
        return _circles(n, generator)


def test_linear_path_between_non_gaussian_endpoints(gen):
    """Circles -> checkerboard: endpoints, straight velocity, derivative and conversions."""
    path = LinearPath(source=_Circles())
    x1 = _checkerboard(500, gen)
    x0 = path.sample_x0(x1, generator=gen)
    assert torch.allclose(x0.norm(dim=1).round(), x0.norm(dim=1))  # radii 1 and 2
    torch.testing.assert_close(path.sample(x0, x1, 0.0).x_t, x0)
    torch.testing.assert_close(path.sample(x0, x1, 1.0).x_t, x1)
    t = torch.rand(500, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    s = path.sample(x0, x1, t)
    torch.testing.assert_close(s.dx_t, x1 - x0)
    torch.testing.assert_close(s.x_t, t[:, None] * x1 + (1 - t[:, None]) * x0)
    h = 1e-6
    fd = (path.sample(x0, x1, t + h).x_t - path.sample(x0, x1, t - h).x_t) / (2 * h)
    torch.testing.assert_close(fd, s.dx_t, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(path.conditional_vector_field(s.x_t, x1, t), x1 - x0)
    # 'epsilon' is the x0 prediction on a non-Gaussian path
    torch.testing.assert_close(
        path.convert(s.dx_t, s.x_t, t, source="velocity", target="epsilon"), x0
    )
    torch.testing.assert_close(path.convert(x0, s.x_t, t, source="epsilon", target="x1"), x1)


def test_linear_path_has_no_score_and_needs_a_source(gen):
    path = LinearPath()
    x = torch.randn(4, 2, generator=gen)
    with pytest.raises(ValueError, match="unknown target parameterisation for linear 'score'"):
        path.convert(x, x, 0.5, source="velocity", target="score")
    with pytest.raises(ValueError, match="no source distribution"):
        path.sample_x0(x)
    with pytest.raises(TypeError, match="sample"):
        LinearPath(source=object())


# ---------------------------------------------------------------------- Brownian bridge
def test_brownian_bridge_marginals_and_velocity(gen):
    sigma, n = 0.7, 20_000
    path = BrownianBridgePath(sigma)
    x0 = torch.tensor([-1.0, 2.0], dtype=torch.float64).expand(n, 2)
    x1 = torch.tensor([3.0, 0.5], dtype=torch.float64).expand(n, 2)
    for t in (0.25, 0.5, 0.9):
        x_t = path.sample(x0, x1, t, generator=gen).x_t
        mean, std = t * x1[0] + (1 - t) * x0[0], sigma * math.sqrt(t * (1 - t))
        assert ((x_t.mean(0) - mean).abs() <= 5 * std / math.sqrt(n)).all()
        assert stats.kstest(((x_t - mean) / std).flatten().numpy(), "norm").pvalue > 1e-3
    # dx_t is the derivative at fixed noise: same generator seed at t +- h
    t, h = torch.linspace(0.05, 0.95, 64, dtype=torch.float64), 1e-6
    a, b = x0[:64], x1[:64]

    def at(time):
        return path.sample(a, b, time, generator=torch.Generator().manual_seed(7))

    fd = (at(t + h).x_t - at(t - h).x_t) / (2 * h)
    torch.testing.assert_close(at(t).dx_t, fd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(path.conditional_vector_field(at(t).x_t, b, t, x0=a), at(t).dx_t)


def test_brownian_bridge_field_transports_its_marginals(gen):
    """Solving dx = u_t(x | x0, x1) dt from N(mu_0.1, sigma^2 0.09) lands on N(mu_0.9, ...)."""
    sigma, n = 0.5, 4000
    path = BrownianBridgePath(sigma)
    x0 = torch.tensor([[-2.0, 1.0]], dtype=torch.float64).expand(n, 2)
    x1 = torch.tensor([[2.0, -1.0]], dtype=torch.float64).expand(n, 2)
    start = path.sample(x0, x1, 0.1, generator=gen).x_t
    field = VectorFieldODE(lambda x, t: path.conditional_vector_field(x, x1, t, x0=x0))
    end = simulate(field, start, torch.linspace(0.1, 0.9, 41), solver="rk4").x
    expected = path.sample(x0, x1, 0.9, generator=torch.Generator().manual_seed(1)).x_t
    # the flow is affine here, so it maps the std sigma sqrt(.09) onto itself exactly
    torch.testing.assert_close(end.std(0), start.std(0), rtol=1e-6, atol=0)
    assert ((end.mean(0) - expected.mean(0)).abs() < 0.05).all()


# ---------------------------------------------------------------------- configs and bad input
@pytest.mark.parametrize(
    "path",
    [GaussianPath("vp"), AffinePath("cosine"), LinearPath(guard=1e-3), BrownianBridgePath(0.3)],
    ids=["gaussian", "affine", "linear", "bridge"],
)
def test_path_config_round_trip(path, gen):
    rebuilt = path_from_config(json.loads(json.dumps(path.config)))
    assert type(rebuilt) is type(path) and rebuilt.config == path.config
    x0, x1 = _pair(gen)
    a = path.sample(x0, x1, 0.4, generator=torch.Generator().manual_seed(0))
    b = rebuilt.sample(x0, x1, 0.4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.x_t, b.x_t)


def test_bad_input_raises(gen):
    path = GaussianPath()
    x0, x1 = _pair(gen)
    with pytest.raises(ValueError, match=r"same shape, got x0 \(64, 3\) and x1 \(64, 2\)"):
        path.sample(x0, x1[:, :2], 0.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        path.sample(x0, x1, 1.5)
    with pytest.raises(ValueError, match=r"shape \(64,\)"):
        path.sample(x0, x1, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="did you mean 'velocity'"):
        path.convert(x1, x0, 0.5, source="veloctiy", target="x1")
    with pytest.raises(ValueError, match=r"value must have the shape of x \(64, 3\)"):
        path.convert(x1[:3], x0, 0.5, source="x1", target="score")
    with pytest.raises(TypeError, match=r"x1 must be a torch\.Tensor"):
        path.sample(x0, x1.tolist(), 0.5)
    with pytest.raises(ValueError, match="guard must be"):
        GaussianPath(guard=0.0)
    with pytest.raises(ValueError, match="sigma must be"):
        BrownianBridgePath(-1.0)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        BrownianBridgePath(1.0).sample(x0, x1, -0.2)
    with pytest.raises(ValueError, match="did you mean 'gaussian'"):
        path_from_config({"name": "gausian"})
    with pytest.raises(ValueError, match="unknown target parameterisation for brownian_bridge"):
        BrownianBridgePath(1.0).convert(x1, x0, 0.5, source="velocity", target="x1")
