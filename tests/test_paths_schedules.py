"""Schedules: derivatives against autograd, endpoints, log-SNR inverse, configs, bad input."""

import json
import math

import pytest
import torch

from flowdiff.paths import (
    LinearSchedule,
    Schedule,
    get_schedule,
    schedule_from_config,
    schedule_names,
)

# Every registered schedule plus non-default parameters (a fractional polynomial exercises the
# clamped derivative at t=0, a milder VP the wider endpoint tolerance).
CASES = [(name, {}) for name in schedule_names()] + [
    ("polynomial", {"n": 0.5}),
    ("polynomial", {"n": 3.0}),
    ("vp", {"beta_min": 0.5, "beta_max": 25.0}),
]
IDS = [f"{n}{kw or ''}" for n, kw in CASES]
# Interior times: derivatives and inverses are checked away from the vertical tangents at t=1.
T_INTERIOR = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_derivatives_match_autograd(name, kw):
    schedule = get_schedule(name, **kw)
    t = T_INTERIOR.clone().requires_grad_(True)
    values = schedule(t)
    # Each entry depends on its own t only, so the gradient of the sum is the derivative.
    (d_alpha,) = torch.autograd.grad(values.alpha.sum(), t, retain_graph=True)
    (d_beta,) = torch.autograd.grad(values.beta.sum(), t)
    torch.testing.assert_close(values.d_alpha, d_alpha, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(values.d_beta, d_beta, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_endpoints_hold_and_values_are_finite(name, kw, dtype):
    schedule = get_schedule(name, **kw)
    v = schedule(torch.tensor([0.0, 1.0], dtype=dtype))
    tol = max(schedule.endpoint_tol, 1e-6)
    assert abs(float(v.alpha[0])) <= tol and abs(float(v.beta[0]) - 1) <= tol
    assert abs(float(v.alpha[1]) - 1) <= tol and abs(float(v.beta[1])) <= tol
    for field in (v.alpha, v.beta, v.d_alpha, v.d_beta):
        assert field.dtype == dtype and torch.isfinite(field).all()


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_schedule_is_monotone_and_keeps_the_shape_of_t(name, kw):
    schedule = get_schedule(name, **kw)
    v = schedule(T_INTERIOR)
    assert (v.d_alpha > 0).all() and (v.d_beta < 0).all()
    assert (v.alpha.diff() > 0).all() and (v.beta.diff() < 0).all()
    for shape in [(), (3,), (2, 4)]:
        assert schedule(torch.full(shape, 0.3)).beta.shape == shape
    assert schedule(0.3).alpha.shape == ()


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_log_snr_inverse_round_trips(name, kw):
    schedule = get_schedule(name, **kw)
    lam = schedule.log_snr(T_INTERIOR)
    assert (lam.diff() > 0).all()  # the SNR increases from noise to data
    torch.testing.assert_close(schedule.t_from_log_snr(lam), T_INTERIOR, rtol=0, atol=1e-10)
    # Unreachable log-SNRs map to the endpoints.
    assert float(schedule.t_from_log_snr(-math.inf)) == 0.0
    assert float(schedule.t_from_log_snr(math.inf)) == 1.0


def test_closed_forms():
    t = T_INTERIOR
    lin, poly1 = get_schedule("linear")(t), get_schedule("polynomial", n=1)(t)
    torch.testing.assert_close(lin.alpha, t)
    torch.testing.assert_close(lin.beta, 1 - t)
    torch.testing.assert_close(poly1.alpha, lin.alpha)
    torch.testing.assert_close(poly1.d_beta, lin.d_beta)
    sqrt = get_schedule("sqrt")(t)
    torch.testing.assert_close(sqrt.beta, torch.sqrt(1 - t))
    # Variance-preserving schedules keep alpha^2 + beta^2 = 1 (VP: Song et al.'s SDE marginal).
    for name in ("cosine", "vp", "linear_vp"):
        v = get_schedule(name)(t)
        torch.testing.assert_close(v.alpha**2 + v.beta**2, torch.ones_like(t))
    # VP: alpha_t = exp(-T(1 - t) / 2) with T(s) = 0.1 s + 9.95 s^2 (beta_min 0.1, beta_max 20).
    s = 1 - t
    torch.testing.assert_close(
        get_schedule("vp")(t).alpha, torch.exp(-0.5 * (0.1 * s + 9.95 * s**2))
    )
    assert get_schedule("vp")(0.0).alpha.item() == pytest.approx(math.exp(-0.5 * 10.05))


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_beta_d_beta_is_half_the_derivative_of_beta_squared(name, kw):
    schedule = get_schedule(name, **kw)
    t = T_INTERIOR.clone().requires_grad_(True)
    values = schedule(t)
    (half_d_beta_sq,) = torch.autograd.grad(0.5 * (values.beta**2).sum(), t)
    torch.testing.assert_close(values.beta_d_beta, half_d_beta_sq, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(values.beta_d_beta, values.beta * values.d_beta)


# (schedule id, endpoint) -> the derivatives that are unbounded there: clamped finite, beyond
# every interior value. Everything else must equal its limit at the endpoint.
UNBOUNDED = {
    ("sqrt", 1.0): {"d_beta"},
    ("vp", 1.0): {"d_beta"},
    ("vp{'beta_min': 0.5, 'beta_max': 25.0}", 1.0): {"d_beta"},
    ("linear_vp", 1.0): {"d_beta"},
    ("polynomial{'n': 0.5}", 0.0): {"d_alpha", "d_beta", "beta_d_beta"},
}
FIELDS = ("alpha", "beta", "d_alpha", "d_beta", "beta_d_beta")


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
@pytest.mark.parametrize("end", [0.0, 1.0])
def test_endpoint_values_are_the_limits(name, kw, end):
    """Each value at t=0 and t=1 against t = 1e-7 inside (float64): bounded ones within 1e-3 (a
    square-root vertical tangent moves beta by sqrt(1e-7) = 3e-4 there); beta_d_beta at t=1 is
    the limit -1/2 (sqrt), -1 (linear_vp), -beta_min/2 (vp), never the 0 of beta_1 * d_beta_1."""
    schedule = get_schedule(name, **kw)
    inside = end + (1e-7 if end == 0.0 else -1e-7)
    at = schedule(torch.tensor(end, dtype=torch.float64))
    near = schedule(torch.tensor(inside, dtype=torch.float64))
    unbounded = UNBOUNDED.get((f"{name}{kw or ''}", end), set())
    for field in FIELDS:
        value, limit = float(getattr(at, field)), float(getattr(near, field))
        assert math.isfinite(value), field
        if field in unbounded:
            assert abs(value) > abs(limit) and value * limit > 0, (field, value, limit)
        else:
            assert abs(value - limit) <= 1e-3 * max(1.0, abs(limit)), (field, value, limit)


def test_beta_d_beta_closed_forms_at_the_data_end():
    one = torch.tensor(1.0, dtype=torch.float64)
    ends = {name: float(get_schedule(name)(one).beta_d_beta) for name in schedule_names()}
    assert ends == pytest.approx(
        {"linear": 0, "sqrt": -0.5, "cosine": 0, "vp": -0.05, "linear_vp": -1, "polynomial": 0},
        abs=1e-12,
    )


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_diffusion_squared_is_beta_squared_times_the_log_snr_rate(name, kw):
    """g_t^2 = beta_t^2 d lambda_t / dt on the interior (autograd), the limit at t=1."""
    schedule = get_schedule(name, **kw)
    t = T_INTERIOR.clone().requires_grad_(True)
    (d_log_snr,) = torch.autograd.grad(schedule.log_snr(t).sum(), t)
    g2 = schedule.diffusion_squared(T_INTERIOR)
    torch.testing.assert_close(g2, schedule(T_INTERIOR).beta ** 2 * d_log_snr, rtol=1e-6, atol=0)
    at_one = float(schedule.diffusion_squared(torch.tensor(1.0, dtype=torch.float64)))
    near_one = float(schedule.diffusion_squared(torch.tensor(1 - 1e-7, dtype=torch.float64)))
    assert at_one == pytest.approx(near_one, abs=1e-5)


def test_diffusion_squared_closed_forms():
    t = T_INTERIOR
    # Song et al. (2021)'s VP SDE: g^2 = beta(s) = beta_min + s (beta_max - beta_min), s = 1 - t
    vp = get_schedule("vp", beta_min=0.5, beta_max=25.0).diffusion_squared(t)
    torch.testing.assert_close(vp, 0.5 + (1 - t) * 24.5, rtol=1e-12, atol=0)
    # linear: 2 beta^2 (1 / t + 1 / (1 - t)) = 2 (1 - t) / t; sqrt: 2 (1 - t) / t + 1
    torch.testing.assert_close(get_schedule("linear").diffusion_squared(t), 2 * (1 - t) / t)
    torch.testing.assert_close(get_schedule("sqrt").diffusion_squared(t), 2 * (1 - t) / t + 1)
    # unbounded at t=0 when alpha_0 = 0: clamped finite and huge
    zero = torch.tensor(0.0, dtype=torch.float64)
    assert 1e15 < float(get_schedule("linear").diffusion_squared(zero)) < math.inf


def test_vertical_tangent_is_clamped_finite():
    # beta = sqrt(1 - t): d_beta -> -inf at t=1, evaluated at 1 - t = machine epsilon.
    for dtype in (torch.float32, torch.float64):
        d_beta = get_schedule("sqrt")(torch.ones((), dtype=dtype)).d_beta
        assert float(d_beta) == pytest.approx(-0.5 / math.sqrt(torch.finfo(dtype).eps))


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_config_round_trip(name, kw):
    schedule = get_schedule(name, **kw)
    rebuilt = schedule_from_config(json.loads(json.dumps(schedule.config)))
    assert rebuilt == schedule and type(rebuilt) is type(schedule)
    torch.testing.assert_close(rebuilt(T_INTERIOR).d_beta, schedule(T_INTERIOR).d_beta)


def test_aliases_and_instances():
    assert isinstance(get_schedule("cond_ot"), LinearSchedule)
    schedule = get_schedule("cosine")
    assert get_schedule(schedule) is schedule
    with pytest.raises(TypeError, match="keyword arguments"):
        get_schedule(schedule, n=2)


@pytest.mark.parametrize("t", [-0.1, 1.0 + 1e-6, float("nan"), torch.tensor([0.5, 1.5])])
def test_time_outside_unit_interval_raises(t):
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        get_schedule("linear")(t)


def test_bad_time_types_raise():
    with pytest.raises(TypeError, match="floating-point"):
        get_schedule("linear")(torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="float or a tensor"):
        get_schedule("linear")("0.5")


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'cosine'"):
        get_schedule("cosin")
    with pytest.raises(TypeError, match="unexpected keyword"):
        get_schedule("linear", n=2)


def test_bad_endpoints_raise():
    # beta_max too small: alpha_0 = exp(-(0.1 + 2.45) / 2) = 0.28 is far from 0.
    with pytest.raises(ValueError, match=r"alpha_0 = 0\.279"):
        get_schedule("vp", beta_max=5.0)

    class Shifted(Schedule):
        def _evaluate(self, t):
            return 0.5 + 0.5 * t, 1 - t, 0.5 * torch.ones_like(t), -torch.ones_like(t)

        def _t_from_log_snr(self, log_snr):
            raise NotImplementedError

    with pytest.raises(ValueError, match=r"alpha_0 = 0.5 .*tolerance 1e-06"):
        Shifted()


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("polynomial", {"n": 0}, "n must be"),
        ("polynomial", {"n": -1.0}, "n must be"),
        ("polynomial", {"n": float("nan")}, "n must be"),
        ("vp", {"beta_min": 0.0}, "beta_min must be"),
        ("vp", {"beta_min": 2.0, "beta_max": 1.0}, "beta_max must be >= beta_min"),
        ("vp", {"endpoint_tol": 0.7}, "endpoint_tol"),
    ],
)
def test_bad_parameters_raise(name, kw, match):
    with pytest.raises(ValueError, match=match):
        get_schedule(name, **kw)


def test_bad_parameter_types_raise():
    with pytest.raises(TypeError, match="n must be a number"):
        get_schedule("polynomial", n=True)
    with pytest.raises(TypeError, match="beta_max must be a number"):
        get_schedule("vp", beta_max="20")


def test_bad_configs_raise():
    with pytest.raises(TypeError, match="config must be a dict"):
        schedule_from_config("linear")
    with pytest.raises(ValueError, match="'name' key"):
        schedule_from_config({"n": 2})
    with pytest.raises(ValueError, match="log_snr"):
        get_schedule("linear").t_from_log_snr(float("nan"))
