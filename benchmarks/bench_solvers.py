"""Solvers: measured convergence orders, loop overhead, and speed per NFE against references.

1. Orders: the fitted log-log slope of the global error (ODE solvers on ``y' = (1 + t) A y``
   vs the matrix exponential, float64) and the strong / weak slopes of the SDE solvers on
   geometric Brownian motion with shared Brownian paths. Dopri5's two solutions (weights ``b``,
   order 5, and the embedded ``b_hat``, order 4) are run as fixed-step methods, as in
   ``tests/test_solvers.py``; its adaptive solve is reported as global error / tolerance.
2. Overhead ratio: ``time(simulate, N steps) / (NFE * time(one bare drift call))`` for a 3x256
   MLP drift at batch 10,000, 1 thread (goal <= 1.05). Bare calls and solves alternate, and the
   ratio is the median over repeats, so machine noise hits both alike.
3. Time per NFE of ``simulate`` against ``flow_matching``'s ``ODESolver`` and
   ``torchdiffeq.odeint`` on the same drift, same method and steps (goal: >= 1.5x faster),
   at the benchmark batch and at a small batch where the loop itself is visible.

Run: ``python -m benchmarks.bench_solvers [--quick]``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.common import main, markdown_table, setup
from flowdiff.dynamics import FunctionSDE, VectorFieldODE
from flowdiff.solvers import (
    DOPRI5,
    ButcherTableau,
    ExplicitRungeKutta,
    brownian_path,
    get_solver,
    simulate,
    time_grid,
)

F64 = torch.float64
FIXED = ["euler", "midpoint", "heun", "rk4"]
# torchdiffeq's name for each method (its "rk4" is the 3/8 rule: also 4 NFE per step)
REFERENCE_METHODS = {
    "euler": "euler",
    "midpoint": "midpoint",
    "heun": "heun2",
    "rk4": "rk4",
    "dopri5": "dopri5",
}


# ---------------------------------------------------------------- orders


def _slope(hs: list[float], errors: list[float]) -> float:
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


def _linear_problem() -> tuple[VectorFieldODE, Tensor, Tensor]:
    a = torch.tensor([[-0.2, 2.0, 0.3], [-1.5, -0.1, 1.0], [0.4, -0.8, -0.3]], dtype=F64)
    y0 = torch.tensor([[1.0, 0.5, -0.3]], dtype=F64)
    ode = VectorFieldODE(lambda x, t: (1 + t)[:, None] * (x @ a.T))
    return ode, y0, y0 @ torch.linalg.matrix_exp(a * 4.0).T  # t + t^2/2 at t = 2


def ode_orders(quick: bool) -> list[list[Any]]:
    ode, y0, exact = _linear_problem()
    cases = [(get_solver(name), {1: 128, 2: 32, 4: 16}[get_solver(name).order]) for name in FIXED]
    # Dopri5's two weight sets as fixed-step methods, on the steps of tests/test_solvers.py
    for label, weights, order in (("weights b", DOPRI5.b, 5), ("embedded b_hat", DOPRI5.b_hat, 4)):
        tableau = ButcherTableau(DOPRI5.c, DOPRI5.a, weights, order)  # type: ignore[arg-type]
        cases.append((ExplicitRungeKutta(f"dopri5 {label}", tableau), 32))
    rows = []
    for solver, base in cases:
        steps = [base * 2**k for k in range(3 if quick else 4)]
        errs = [
            float(
                (simulate(ode, y0, time_grid(n, t1=2.0, dtype=F64), solver).x - exact).abs().max()
            )
            for n in steps
        ]
        rows.append([solver.name, solver.order, round(_slope([2.0 / n for n in steps], errs), 3)])
    return rows


def dopri5_tolerance() -> list[list[Any]]:
    """Adaptive dopri5: max global error / (tol + tol |y|) and NFE per tolerance."""
    ode, y0, exact = _linear_problem()
    rows = []
    for tol in (1e-4, 1e-6, 1e-8):
        sol = simulate(ode, y0, [0.0, 2.0], "dopri5", rtol=tol, atol=tol)
        ratio = float(((sol.x - exact).abs() / (tol + tol * exact.abs())).max())
        rows.append([f"{tol:g}", round(ratio, 3), sol.nfe])
    return rows


def sde_orders(quick: bool) -> list[list[Any]]:
    rows = []
    paths = 20_000 if quick else 100_000
    for name in ["euler_maruyama", "stochastic_heun"]:
        solver = get_solver(name)
        slopes = []
        for mu, sigma, levels, kind in (
            (1.5, 1.0, range(3, 8), "strong"),
            (1.0, 0.5, range(3, 7), "weak"),
        ):
            gbm = FunctionSDE(lambda x, t, mu=mu: mu * x, lambda x, t, s=sigma: s * x)
            fine = time_grid(2 ** levels[-1], dtype=F64)
            w = brownian_path(
                fine, (paths // 2, 1), generator=torch.Generator().manual_seed(0), dtype=F64
            )
            w = torch.cat([w, -w], dim=1)
            exact = torch.exp((mu - sigma**2 / 2) + sigma * w[-1])
            hs, errs = [], []
            for k in levels:
                every = 2 ** (levels[-1] - k)
                diff = (
                    simulate(
                        gbm,
                        torch.ones(paths, 1, dtype=F64),
                        fine[::every],
                        name,
                        brownian=w[::every],
                    ).x
                    - exact
                )
                hs.append(2.0**-k)
                errs.append(
                    float(diff.abs().mean()) if kind == "strong" else abs(float(diff.mean()))
                )
            slopes.append(round(_slope(hs, errs), 3))
        rows.append([name, solver.strong_order, slopes[0], solver.weak_order, slopes[1]])
    return rows


# ---------------------------------------------------------------- speed


def mlp_drift(dim: int = 2, width: int = 256) -> Callable[[Tensor, Tensor], Tensor]:
    """A 3x256 SiLU MLP on ``[x, t]``; ``t`` may be ``(B,)`` or a scalar (flow_matching)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(dim + 1, width),
        nn.SiLU(),
        nn.Linear(width, width),
        nn.SiLU(),
        nn.Linear(width, width),
        nn.SiLU(),
        nn.Linear(width, dim),
    )

    def drift(x: Tensor, t: Tensor) -> Tensor:
        return net(torch.cat([x, t.expand(x.shape[0])[:, None]], dim=1))

    return drift


class Counted:
    """Counts the calls of a drift (each reference library calls it its own way)."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        self.calls += 1
        return self.fn(*args, **kwargs)


def _cpu_time(fn: Callable[[], Any]) -> float:
    """CPU seconds of ``fn()``: with one thread this is its compute, without the time spent
    descheduled on a shared machine (wall-clock here varied 3x between identical runs)."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def reference_runners(
    drift: Callable, x0: Tensor, steps: int
) -> dict[str, Callable[[str], Callable[[], Any]]]:
    """``{library: method -> zero-argument solve}`` for the installed reference libraries."""
    runners: dict[str, Callable[[str], Callable[[], Any]]] = {}
    span = torch.tensor([0.0, 1.0])
    try:
        from torchdiffeq import odeint

        def tdq(method: str) -> Callable[[], Any]:
            opts = {} if method == "dopri5" else {"step_size": 1.0 / steps}
            return lambda: odeint(
                lambda t, x: drift(x, t),
                x0,
                span,
                method=method,
                options=opts,
                rtol=1e-5,
                atol=1e-5,
            )

        runners["torchdiffeq.odeint"] = tdq
    except ImportError:
        pass
    try:
        from flow_matching.solver import ODESolver
        from flow_matching.utils import ModelWrapper

        class Wrapped(ModelWrapper):
            def forward(self, x: Tensor, t: Tensor, **extras: Any) -> Tensor:
                return drift(x, t)

        solver = ODESolver(velocity_model=Wrapped(nn.Identity()))

        def fm(method: str) -> Callable[[], Any]:
            step = None if method == "dopri5" else 1.0 / steps
            return lambda: solver.sample(
                x0, step, method=method, time_grid=span, rtol=1e-5, atol=1e-5
            )

        runners["flow_matching ODESolver"] = fm
    except ImportError:
        pass
    return runners


def speed(batch: int, steps: int, rounds: int) -> tuple[list[list[Any]], list[list[Any]]]:
    """Overhead ratios and per-NFE times at one batch size.

    Each round times the bare calls, ``simulate`` and every reference once, back to back, and
    the ratios are taken within the round; the tables report medians over rounds.
    """
    drift = mlp_drift()
    x0 = torch.randn(batch, 2, generator=torch.Generator().manual_seed(0))
    t_bare = torch.full((batch,), 0.5)
    counted = Counted(drift)
    ode = VectorFieldODE(counted)
    grid = time_grid(steps)
    references = reference_runners(counted, x0, steps)

    def bare_calls(n: int) -> None:
        for _ in range(n):
            drift(x0, t_bare)

    overhead_rows, per_nfe_rows = [], []
    with torch.no_grad():
        for method in [*FIXED, "dopri5"]:
            solves = {"simulate": lambda m=method: simulate(ode, x0, grid, m)}
            solves.update(
                {lib: make(REFERENCE_METHODS[method]) for lib, make in references.items()}
            )
            nfe = {}
            for lib, solve in solves.items():
                counted.calls = 0
                solve()  # warm-up, and the NFE of one solve
                nfe[lib] = counted.calls
            per_nfe: dict[str, list[float]] = {lib: [] for lib in solves}
            ratios = []
            for _ in range(rounds):
                bare = _cpu_time(lambda n=nfe["simulate"]: bare_calls(n)) / nfe["simulate"]
                for lib, solve in solves.items():
                    per_nfe[lib].append(_cpu_time(solve) / nfe[lib])
                ratios.append(per_nfe["simulate"][-1] / bare)
            if method in FIXED:
                overhead_rows.append([method, batch, steps, statistics.median(ratios)])
            ours = per_nfe["simulate"]
            row: list[Any] = [method, batch, nfe["simulate"], statistics.median(ours) * 1e3]
            for lib in ("flow_matching ODESolver", "torchdiffeq.odeint"):
                if lib not in per_nfe:
                    row += ["not installed", "-"]
                    continue
                speedups = [ref / mine for ref, mine in zip(per_nfe[lib], ours)]
                row += [statistics.median(per_nfe[lib]) * 1e3, statistics.median(speedups)]
            per_nfe_rows.append(row)
    return overhead_rows, per_nfe_rows


def run(quick: bool = False) -> dict[str, Any]:
    setup(threads=1)
    ode_rows = ode_orders(quick)
    tolerance_rows = dopri5_tolerance()
    sde_rows = sde_orders(quick)
    # the benchmark's case (batch 10,000), then smaller batches where the loop itself shows
    configs = [(500, 5, 2)] if quick else [(10_000, 10, 5), (256, 50, 7), (16, 100, 9)]
    overhead, per_nfe = [], []
    for batch, steps, repeats in configs:
        o, p = speed(batch, steps, repeats)
        overhead += o
        per_nfe += p
    markdown = "\n\n".join(
        [
            "ODE solvers: fitted order of the global error (y' = (1+t) A y vs expm, float64)\n\n"
            + markdown_table(["solver", "declared order", "measured order"], ode_rows),
            "Adaptive dopri5 on the same problem: max |error| / (tol + tol |y|) (1 = the "
            "tolerance met exactly)\n\n"
            + markdown_table(["rtol = atol", "error / tolerance", "NFE"], tolerance_rows),
            "SDE solvers on geometric Brownian motion (shared Brownian paths)\n\n"
            + markdown_table(
                ["solver", "strong order", "measured", "weak order", "measured"], sde_rows
            ),
            "Overhead ratio: time(simulate) / time(NFE bare drift calls), 3x256 MLP, 1 thread "
            "(goal <= 1.05)\n\n" + markdown_table(["solver", "batch", "steps", "ratio"], overhead),
            "CPU time per NFE (ms) and speed-up of simulate (reference / ours, median over "
            "rounds; goal >= 1.5)\n\n"
            + markdown_table(
                [
                    "method",
                    "batch",
                    "NFE",
                    "simulate",
                    "flow_matching",
                    "speed-up",
                    "torchdiffeq",
                    "speed-up",
                ],
                per_nfe,
            ),
        ]
    )
    return {
        "ode_orders": ode_rows,
        "dopri5_tolerance": tolerance_rows,
        "sde_orders": sde_rows,
        "overhead": overhead,
        "per_nfe": per_nfe,
        "markdown": markdown,
    }


if __name__ == "__main__":
    main("solvers", run)
