"""Figures of the course's worked examples, simulated with ``flowdiff.solvers``.

- :func:`plot_linear_ode`: trajectories of ``dX = -theta X dt`` from many starts, exact flow
  ``x0 e^{-theta t}`` dashed on top.
- :func:`plot_euler_vs_exact`: Euler's polygon for several step sizes against the exact flow.
- :func:`plot_brownian_motion`, :func:`plot_ornstein_uhlenbeck`: paths for several ``sigma``,
  with the closed-form ``mean +- 2 std`` band of their marginals.
- :func:`plot_langevin`: Langevin samples approaching a Gaussian mixture, snapshots over its
  density.

Each function simulates with a fixed seed, writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from flowdiff.distributions import GaussianMixture
from flowdiff.dynamics import BrownianMotion, LangevinDynamics, LinearODE, OrnsteinUhlenbeck
from flowdiff.solvers import simulate, time_grid
from flowdiff.viz.figures import (
    PANEL_INCHES,
    WIDE_INCHES,
    evaluate_on_grid,
    grid_points,
    new_figure,
    save_figure,
    style_plane,
)
from flowdiff.viz.samples import draw_points
from flowdiff.viz.trajectories import plot_trajectories

__all__ = [
    "plot_brownian_motion",
    "plot_euler_vs_exact",
    "plot_langevin",
    "plot_linear_ode",
    "plot_ornstein_uhlenbeck",
]


def _check_sigmas(sigmas: Sequence[float]) -> list[float]:
    values = list(sigmas)
    if not values or any(not (isinstance(s, (int, float)) and s > 0) for s in values):
        raise ValueError(f"sigmas must be a non-empty list of positive numbers, got {sigmas!r}")
    return [float(s) for s in values]


def plot_linear_ode(
    path: str | os.PathLike,
    *,
    theta: float = 1.0,
    starts: int = 15,
    t1: float = 3.0,
    steps: int = 60,
    solver: str = "rk4",
) -> Path:
    """Trajectories of ``dX = -theta X dt`` (1D) from ``starts`` points in ``[-2, 2]``,
    simulated with ``solver`` on ``steps`` steps, the exact flow dashed over them."""
    ode = LinearODE(theta)
    x0 = torch.linspace(-2.0, 2.0, starts)[:, None]
    sol = simulate(ode, x0, time_grid(steps, t1=t1), solver, save="all")
    exact = torch.stack([ode.flow(x0, float(t)) for t in sol.ts])
    return plot_trajectories(
        sol.xs,  # type: ignore[arg-type]
        sol.ts,
        path,
        exact=exact,
        max_paths=starts,
        title=f"linear ODE $u_t(x) = -\\theta x$, $\\theta = {theta:g}$ ({solver}, {steps} steps)",
    )


def plot_euler_vs_exact(
    path: str | os.PathLike,
    *,
    theta: float = 1.0,
    x0: float = 2.0,
    t1: float = 3.0,
    step_counts: Sequence[int] = (2, 4, 8, 32),
) -> Path:
    """Euler's polygon from ``x0`` for each number of steps against ``x0 e^{-theta t}``; the
    legend gives each run's error at ``t1`` (halving h halves it: order 1)."""
    ode = LinearODE(theta)
    start = torch.tensor([[x0]], dtype=torch.float64)
    fig, axes = new_figure(1, 1, panel_width=WIDE_INCHES)
    ax = axes[0, 0]
    fine = np.linspace(0.0, t1, 400)
    ax.plot(fine, x0 * np.exp(-theta * fine), color="k", lw=2, label="exact $x_0 e^{-\\theta t}$")
    exact_end = x0 * math.exp(-theta * t1)
    for i, n in enumerate(step_counts):
        sol = simulate(ode, start, time_grid(n, t1=t1, dtype=torch.float64), "euler", save="all")
        xs = sol.xs[:, 0, 0].numpy()  # type: ignore[index]
        error = abs(float(sol.x) - exact_end)
        ax.plot(sol.ts.numpy(), xs, "o-", color=f"C{i}", ms=4, lw=1.2,
                label=f"Euler, h = {t1 / n:.3g}: error {error:.2g}")  # fmt: skip
    ax.axhline(0.0, color="0.7", lw=0.8)
    ax.set_xlabel("t")
    ax.set_ylabel("$x_t$")
    ax.set_xlim(0.0, t1)
    ax.legend(fontsize=8)
    ax.set_title(f"Euler vs exact flow, $\\theta = {theta:g}$")
    return save_figure(fig, path)


def _plot_sde_per_sigma(
    path: str | os.PathLike,
    sdes: Sequence[BrownianMotion | OrnsteinUhlenbeck],
    *,
    start: float,
    paths: int,
    t1: float,
    steps: int,
    seed: int,
) -> Path:
    """One panel per SDE: ``paths`` Euler-Maruyama paths from ``start``, the exact mean dashed
    and the exact ``mean +- 2 std`` band of ``X_t`` shaded (dotted: OU stationary ``+- 2 std``).
    """
    gen = torch.Generator().manual_seed(seed)
    grid = time_grid(steps, t1=t1)
    t = grid.numpy()
    fig, axes = new_figure(1, len(sdes), panel_width=PANEL_INCHES)
    for ax, sde in zip(axes[0], sdes):
        x_start = torch.full((paths, 1), start)
        sol = simulate(sde, x_start, grid, "euler_maruyama", save="all", generator=gen)
        # the closed forms at every grid time: one start per time, t as a batch (T,)
        mean = sde.mean(torch.full((len(grid), 1), start), grid)[:, 0].numpy()
        std = sde.variance(grid).sqrt().numpy()
        ax.fill_between(t, mean - 2 * std, mean + 2 * std, color="C0", alpha=0.15, lw=0)
        ax.plot(t, sol.xs[..., 0].numpy(), lw=0.8)  # type: ignore[index]
        ax.plot(t, mean, color="k", lw=1.2, ls="--")
        if isinstance(sde, OrnsteinUhlenbeck):
            for sign in (-2, 2):
                ax.axhline(sign * sde.stationary_std, color="k", lw=0.8, ls=":")
            name = f"OU, $\\theta = {sde.theta:g}$"
        else:
            name = "Brownian motion"
        ax.set_title(f"{name}, $\\sigma = {sde.sigma:g}$", fontsize=10)
        ax.set_xlabel("t")
        ax.set_xlim(0.0, t1)
    axes[0, 0].set_ylabel("$X_t$")
    return save_figure(fig, path)


def plot_brownian_motion(
    path: str | os.PathLike,
    *,
    sigmas: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
    paths: int = 8,
    t1: float = 5.0,
    steps: int = 500,
    seed: int = 0,
) -> Path:
    """Paths of ``dX = sigma dW`` from 0, one panel per ``sigma``, over the exact band
    ``+- 2 sigma sqrt(t)``."""
    sdes = [BrownianMotion(s) for s in _check_sigmas(sigmas)]
    return _plot_sde_per_sigma(path, sdes, start=0.0, paths=paths, t1=t1, steps=steps, seed=seed)


def plot_ornstein_uhlenbeck(
    path: str | os.PathLike,
    *,
    sigmas: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
    theta: float = 1.0,
    x0: float = 2.0,
    paths: int = 8,
    t1: float = 5.0,
    steps: int = 500,
    seed: int = 0,
) -> Path:
    """Paths of ``dX = -theta X dt + sigma dW`` from ``x0``, one panel per ``sigma``: the mean
    ``x0 e^{-theta t}`` decays, the band widens to the stationary ``+- 2 sigma/sqrt(2 theta)``."""
    sdes = [OrnsteinUhlenbeck(theta, s) for s in _check_sigmas(sigmas)]
    return _plot_sde_per_sigma(path, sdes, start=x0, paths=paths, t1=t1, steps=steps, seed=seed)


def plot_langevin(
    path: str | os.PathLike,
    *,
    target: GaussianMixture | None = None,
    sigma: float = math.sqrt(2.0),
    times: Sequence[float] = (0.0, 1.0, 4.0, 20.0),
    n: int = 1000,
    steps_per_unit: int = 20,
    seed: int = 0,
) -> Path:
    """Samples of ``dX = 1/2 sigma^2 grad log p(X) dt + sigma dW`` started from a Gaussian off
    to one side, one panel per time in ``times`` (increasing, from 0), over the density ``p``
    (default: 4 modes of std 0.7 on a circle of radius 2, close enough for the chain to
    balance its mass between them within t = 20)."""
    mixture = target if target is not None else GaussianMixture.symmetric_2d(4, 2.0, 0.7)
    snapshots = [float(t) for t in times]
    if (
        not snapshots
        or snapshots[0] != 0.0
        or any(b <= a for a, b in itertools.pairwise(snapshots))
    ):
        raise ValueError(f"times must start at 0 and increase, got {times!r}")
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.tensor([5.0, -5.0]) + 0.5 * torch.randn(n, 2, generator=gen)
    t_end = snapshots[-1]
    steps = max(1, math.ceil(steps_per_unit * t_end))
    grid = torch.tensor(sorted({*np.linspace(0, t_end, steps + 1).tolist(), *snapshots}))
    sol = simulate(
        LangevinDynamics(mixture, sigma),
        x0,
        grid,
        "euler_maruyama",
        save=torch.tensor(snapshots),
        generator=gen,
    )
    box = ((-7.0, 7.0), (-7.0, 7.0))
    X, _, points = grid_points(box, 150)
    density = np.exp(
        evaluate_on_grid(mixture.log_prob, points, name="log_prob", out_shape=(len(points),))
    ).reshape(X.shape)
    fig, axes = new_figure(1, len(snapshots))
    for ax, t, x in zip(axes[0], snapshots, sol.xs):  # type: ignore[arg-type]
        ax.contour(X, X.T, density, levels=6, cmap="Greys", linewidths=0.8)
        draw_points(ax, x.numpy(), color="C3")
        style_plane(ax, box, f"Langevin, t = {t:g}")
    return save_figure(fig, path)
