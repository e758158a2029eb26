"""Fields on the plane: the vector field ``u_t(x)`` at several times, and a density heatmap.

Both evaluate a user callable on a lattice of points ``(M, 2)`` (CPU, default dtype); wrap a
model that lives on another device so it moves the points there and the result back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import Normalize
from torch import Tensor

from flowdiff.viz.figures import (
    as_numpy,
    as_times,
    evaluate_on_grid,
    grid_points,
    new_figure,
    panel_grid,
    parse_lims,
    save_figure,
    style_plane,
)
from flowdiff.viz.samples import draw_points

__all__ = ["plot_density", "plot_vector_field"]


def plot_vector_field(
    field: Callable[[Tensor, Tensor], Tensor],
    ts: Tensor | np.ndarray | list[float] | float,
    path: str | os.PathLike,
    *,
    lims: object,
    grid: int = 20,
    title: str | None = None,
) -> Path:
    """Quiver plots of ``u_t(x) = field(x, t)`` on a ``grid x grid`` lattice, one panel per t.

    Args:
        field: ``field(x (M, 2), t (M,)) -> (M, 2)`` (the contract of ``ODE.drift`` and of
            ``VectorFieldODE``), e.g. a trained flow's velocity or a mixture's exact marginal
            field.
        ts: the times, one panel each (four per row).
        lims: ``(lo, hi)`` or ``((x_lo, x_hi), (y_lo, y_hi))``.
        grid: arrows per side.

    Arrow lengths are scaled per panel (matplotlib's autoscale: the field's size changes by
    orders of magnitude along a path, and one scale would shrink some panels to dots); the colour
    is ``|u_t(x)|`` on one scale for all panels, with its colour bar.
    """
    times = as_times(ts)
    box = parse_lims(lims)
    X, Y, points = grid_points(box, grid)
    fields = []
    for t in times:
        t_batch = torch.full((len(points),), float(t), dtype=points.dtype)
        u = evaluate_on_grid(field, points, t_batch, name="field", out_shape=(len(points), 2))
        fields.append(u.reshape(*X.shape, 2))
    speeds = [np.hypot(u[..., 0], u[..., 1]) for u in fields]
    norm = Normalize(0.0, max(max(float(s.max()) for s in speeds), 1e-12))
    nrows, ncols = panel_grid(len(times))
    fig, axes = new_figure(nrows, ncols)
    for ax in axes.flat[len(times) :]:
        ax.set_axis_off()
    for ax, t, u, speed in zip(axes.flat, times, fields, speeds):
        arrows = ax.quiver(X, Y, u[..., 0], u[..., 1], speed, cmap="viridis", norm=norm)
        style_plane(ax, box, f"$u_t(x)$ at t = {t:.2f}")
    fig.colorbar(arrows, ax=axes.ravel().tolist(), shrink=0.8, label="$|u_t(x)|$")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_density(
    log_prob: Callable[[Tensor], Tensor],
    path: str | os.PathLike,
    *,
    lims: object,
    grid: int = 200,
    data: Tensor | np.ndarray | None = None,
    data_label: str = "data",
    title: str | None = None,
) -> Path:
    """Heatmap of ``p(x) = exp(log_prob(x))`` on a ``grid x grid`` lattice, data beside it.

    Args:
        log_prob: ``log_prob(x (M, 2)) -> (M,)`` in nats (``-inf`` where ``p = 0`` is fine).
        lims: ``(lo, hi)`` or ``((x_lo, x_hi), (y_lo, y_hi))``.
        data: optional points ``(N, 2)`` shown in a second panel with the same limits.
        data_label: what those points are (the panel's title, with their number), e.g.
            ``"model samples"``.
    """
    box = parse_lims(lims)
    points_ref = None if data is None else as_numpy(data, "data")
    if points_ref is not None and (points_ref.ndim != 2 or points_ref.shape[1] != 2):
        raise ValueError(f"data must be points (N, 2), got shape {points_ref.shape}")
    X, _, points = grid_points(box, grid)
    lp = evaluate_on_grid(
        log_prob, points, name="log_prob", out_shape=(len(points),), allow_neg_inf=True
    )
    fig, axes = new_figure(1, 1 if points_ref is None else 2)
    ax = axes[0, 0]
    image = ax.imshow(
        np.exp(lp).reshape(X.shape),
        origin="lower",
        extent=(*box[0], *box[1]),
        cmap="magma",
        interpolation="bilinear",
    )
    fig.colorbar(image, ax=ax, shrink=0.8, label="$p(x)$")
    style_plane(ax, box, "density")
    if points_ref is not None:
        draw_points(axes[0, 1], points_ref, color="0.3")
        style_plane(axes[0, 1], box, f"{data_label} ({len(points_ref)})")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
