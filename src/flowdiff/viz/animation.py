"""GIF animations: samples carried along the flow (the notes' ``flow.gif``), a density evolving.

One frame per saved time. Frames are rendered with matplotlib on the Agg canvas (one figure,
updated in place, which is several times faster than a figure per frame) or with Pillow for image
grids, and written as a GIF by Pillow (:func:`~flowdiff.viz.figures.write_gif`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowdiff.viz.figures import (
    as_numpy,
    as_times,
    caption,
    check_gif_args,
    evaluate_on_grid,
    figure_to_array,
    grid_points,
    new_figure,
    parse_lims,
    square_lims,
    style_plane,
    write_gif,
)
from flowdiff.viz.samples import auto_value_range, grid_array, histogram_bins, marker_size

__all__ = ["animate_density", "animate_samples"]


def _frame_label(t: float, i: int, n: int) -> str:
    # The index makes every frame unique, so the GIF keeps one frame per time even when the
    # picture does not change between two times.
    return f"t = {t:.2f}   ({i + 1}/{n})"


def animate_samples(
    xs: Tensor | np.ndarray,
    ts: Tensor | np.ndarray | list[float],
    path: str | os.PathLike,
    *,
    lims: object = None,
    fps: float = 10,
    nrow: int | None = None,
) -> Path:
    """A GIF of a batch moving along the flow, one frame per time in ``ts (T,)``.

    Args:
        xs: ``(T, B, 2)`` points (a scatter per frame, equal aspect, fixed ``lims``: default a
            square around every frame), ``(T, B, 1)`` scalars (a histogram per frame on fixed
            bins), or ``(T, B, C, H, W)`` images, C = 1 or 3 (an image grid per frame, ``nrow``
            per row; values as in :func:`~flowdiff.viz.samples.image_grid`, one range for all
            frames so brightness is comparable).
        ts: the times of the frames.
        fps: frames per second.
    """
    check_gif_args(path, fps)
    times = as_times(ts)
    frames_data = as_numpy(xs, "xs")
    if frames_data.ndim < 3 or frames_data.shape[0] != len(times) or frames_data.shape[1] == 0:
        raise ValueError(
            f"xs must be (T, B, ...) with T = len(ts) = {len(times)} and B >= 1, "
            f"got shape {frames_data.shape}"
        )
    n = len(times)
    if frames_data.ndim == 5 and frames_data.shape[2] in (1, 3):
        value_range = auto_value_range(frames_data)
        frames = [
            caption(grid_array(frames_data[i], nrow, value_range), _frame_label(t, i, n))
            for i, t in enumerate(times)
        ]
        return write_gif(frames, path, fps)
    if frames_data.ndim != 3 or frames_data.shape[2] not in (1, 2):
        raise ValueError(
            "xs must be (T, B, 2) points, (T, B, 1) scalars or (T, B, C, H, W) images with C in "
            f"{{1, 3}}, got shape {frames_data.shape}"
        )

    fig, axes = new_figure(1, 1)
    ax = axes[0, 0]
    frames = []
    if frames_data.shape[2] == 2:
        box = parse_lims(lims) if lims is not None else square_lims(frames_data)
        points = ax.scatter(
            *frames_data[0].T, s=marker_size(frames_data.shape[1]), alpha=0.6, lw=0, color="C0"
        )
        style_plane(ax, box)
        for i, t in enumerate(times):
            points.set_offsets(frames_data[i])
            ax.set_title(_frame_label(t, i, n))
            frames.append(figure_to_array(fig))
            # The layout is fixed by the first frame: every frame the same, and faster.
            fig.set_layout_engine("none")
    else:
        bins = histogram_bins(frames_data)
        # The same y limit for every frame, from the tallest histogram, so heights compare.
        top = max(np.histogram(f[:, 0], bins=bins, density=True)[0].max() for f in frames_data)
        for i, t in enumerate(times):
            ax.clear()
            ax.hist(frames_data[i, :, 0], bins=bins, density=True, color="C0", alpha=0.8)
            ax.set_ylim(0, 1.05 * top)
            ax.set_xlabel("$x_t$")
            ax.set_ylabel("density")
            ax.set_title(_frame_label(t, i, n))
            frames.append(figure_to_array(fig))
    return write_gif(frames, path, fps)


def animate_density(
    log_prob_t: Callable[[Tensor, Tensor], Tensor],
    ts: Tensor | np.ndarray | list[float],
    path: str | os.PathLike,
    *,
    lims: object,
    grid: int = 100,
    fps: float = 10,
) -> Path:
    """A GIF of ``p_t(x) = exp(log_prob_t(x, t))`` on a ``grid x grid`` lattice, a frame per t.

    Args:
        log_prob_t: ``log_prob_t(x (M, 2), t (M,)) -> (M,)``, e.g. a mixture oracle's marginal
            ``log_prob`` under a Gaussian path, or a CNF's likelihood at time t.
        ts: the times of the frames.
        lims: ``(lo, hi)`` or ``((x_lo, x_hi), (y_lo, y_hi))``.

    The colour scale is set per frame (from 0 to that frame's maximum): the density sharpens by
    orders of magnitude from noise to data, and one scale for all would leave the first frames
    black.
    """
    check_gif_args(path, fps)
    times = as_times(ts)
    box = parse_lims(lims)
    X, _, points = grid_points(box, grid)
    fig, axes = new_figure(1, 1)
    ax = axes[0, 0]
    image = ax.imshow(
        np.zeros(X.shape),
        origin="lower",
        extent=(*box[0], *box[1]),
        cmap="magma",
        interpolation="bilinear",
    )
    style_plane(ax, box)
    frames = []
    for i, t in enumerate(times):
        t_batch = torch.full((len(points),), float(t), dtype=points.dtype)
        lp = evaluate_on_grid(
            log_prob_t,
            points,
            t_batch,
            name="log_prob_t",
            out_shape=(len(points),),
            allow_neg_inf=True,
        )
        density = np.exp(lp).reshape(X.shape)
        image.set_data(density)
        image.set_clim(0.0, max(float(density.max()), 1e-300))
        ax.set_title(_frame_label(t, i, len(times)))
        frames.append(figure_to_array(fig))
        fig.set_layout_engine("none")  # fixed by the first frame: identical frames, faster
    return write_gif(frames, path, fps)
