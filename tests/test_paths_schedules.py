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
