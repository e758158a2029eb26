"""Solvers: convergence orders against closed forms, adaptive error control, SDE orders,
Brownian noise statistics, saving, gradients, time direction, shapes and bad input.

Tolerances: fitted log-log slopes within 0.15 of the declared (strong) order and 0.2 of the
weak order (the weak error is a Monte Carlo mean); statistics within ~5 standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from flowdiff.dynamics import (
    ODE,
    SDE,
    BrownianMotion,
    FunctionSDE,
    LinearODE,
    OrnsteinUhlenbeck,
    VectorFieldODE,
)
from flowdiff.solvers import (
    DOPRI5,
    RK4,
    ButcherTableau,
    Dopri5,
    ExplicitRungeKutta,
    available_solvers,
    brownian_path,
    get_solver,
    register_solver,
    rk_step,
    simulate,
    time_grid,
)
from flowdiff.solvers.base import _Field

F64 = torch.float64
ODE_SOLVERS = ["euler", "midpoint", "heun", "rk4", "dopri5"]
FIXED_ODE_SOLVERS = ["euler", "midpoint", "heun", "rk4"]
SDE_SOLVERS = ["euler_maruyama", "stochastic_heun"]

# ---------------------------------------------------------------- test problems with closed forms

# A non-normal matrix with complex eigenvalues: trajectories rotate and transiently grow, so no
# component is solved exactly by any method (unlike y' = -y, which every scheme tracks closely).
A = torch.tensor([[-0.2, 2.0, 0.3], [-1.5, -0.1, 1.0], [0.4, -0.8, -0.3]], dtype=F64)
Y0 = torch.tensor([[1.0, 0.5, -0.3], [0.2, -1.0, 0.7]], dtype=F64)


def linear_tv_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``y' = (1 + t) A y``: non-autonomous, so wrong stage times ``c_i`` would show."""
    return (1 + t)[:, None] * (x @ A.T)


def linear_tv_exact(y0: torch.Tensor, t: float) -> torch.Tensor:
    """``y(t) = expm(A (t + t^2 / 2)) y0`` (A commutes with itself at all times)."""
    return y0 @ torch.linalg.matrix_exp(A * (t + t**2 / 2)).T


def riccati_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``y' = 2 t y^2``: nonlinear and non-autonomous."""
    return 2 * t[:, None] * x**2


def riccati_exact(y0: torch.Tensor, t: float) -> torch.Tensor:
    return y0 / (1 - y0 * t**2)


PROBLEMS = {
    "linear": (linear_tv_field, linear_tv_exact, Y0, 2.0),
    "riccati": (riccati_field, riccati_exact, torch.tensor([[0.5, -1.0, 0.8]], dtype=F64), 1.0),
}


def fitted_order(step_sizes: list[float], errors: list[float]) -> float:
    """Slope of log(error) against log(step size), least squares."""
    return float(np.polyfit(np.log(step_sizes), np.log(errors), 1)[0])


def global_errors(problem: str, solver, steps: list[int]) -> tuple[list[float], list[float]]:
    field, exact, y0, T = PROBLEMS[problem]
    ode = VectorFieldODE(field)
    hs, errors = [], []
    for n in steps:
        sol = simulate(ode, y0, time_grid(n, t1=T, dtype=F64), solver)
        hs.append(T / n)
        errors.append(float((sol.x - exact(y0, T)).abs().max()))
    return hs, errors


# Step counts per order: fine enough to be asymptotic, coarse enough to stay above round-off.
STEPS = {
    1: [128, 256, 512, 1024],
    2: [32, 64, 128, 256],
    4: [16, 32, 64, 128],
    5: [32, 64, 128, 256],
}


# ---------------------------------------------------------------- ODE convergence orders


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("name", [*FIXED_ODE_SOLVERS, *SDE_SOLVERS])
def test_fixed_step_convergence_order(name: str, problem: str) -> None:
    # SDE solvers given an ODE treat sigma as 0, so they must show their deterministic order
    solver = get_solver(name)
    hs, errors = global_errors(problem, name, STEPS[solver.order])
    assert abs(fitted_order(hs, errors) - solver.order) < 0.15, errors


@pytest.mark.parametrize(("weights", "order"), [("b", 5), ("b_hat", 4)])
def test_dopri5_tableau_orders(weights: str, order: int) -> None:
    # run the pair's two weight sets as fixed-step methods: the coefficients are checked
    # independently of the step-size control
    tableau = ButcherTableau(DOPRI5.c, DOPRI5.a, getattr(DOPRI5, weights), order)
    hs, errors = global_errors("linear", ExplicitRungeKutta(f"dopri5_{weights}", tableau), STEPS[5])
    assert abs(fitted_order(hs, errors) - order) < 0.15, errors


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_dopri5_meets_tolerance_and_spends_less_when_looser(problem: str) -> None:
    field, exact, y0, T = PROBLEMS[problem]
    truth = exact(y0, T)
    nfes = []
    for tol in (1e-4, 1e-6, 1e-8):
        sol = simulate(VectorFieldODE(field), y0, [0.0, T], "dopri5", rtol=tol, atol=tol)
        # Local error control bounds the global error only up to the problem's amplification of
        # local errors: measured max |error| / (tol + tol |y|) over tol 1e-4..1e-8 is 1.6-2.6
        # (linear) and 0.52-4.8 (riccati, whose solution's sensitivity to its state grows to
        # 1 / (1 - 0.8)^2 = 25 near the blow-up). Bounds: 1.25x the largest measured factor, and
        # a floor of 0.2 so that a controller taking needlessly small steps fails too.
        scaled = float(((sol.x - truth).abs() / (tol + tol * truth.abs())).max())
        assert 0.2 < scaled < {"linear": 3.3, "riccati": 6.0}[problem], (tol, scaled)
        nfes.append(sol.nfe)
    assert nfes[0] < nfes[1] < nfes[2]


def test_dopri5_dense_output_is_free_and_accurate() -> None:
    times = torch.linspace(0.0, 2.0, 41, dtype=F64)
    tol = 1e-7
    ode = VectorFieldODE(linear_tv_field)
    dense = simulate(ode, Y0, [0.0, 2.0], "dopri5", save=times, rtol=tol, atol=tol)
    final = simulate(ode, Y0, [0.0, 2.0], "dopri5", rtol=tol, atol=tol)
    # saving never changes the steps: same NFE, bit-identical end state
    assert dense.nfe == final.nfe
    assert torch.equal(dense.x, final.x)
    assert dense.xs is not None and dense.xs.shape == (41, *Y0.shape)
    # measured at most 1.85 x tol at the 41 times (2.4 at tol 1e-5): the 4th-order interpolant
    # adds nothing visible to the steps' own error
    for t, x in zip(times.tolist(), dense.xs):
        truth = linear_tv_exact(Y0, t)
        assert float(((x - truth).abs() / (tol + tol * truth.abs())).max()) < 2.5


def test_dopri5_interpolant_has_local_order_five() -> None:
    # one step from the exact state; midpoint error of the continuous extension ~ h^5 (a plain
    # Hermite cubic through the same end values and slopes gives only h^4)
    solver = Dopri5()
    hs, errors = [0.1, 0.05, 0.025, 0.0125], []
    t = 0.3
    for h in hs:
        x = linear_tv_exact(Y0, t)
        x_new, ks = rk_step(DOPRI5, _Field(VectorFieldODE(linear_tv_field), Y0), x, t, h)
        mid = solver.interpolate(x, x_new, ks, h, 0.5)
        errors.append(float((mid - linear_tv_exact(Y0, t + h / 2)).abs().max()))
    assert abs(fitted_order(hs, errors) - 5) < 0.3, errors


def test_nfe_is_stages_times_steps() -> None:
    ode, x0 = LinearODE(1.0), torch.ones(4, 2)
    stages = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "euler_maruyama": 1}
    for name, s in stages.items():
        sol = simulate(ode, x0, time_grid(7), name)
        assert (sol.nfe, sol.steps) == (7 * s, 7)
    sol = simulate(OrnsteinUhlenbeck(), x0, time_grid(7), "stochastic_heun")
    assert (sol.nfe, sol.steps) == (14, 7)


# ---------------------------------------------------------------- time direction, saving


@pytest.mark.parametrize("name", ODE_SOLVERS)
def test_decreasing_grid_inverts_the_flow(name: str) -> None:
    ode = LinearODE(theta=1.5)
    x1 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    back = simulate(ode, x1, time_grid(400, t0=1.0, t1=0.0, dtype=F64), name, rtol=1e-9, atol=1e-9)
    # x(0) = x(1) e^{+theta}; Euler's error at h = 1/400 is ~ 1.5^2 e^{1.5} h / 2 * |x| ~ 1e-2
    tol = {"euler": 3e-2, "midpoint": 1e-4, "heun": 1e-4}.get(name, 1e-7)
    assert torch.allclose(back.x, x1 * math.exp(1.5), rtol=tol, atol=0)
    forward = simulate(ode, back.x, time_grid(400, dtype=F64), name, rtol=1e-9, atol=1e-9)
    assert torch.allclose(forward.x, x1, rtol=2 * tol, atol=0)


def test_save_all_and_chosen_times() -> None:
    ode, x0 = LinearODE(2.0), torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    grid = time_grid(10)
    full = simulate(ode, x0, grid, "rk4", save="all")
    assert full.xs is not None and full.xs.shape == (11, 6, 2)
    assert torch.equal(full.xs[0], x0) and torch.equal(full.xs[-1], full.x)
    assert torch.equal(full.ts, grid)
    assert torch.allclose(full.xs, torch.stack([ode.flow(x0, t) for t in grid]), atol=1e-4)
    chosen = simulate(ode, x0, grid, "rk4", save=torch.tensor([0.0, 0.3, 1.0]))
    assert torch.equal(chosen.xs, full.xs[[0, 3, 10]])  # type: ignore[index]
    final = simulate(ode, x0, grid, "rk4")
    assert final.xs is None and torch.equal(final.ts, grid[-1:]) and torch.equal(final.x, full.x)
    # backward grid: chosen times are ordered like ts
    back = simulate(ode, x0, grid.flip(0), "rk4", save=[0.7, 0.2])
    assert torch.equal(back.ts, torch.tensor([0.7, 0.2]))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ["rk4", "dopri5"])
def test_grad_matches_closed_form(name: str) -> None:
    # x' = a x: x(T) = x0 e^{aT}, so d x(T)/da = T x(T) and d x(T)/d x0 = e^{aT}
    a = torch.tensor(-0.7, dtype=F64, requires_grad=True)
    x0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=F64, requires_grad=True)
    ode = VectorFieldODE(lambda x, t: a * x)
    sol = simulate(ode, x0, time_grid(50, t1=2.0, dtype=F64), name, grad=True, rtol=1e-9, atol=1e-9)
    sol.x.sum().backward()
    exact = math.exp(-0.7 * 2.0)
    assert a.grad is not None and x0.grad is not None
    assert math.isclose(float(a.grad), 2.0 * exact * float(x0.detach().sum()), rel_tol=1e-5)
    torch.testing.assert_close(x0.grad, torch.full_like(x0, exact), rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", SDE_SOLVERS)
def test_grad_through_sde_solve(name: str) -> None:
    # additive noise: X_T = x0 e^{aT} + noise independent of x0, so dX_T/dx0 = e^{aT} on every
    # path (up to the scheme's deterministic error: Euler O(h), Heun O(h^2))
    x0 = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    x0.requires_grad_(True)
    sde = FunctionSDE(lambda x, t: -0.7 * x, 0.5)
    grid = time_grid(400, t1=2.0, dtype=F64)
    sol = simulate(sde, x0, grid, name, grad=True, generator=torch.Generator().manual_seed(0))
    sol.x.sum().backward()
    tol = {"euler_maruyama": 3e-3, "stochastic_heun": 1e-5}[name]
    torch.testing.assert_close(x0.grad, torch.full_like(x0, math.exp(-1.4)), rtol=tol, atol=0)


def test_grad_of_mlp_solve_passes_gradcheck() -> None:
    # autograd through the scheme equals finite differences of the same discrete map
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
    ).double()
    ode = VectorFieldODE(lambda x, t: net(torch.cat([x, t[:, None]], 1)))
    x0 = torch.randn(
        3, 2, dtype=F64, generator=torch.Generator().manual_seed(2), requires_grad=True
    )
    grid = time_grid(5, dtype=F64)
    assert torch.autograd.gradcheck(lambda x: simulate(ode, x, grid, "rk4", grad=True).x, (x0,))


def test_no_grad_by_default() -> None:
    x0 = torch.ones(2, 2, requires_grad=True)
    assert not simulate(LinearODE(), x0, time_grid(3)).x.requires_grad


# ---------------------------------------------------------------- SDE solvers


def gbm_errors(name: str, mu: float, sigma: float, levels: range, *, paths: int = 100_000):
    """Strong ``E|X_h - X|`` and weak ``E[X_h - X]`` errors on geometric Brownian motion
    ``dX = mu X dt + sigma X dW`` (Ito), exact ``X_T = exp((mu - sigma^2/2) T + sigma W_T)``.

    Every level is driven by the *same* Brownian paths (subsampled), which makes the strong
    error well defined and cuts the variance of the weak one (antithetic pairs W, -W too).
    """
    gbm = FunctionSDE(lambda x, t: mu * x, lambda x, t: sigma * x)
    fine = time_grid(2 ** levels[-1], dtype=F64)
    gen = torch.Generator().manual_seed(0)
    w = brownian_path(fine, (paths // 2, 1), generator=gen, dtype=F64)
    w = torch.cat([w, -w], dim=1)
    x0 = torch.ones(paths, 1, dtype=F64)
    exact = torch.exp((mu - sigma**2 / 2) + sigma * w[-1])
    hs, strong, weak = [], [], []
    for k in levels:
        every = 2 ** (levels[-1] - k)
        diff = simulate(gbm, x0, fine[::every], name, brownian=w[::every]).x - exact
        hs.append(2.0**-k)
        strong.append(float(diff.abs().mean()))
        weak.append(abs(float(diff.mean())))
    return hs, strong, weak


@pytest.mark.parametrize("name", SDE_SOLVERS)
def test_sde_strong_order_on_gbm(name: str) -> None:
    # sigma large enough that the sigma sigma' term, which sets the strong order, dominates
    # (measured slopes 0.50 for EM and 0.98 for Heun)
    hs, strong, _ = gbm_errors(name, mu=1.5, sigma=1.0, levels=range(3, 8), paths=50_000)
    assert abs(fitted_order(hs, strong) - get_solver(name).strong_order) < 0.15, strong


@pytest.mark.parametrize("name", SDE_SOLVERS)
def test_sde_weak_order_on_gbm(name: str) -> None:
    # weak errors are small differences of means: coarse levels keep them far above the Monte
    # Carlo noise (measured slopes 0.95-0.97 for EM and 1.92-1.99 for Heun over seeds 0-3)
    hs, _, weak = gbm_errors(name, mu=1.0, sigma=0.5, levels=range(3, 7))
    assert abs(fitted_order(hs, weak) - get_solver(name).weak_order) < 0.2, weak


def test_brownian_increments_are_normal_and_independent() -> None:
    steps, paths = 200, 500
    grid = time_grid(steps, kind="karras", rho=2.0, dtype=F64)  # uneven steps: N(0, h_i) each
    sol = simulate(
        BrownianMotion(sigma=1.0),
        torch.zeros(paths, 1, dtype=F64),
        grid,
        "euler_maruyama",
        save="all",
        generator=torch.Generator().manual_seed(3),
    )
    assert sol.xs is not None
    z = (sol.xs.diff(dim=0) / grid.diff().sqrt()[:, None, None]).squeeze(-1)  # (steps, paths)
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-3
    # lag-1 correlation in time and correlation across paths: ~N(0, 1/n) if independent
    n = z.numel()
    lag = float((z[1:] * z[:-1]).mean())
    across = float((z[:, 1:] * z[:, :-1]).mean())
    assert abs(lag) < 4 / math.sqrt(n) and abs(across) < 4 / math.sqrt(n)
    # Brownian motion is solved exactly in law by Euler-Maruyama: Var W_1 = 1
    assert abs(float(sol.x.var()) - 1.0) < 5 * math.sqrt(2 / paths)


def test_brownian_path_reproduces_fresh_draws() -> None:
    ou, x0 = OrnsteinUhlenbeck(1.0, 0.8), torch.randn(8, 3, dtype=F64)
    grid = time_grid(20, dtype=F64)
    for name in SDE_SOLVERS:
        fresh = simulate(ou, x0, grid, name, generator=torch.Generator().manual_seed(5))
        path = brownian_path(grid, x0.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
        replay = simulate(ou, x0, grid, name, brownian=path)
        torch.testing.assert_close(replay.x, fresh.x, rtol=0, atol=1e-12)


def test_generator_reproducibility() -> None:
    ou, x0, grid = OrnsteinUhlenbeck(), torch.zeros(16, 2), time_grid(10)
    runs = [
        simulate(ou, x0, grid, "euler_maruyama", generator=torch.Generator().manual_seed(s)).x
        for s in (7, 7, 8)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_sde_solver_on_an_ode_is_its_deterministic_scheme() -> None:
    ode, x0, grid = LinearODE(0.5), torch.randn(4, 2), time_grid(9)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    for sde_name, ode_name in (("euler_maruyama", "euler"), ("stochastic_heun", "heun")):
        got = simulate(ode, x0, grid, sde_name, generator=gen)
        assert torch.equal(got.x, simulate(ode, x0, grid, ode_name).x)
    assert torch.equal(gen.get_state(), state)  # no noise was drawn


def test_additive_noise_shortcut_matches_general_scheme() -> None:
    # declaring additive noise only skips evaluations: same numbers as the general formula
    drift = lambda x, t: -x + torch.sin(3 * t)[:, None]  # noqa: E731
    sigma = lambda x, t: (0.5 + t)[:, None] * torch.ones_like(x[:, :1])  # noqa: E731
    x0, grid = torch.randn(32, 2, dtype=F64), time_grid(12, dtype=F64)
    out = [
        simulate(
            FunctionSDE(drift, sigma, additive_noise=flag),
            x0,
            grid,
            "stochastic_heun",
            generator=torch.Generator().manual_seed(1),
        ).x
        for flag in (True, False)
    ]
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- shapes


SHAPES = [(2,), (3, 8, 8), (5, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", ODE_SOLVERS)
def test_ode_solvers_on_any_event_shape(name: str, shape: tuple[int, ...]) -> None:
    ode, x0 = LinearODE(1.0), torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    sol = simulate(ode, x0, time_grid(20), name, save="all")
    assert sol.x.shape == x0.shape and sol.xs is not None and sol.xs.shape == (21, 4, *shape)
    torch.testing.assert_close(sol.x, ode.flow(x0, 1.0), rtol=0.03, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", SDE_SOLVERS)
def test_sde_solvers_on_any_event_shape(name: str, shape: tuple[int, ...]) -> None:
    """dX = -X dt + s dW with s returned as a (B, 1, ..., 1) tensor by a function of (x, t), so
    the general (not additive-noise) scheme runs and broadcasts it. With s constant in value
    each scheme is the linear recursion X' = a X + b s dW, dW ~ N(0, h), whose law after n steps
    is exact: N(a^n x0, (b s)^2 h (1 - a^2n) / (1 - a^2)), with a = 1 - h, b = 1 (EM) and
    a = 1 - h + h^2 / 2, b = 1 - h / 2 (Heun). A KS test and 5-standard-error moments on all
    coordinates check the shape handling, that the noise was applied, and its scale."""
    s, steps, n = 0.5, 10, 200
    h = 1 / steps

    def sigma(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], *[1] * len(shape)), s, dtype=x.dtype)

    sde = FunctionSDE(lambda x, t: -x, sigma)
    assert not sde.additive_noise
    x0 = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = time_grid(steps, dtype=F64)
    sol = simulate(sde, x0, grid, name, generator=torch.Generator().manual_seed(1))
    assert sol.x.shape == x0.shape
    a, b = {"euler_maruyama": (1 - h, 1.0), "stochastic_heun": (1 - h + h * h / 2, 1 - h / 2)}[name]
    std = b * s * math.sqrt(h * (1 - a ** (2 * steps)) / (1 - a * a))
    z = ((sol.x - a**steps * x0) / std).flatten()
    assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / z.numel())
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3


# ---------------------------------------------------------------- time grids and registry


def test_time_grids() -> None:
    uniform = time_grid(4, dtype=F64)
    torch.testing.assert_close(uniform, torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=F64))
    karras = time_grid(10, kind="karras", rho=3.0, dtype=F64)
    steps = karras.diff()
    assert karras[0] == 0 and karras[-1] == 1 and bool((steps > 0).all())
    assert bool((steps.diff() < 0).all())  # steps shrink toward the data end t=1
    # with rho, distance to data s = 1 - t is rho-spaced: s^(1/rho) is uniform
    torch.testing.assert_close((1 - karras) ** (1 / 3), torch.linspace(1, 0, 11, dtype=F64))
    torch.testing.assert_close(
        time_grid(10, "karras", 1.0, 0.0, rho=3.0, dtype=F64), karras.flip(0)
    )
    torch.testing.assert_close(time_grid(4, t0=1.0, t1=0.0, dtype=F64), uniform.flip(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": 2.5}, "steps must be an integer >= 1"),
        ({"steps": 4, "kind": "karas"}, "did you mean 'karras'"),
        ({"steps": 4, "t0": 1.0, "t1": 1.0}, "t0 and t1 must differ"),
        ({"steps": 4, "t1": float("nan")}, "t1 must be a finite number"),
        ({"steps": 4, "kind": "karras", "rho": 0.0}, "rho must be > 0"),
        ({"steps": 4, "kind": "karras", "t1": 2.0}, "t0, t1 <= 1"),
    ],
)
def test_time_grid_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        time_grid(**kwargs)


def test_registry() -> None:
    assert set(available_solvers()) >= {*ODE_SOLVERS, *SDE_SOLVERS}
    assert get_solver("rk4").order == 4 and get_solver("dopri5").adaptive
    assert get_solver("euler_maruyama").strong_order == 0.5
    with pytest.raises(ValueError, match="unknown solver 'rk5'; did you mean 'rk4'"):
        get_solver("rk5")
    with pytest.raises(ValueError, match="already registered"):
        register_solver(ExplicitRungeKutta("rk4", RK4))
    with pytest.raises(TypeError, match="must be a name or a Solver"):
        get_solver(4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"c": (0.0, 0.6), "a": ((), (0.5,)), "b": (0.0, 1.0)}, r"c\[1\]=0.6 must equal"),
        ({"c": (0.0, 0.5), "a": ((), (0.5,)), "b": (0.5, 0.6)}, "b must sum to 1"),
        ({"c": (0.0, 0.5), "a": ((), (0.5, 0.0)), "b": (0.0, 1.0)}, "strictly lower triangular"),
        ({"c": (0.0, 0.5), "a": ((), (0.5,)), "b": (1.0,)}, "b must have 2 entries"),
    ],
)
def test_butcher_tableau_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ButcherTableau(order=2, **kwargs)


# ---------------------------------------------------------------- bad input


class WrongShape(ODE):
    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


class BlowsUp(ODE):
    """Finite until t = 0.5, then NaN: the solve must stop there and say so."""

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.where(t[:, None] > 0.5, torch.full_like(x, math.nan), -x)


class BadDiffusion(SDE):
    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -x

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 7)


class LateWrongShape(ODE):
    """The right shape until t = 0.5, then (1, *shape), which would broadcast into the state
    silently: the shape must be checked at every call, not only the first."""

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -x if float(t[0]) <= 0.5 else -x[:1]


class LateBadDiffusion(BadDiffusion):
    """A scalar diffusion until t = 0.5, then a (B, 7) tensor."""

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> float | torch.Tensor:
        return 0.1 if float(t[0]) <= 0.5 else super().diffusion(x, t)


class NaNDiffusion(BadDiffusion):
    """A finite drift and a diffusion that turns NaN after t = 0.5."""

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.where(t[:, None] > 0.5, math.nan, 0.1)


X0 = torch.zeros(3, 2)
GRID = time_grid(10)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (
            (LinearODE(), X0, torch.zeros(2, 3)),
            {},
            ValueError,
            r"ts must be 1-D, got shape \(2, 3\)",
        ),
        ((LinearODE(), X0, [0.0]), {}, ValueError, "at least 2 time"),
        (
            (LinearODE(), X0, [0.0, 0.5, 0.4, 1.0]),
            {},
            ValueError,
            r"ts\[2\]=0.4 follows ts\[1\]=0.5",
        ),
        (
            (LinearODE(), X0, [0.0, 0.0, 1.0]),
            {},
            ValueError,
            r"ts must be strictly increasing .* ts\[1\]=0 follows ts\[0\]=0",
        ),
        ((LinearODE(), X0, [0.0, math.inf]), {}, ValueError, r"ts must be finite, got ts\[1\]=inf"),
        ((LinearODE(), X0, "0 to 1"), {}, TypeError, "ts must be a 1-D tensor or sequence"),
        ((LinearODE(), [[0.0, 1.0]], GRID), {}, TypeError, "x0 must be a torch.Tensor"),
        ((LinearODE(), torch.zeros(3, 2, dtype=torch.long), GRID), {}, TypeError, "floating"),
        ((LinearODE(), torch.tensor(1.0), GRID), {}, ValueError, "x0 must have at least 1"),
        (
            (LinearODE(), torch.tensor([[0.0, math.nan]]), GRID),
            {},
            ValueError,
            "x0 has 1 non-finite",
        ),
        ((lambda x, t: -x, X0, GRID), {}, TypeError, "wrap a function f"),
        ((WrongShape(), X0, GRID), {}, ValueError, r"shape of x \(3, 2\), got \(3, 1\)"),
        (
            (BlowsUp(), X0 + 1, GRID),
            {},
            ValueError,
            r"non-finite .* step 7 of 10 \(t=0.7, solver 'euler'\): the drift is non-finite at "
            r"the last finite state \(t=0.6\)",
        ),
        (
            (NaNDiffusion(), X0 + 1, GRID, "euler_maruyama"),
            {},
            ValueError,
            r"step 7 of 10 .*: the diffusion is non-finite at the last finite state \(t=0.6\)",
        ),
        (
            (LinearODE(1e5), X0 + 1, GRID, "rk4"),
            {},
            ValueError,
            r"step 3 of 10 .*: the drift is finite at the last finite state \(t=0.2\), so the "
            "step itself overflowed",
        ),
        (
            (LateWrongShape(), X0, GRID),
            {},
            ValueError,
            r"shape of x \(3, 2\), got \(1, 2\) \(t=0.6, drift call 7\)",
        ),
        (
            (LateBadDiffusion(), X0, GRID, "stochastic_heun"),
            {},
            ValueError,
            r"broadcastable to x \(3, 2\), got shape \(3, 7\) \(t=0.6",
        ),
        (
            (BadDiffusion(), X0, GRID, "euler_maruyama"),
            {},
            ValueError,
            r"broadcastable to x \(3, 2\)",
        ),
        ((OrnsteinUhlenbeck(), X0, GRID, "rk4"), {}, ValueError, "use one of euler_maruyama"),
        ((LinearODE(), X0, GRID, "eular"), {}, ValueError, "did you mean 'euler'"),
        ((LinearODE(), X0, GRID), {"save": "al"}, ValueError, "did you mean 'all'"),
        ((LinearODE(), X0, GRID), {"save": [0.35]}, ValueError, "0.35 is not a point of ts"),
        ((LinearODE(), X0, GRID), {"save": [1.5]}, ValueError, "outside the span"),
        (
            (LinearODE(), X0, GRID),
            {"save": [0.5, 0.2]},
            ValueError,
            r"save must be strictly increasing .* save\[1\]=0.2",
        ),
        ((LinearODE(), X0, GRID, "dopri5"), {"rtol": 0.0}, ValueError, r"rtol must be .* \(0, inf"),
        ((LinearODE(), X0, GRID, "dopri5"), {"atol": -1.0}, ValueError, "atol must be a number in"),
        ((LinearODE(), X0, GRID), {"rtol": math.inf}, ValueError, "rtol must be a number in"),
        ((LinearODE(), X0, GRID), {"atol": "1e-5"}, TypeError, "atol must be a number"),
        ((LinearODE(), X0, GRID), {"grad": 1}, TypeError, "grad must be a bool"),
        ((LinearODE(), X0, GRID), {"generator": 0}, TypeError, "generator must be a torch"),
        ((LinearODE(), X0, GRID), {"max_steps": 0}, ValueError, "max_steps must be an integer"),
        ((LinearODE(), X0, GRID), {"brownian": torch.zeros(11, 3, 2)}, ValueError, "only used by"),
        (
            (OrnsteinUhlenbeck(), X0, GRID, "euler_maruyama"),
            {"brownian": torch.zeros(10, 3, 2)},
            ValueError,
            r"shape \(11, 3, 2\), got \(10, 3, 2\)",
        ),
        (
            (LinearODE(50.0), X0 + 1, [0.0, 1.0], "dopri5"),
            {"max_steps": 5},
            ValueError,
            "max_steps=5",
        ),
        ((BlowsUp(), X0 + 1, [0.0, 1.0], "dopri5"), {}, ValueError, "step size underflow at t=0.5"),
    ],
)
def test_bad_input_raises(args: tuple, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        simulate(*args, **kwargs)
