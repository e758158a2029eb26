"""Pictures of probability paths (course notes, section 3): the conditional path around one data
point, the exact marginal field of a Gaussian mixture, conditional against marginal trajectories.

Built on the shared helpers of :mod:`flowdiff.viz.figures` (Agg canvas, atomic saving); every
function writes one file and returns its path. 2D data only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from flowdiff.paths import GaussianMixtureOracle, ProbabilityPath
from flowdiff.paths.schedules import check_time
from flowdiff.solvers import simulate
from flowdiff.utils import positive_int
from flowdiff.viz.figures import (
    as_numpy,
    as_times,
    evaluate_on_grid,
    grid_points,
    new_figure,
    panel_grid,
    parse_lims,
    save_figure,
    square_lims,
    style_plane,
)
from flowdiff.viz.samples import draw_points

__all__ = ["plot_conditional_path", "plot_conditional_vs_marginal", "plot_marginal_field"]


def _path_times(ts: object) -> np.ndarray:
    times = as_times(ts)
    check_time(torch.from_numpy(times), "ts")
    return times


def _save(fig: Figure, out: str | os.PathLike) -> Path:
    # Constrained layout with equal-aspect panels needs a second pass to make room for the
    # titles of a row of panels without a colour bar (one pass clips them at the top edge);
    # save_figure's own draw then finds the layout already settled.
    fig.get_layout_engine().execute(fig)
    return save_figure(fig, out)


def plot_conditional_path(
    path: ProbabilityPath,
    x1: Tensor,
    ts: Tensor | np.ndarray | list[float],
    out: str | os.PathLike,
    *,
    n: int = 500,
    lims: object = None,
    generator: torch.Generator | None = None,
) -> Path:
    """Samples of the conditional path ``p_t(. | x1)`` at each time of ``ts``, one panel per t,
    with ``x1`` marked by a star: for a Gaussian path the cloud ``N(alpha_t x1, beta_t^2 I)``
    shrinks from the noise (t=0) onto ``x1`` (t=1).

    Args:
        path: a path with a source (``path.sample_x0``), e.g. ``GaussianPath``.
        x1: the data point, ``(2,)``.
        ts: times in ``[0, 1]``.
        n: samples per panel.
        lims: plot limits (default: a square around every sample).
    """
    if not isinstance(path, ProbabilityPath):
        raise TypeError(f"path must be a ProbabilityPath, got {type(path).__name__}")
    point = as_numpy(x1, "x1")
    if point.shape != (2,):
        raise ValueError(f"x1 must be one 2D point of shape (2,), got {point.shape}")
    times = _path_times(ts)
    x1_batch = torch.as_tensor(point, dtype=torch.get_default_dtype()).expand(
        positive_int(n, "n"), 2
    )
    x0 = path.sample_x0(x1_batch, generator=generator)
    clouds = [
        as_numpy(path.sample(x0, x1_batch, float(t), generator=generator).x_t, "x_t") for t in times
    ]
    box = parse_lims(lims) if lims is not None else square_lims(point[None], *clouds)
    nrows, ncols = panel_grid(len(times))
    fig, axes = new_figure(nrows, ncols)
    for ax in axes.flat[len(times) :]:
        ax.set_axis_off()
    for ax, t, cloud in zip(axes.flat, times, clouds):
        draw_points(ax, cloud, label="$x_t \\sim p_t(\\cdot | x_1)$")
        ax.scatter(*point, marker="*", s=220, color="C3", edgecolor="k", zorder=4, label="$x_1$")
        style_plane(ax, box, f"conditional path, t = {t:.2f}")
    axes.flat[0].legend(loc="upper left", fontsize=8, framealpha=0.8)
    return _save(fig, out)


def plot_marginal_field(
    oracle: GaussianMixtureOracle,
    ts: Tensor | np.ndarray | list[float],
    out: str | os.PathLike,
    *,
    lims: object = (-5.0, 5.0),
    grid: int = 20,
    density_grid: int = 150,
) -> Path:
    """The exact marginal vector field ``u_t(x)`` (quiver, ``grid`` arrows per side) over the
    marginal density ``p_t(x)`` (heatmap, its own colour scale per panel since it sharpens from
    ``N(0, I)`` to the mixture), one panel per time of ``ts``.
    """
    if not isinstance(oracle, GaussianMixtureOracle):
        raise TypeError(f"oracle must be a GaussianMixtureOracle, got {type(oracle).__name__}")
    if oracle.mixture.dim != 2:
        raise ValueError(f"the mixture must be 2D to plot, got dimension {oracle.mixture.dim}")
    times = _path_times(ts)
    box = parse_lims(lims)
    X, Y, arrows_at = grid_points(box, grid)
    D, _, density_at = grid_points(box, density_grid)
    nrows, ncols = panel_grid(len(times))
    fig, axes = new_figure(nrows, ncols)
    for ax in axes.flat[len(times) :]:
        ax.set_axis_off()
    for ax, t in zip(axes.flat, times):
        log_p = evaluate_on_grid(
            oracle.log_prob,
            density_at,
            float(t),
            name="oracle.log_prob",
            out_shape=(len(density_at),),
        )
        u = evaluate_on_grid(
            oracle.vector_field,
            arrows_at,
            float(t),
            name="oracle.vector_field",
            out_shape=(len(arrows_at), 2),
        )
        ax.imshow(
            np.exp(log_p).reshape(D.shape),
            origin="lower",
            extent=(*box[0], *box[1]),
            cmap="magma",
            interpolation="bilinear",
        )
        ax.quiver(X, Y, u[:, 0].reshape(X.shape), u[:, 1].reshape(X.shape), color="w", alpha=0.85)
        style_plane(ax, box, f"$u_t(x)$ over $p_t(x)$, t = {t:.2f}")
    return _save(fig, out)


def plot_conditional_vs_marginal(
    oracle: GaussianMixtureOracle,
    out: str | os.PathLike,
    *,
    n: int = 40,
    steps: int = 50,
    lims: object = None,
    generator: torch.Generator | None = None,
) -> Path:
    """Left: conditional trajectories ``t -> x_t = alpha_t x1 + beta_t x0`` for independent
    pairs ``(x0, x1)``, which cross each other. Right: trajectories of the marginal ODE
    ``dx = u_t(x) dt`` from the same ``x0`` (RK4, ``steps`` steps), which never cross and land
    on the mixture (course notes, Figure "conditional vs marginal").
    """
    if not isinstance(oracle, GaussianMixtureOracle):
        raise TypeError(f"oracle must be a GaussianMixtureOracle, got {type(oracle).__name__}")
    if oracle.mixture.dim != 2:
        raise ValueError(f"the mixture must be 2D to plot, got dimension {oracle.mixture.dim}")
    x1 = oracle.mixture.sample(positive_int(n, "n"), generator=generator)
    x0 = oracle.path.sample_x0(x1, generator=generator)
    ts = torch.linspace(0.0, 1.0, positive_int(steps, "steps") + 1, dtype=x1.dtype)
    conditional = torch.stack([oracle.path.sample(x0, x1, float(t)).x_t for t in ts])
    marginal = simulate(oracle, x0, ts, solver="rk4", save="all").xs
    paths = {
        "conditional paths $x_t | x_1$": as_numpy(conditional, "conditional"),
        "marginal ODE $dx = u_t(x) dt$": as_numpy(marginal, "marginal"),
    }
    box = parse_lims(lims) if lims is not None else square_lims(*paths.values())
    fig, axes = new_figure(1, 2)
    for ax, (title, xs) in zip(axes.flat, paths.items()):
        ax.plot(xs[..., 0], xs[..., 1], color="C0", lw=1.0, alpha=0.6)
        ax.scatter(*xs[0].T, s=14, color="0.4", zorder=3, label="$x_0$ (noise)")
        ax.scatter(*xs[-1].T, s=14, color="C3", zorder=3, label="$x_1$")
        style_plane(ax, box, title)
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
    return _save(fig, out)
