"""Trajectories of an ODE/SDE: ``x_t`` against ``t`` in 1D, paths in the plane in 2D.

The input is what ``solvers.simulate(..., save="all")`` returns: ``xs (T, B, D)`` at times
``ts (T,)``. An ``exact`` solution (the linear ODE's flow, the OU mean, a mixture's marginal
flow) is drawn dashed over the numerical one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch import Tensor

from flowdiff.utils import positive_int
from flowdiff.viz.figures import (
    PANEL_INCHES,
    WIDE_INCHES,
    as_numpy,
    as_times,
    new_figure,
    parse_lims,
    save_figure,
    square_lims,
    style_plane,
)

__all__ = ["plot_trajectories"]


def _check_paths(xs: np.ndarray, name: str, n_times: int) -> None:
    if xs.ndim != 3 or xs.shape[2] not in (1, 2) or xs.shape[1] == 0:
        raise ValueError(f"{name} must have shape (T, B, D) with D in {{1, 2}}, got {xs.shape}")
    if xs.shape[0] != n_times:
        raise ValueError(f"{name} has {xs.shape[0]} time steps but ts has {n_times}")


def plot_trajectories(
    xs: Tensor | np.ndarray,
    ts: Tensor | np.ndarray,
    path: str | os.PathLike,
    *,
    exact: Tensor | np.ndarray | None = None,
    max_paths: int = 64,
    lims: object = None,
    title: str | None = None,
) -> Path:
    """Plot the first ``max_paths`` trajectories of ``xs (T, B, D)`` saved at ``ts (T,)``.

    - D = 1: ``x_t`` against ``t``, one line per path.
    - D = 2: paths in the plane (equal aspect), start ``x_{ts[0]}`` marked by a grey dot, end
      ``x_{ts[-1]}`` by a red one; ``lims`` fixes the view (default: square around the paths).

    ``exact (T, B, D)``, when given, is drawn dashed black over the same paths.
    """
    t = as_times(ts)
    paths = as_numpy(xs, "xs")
    _check_paths(paths, "xs", len(t))
    ref = None
    if exact is not None:
        ref = as_numpy(exact, "exact")
        if ref.shape != paths.shape:
            raise ValueError(f"exact must have the shape of xs {paths.shape}, got {ref.shape}")
    positive_int(max_paths, "max_paths")
    paths = paths[:, :max_paths]
    ref = None if ref is None else ref[:, :max_paths]

    one_d = paths.shape[2] == 1
    fig, axes = new_figure(1, 1, panel_width=WIDE_INCHES if one_d else PANEL_INCHES)
    ax = axes[0, 0]
    # Thin, translucent lines: dozens of paths overlap without turning into one blot; the exact
    # solution dashed and thinner on top, so both stay visible where they agree.
    line = {"color": "C0", "lw": 1.2, "alpha": 0.6}
    exact_line = {"color": "k", "lw": 0.7, "ls": (0, (3, 3)), "alpha": 0.8}
    if one_d:
        ax.plot(t, paths[..., 0], **line)[0].set_label("simulated")
        if ref is not None:
            ax.plot(t, ref[..., 0], **exact_line)[0].set_label("exact")
        ax.legend(loc="upper left", fontsize=8)
        ax.set_xlabel("t")
        ax.set_ylabel("$x_t$")
        ax.set_xlim(t.min(), t.max())
        if title:
            ax.set_title(title)
    else:
        ax.plot(paths[..., 0], paths[..., 1], **line)[0].set_label("simulated")
        if ref is not None:
            ax.plot(ref[..., 0], ref[..., 1], **exact_line)[0].set_label("exact")
        ax.scatter(*paths[0].T, s=14, color="0.4", zorder=3, label=f"start, t = {t[0]:.2f}")
        ax.scatter(*paths[-1].T, s=14, color="C3", zorder=3, label=f"end, t = {t[-1]:.2f}")
        box = (
            parse_lims(lims)
            if lims is not None
            else square_lims(paths, *([] if ref is None else [ref]))
        )
        style_plane(ax, box, title)
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
    return save_figure(fig, path)
