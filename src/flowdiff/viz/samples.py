"""Pictures of samples: 2D scatter, 1D histogram, image grids.

:func:`save_samples` picks the right one from the shape; the training loop calls it for its
snapshots. Image grids are drawn with Pillow alone (no matplotlib) at integer upscaling, so each
pixel of an 8x8 digit stays a crisp square.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from PIL import Image
from torch import Tensor

from flowdiff.io import atomic_write
from flowdiff.utils import positive_int
from flowdiff.viz.figures import (
    Lims,
    as_numpy,
    caption,
    new_figure,
    parse_lims,
    save_figure,
    square_lims,
    style_plane,
)

__all__ = [
    "auto_value_range",
    "draw_points",
    "grid_array",
    "histogram_bins",
    "image_grid",
    "marker_size",
    "plot_samples",
    "save_samples",
]

ArrayLike = Tensor | np.ndarray
MIN_TILE_PX = 32  # small images (8x8 digits) are upscaled until their short side is >= this
PAD_PX = 2  # white gap between and around tiles
_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


# ---------------------------------------------------------------------- image grids
def _check_images(x: np.ndarray, name: str) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(
            f"{name} must be images (N, C, H, W) with N >= 1 and C in {{1, 3}}, got shape {x.shape}"
        )


def auto_value_range(x: np.ndarray) -> tuple[float, float]:
    """The range of images of any shape read as black..white when none is given."""
    # Model outputs live in [-1, 1] (any negative value says so); [0, 1] images stay as they are;
    # anything larger is raw data (8-bit 0..255, digits 0..16) scaled by its own maximum.
    if x.min() < 0:
        return -1.0, 1.0
    return 0.0, max(1.0, float(x.max()))


def grid_array(
    x: np.ndarray, nrow: int | None = None, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` into one uint8 picture ``(H', W')`` (C=1) or ``(H', W', 3)``.

    ``nrow`` images per row (default ``ceil(sqrt(N))``); each image upscaled by the integer
    ``s = ceil(MIN_TILE_PX / min(H, W))`` (at least 1) and framed by ``PAD_PX`` white pixels, so
    ``W' = ncol (s W + PAD_PX) + PAD_PX``. ``value_range`` ``(lo, hi)`` maps to black..white and
    is clipped; by default ``(-1, 1)`` if any value is negative, else ``(0, max(1, x.max()))``.
    """
    _check_images(x, "x")
    n, c, h, w = x.shape
    if nrow is None:
        nrow = math.ceil(math.sqrt(n))
    positive_int(nrow, "nrow (images per row)")
    lo, hi = auto_value_range(x) if value_range is None else value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}")
    pixels = np.round(np.clip((x - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)
    scale = max(1, math.ceil(MIN_TILE_PX / min(h, w)))
    pixels = pixels.repeat(scale, axis=2).repeat(scale, axis=3)
    th, tw = h * scale, w * scale
    ncol, nrows = min(nrow, n), math.ceil(n / nrow)
    canvas = np.full(
        (c, nrows * (th + PAD_PX) + PAD_PX, ncol * (tw + PAD_PX) + PAD_PX), 255, np.uint8
    )
    for i in range(n):
        top = PAD_PX + (i // nrow) * (th + PAD_PX)
        left = PAD_PX + (i % nrow) * (tw + PAD_PX)
        canvas[:, top : top + th, left : left + tw] = pixels[i]
    return canvas[0] if c == 1 else canvas.transpose(1, 2, 0)


def image_grid(
    x: ArrayLike,
    path: str | os.PathLike,
    nrow: int | None = None,
    *,
    value_range: tuple[float, float] | None = None,
    title: str | None = None,
) -> Path:
    """Save images ``x (N, C, H, W)``, C = 1 (grey) or 3 (RGB), as one grid (PNG or JPEG).

    Values: ``[-1, 1]`` (model space) when any is negative, else ``[0, 1]``, or ``[0, max]`` for
    raw data above 1 (0..255, digits' 0..16); pass ``value_range`` to fix it. See
    :func:`grid_array` for the layout. The file is mode ``L`` (grey) or ``RGB`` (colour, or any
    grid with a ``title`` strip on top).
    """
    path = Path(path)
    fmt = _IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"path must end in .png, .jpg or .jpeg for an image grid, got {path}")
    pixels = grid_array(as_numpy(x, "x"), nrow, value_range)
    if title:
        pixels = caption(pixels, title)
    with atomic_write(path) as tmp:
        Image.fromarray(pixels).save(tmp, format=fmt)
    return path


# ---------------------------------------------------------------------- points
def marker_size(n: int) -> float:
    """Scatter marker area for ``n`` points: 100 or 100 000 points both stay readable."""
    return float(np.clip(3000 / n, 0.5, 20))


def draw_points(ax: Axes, x: np.ndarray, *, color: str = "C0", label: str | None = None) -> None:
    """Scatter ``x (N, 2)`` translucently, rasterised (a PDF of 10^5 points stays small)."""
    ax.scatter(
        x[:, 0],
        x[:, 1],
        s=marker_size(len(x)),
        alpha=0.6,
        color=color,
        lw=0,
        label=label,
        rasterized=True,
    )


def histogram_bins(*values: np.ndarray) -> np.ndarray:
    """Common bin edges covering every array, so their histograms can be compared; about
    ``sqrt(n)`` bins for the smallest array (10 to 80), so each bin holds enough points."""
    bins = int(np.clip(np.sqrt(min(v.size for v in values)), 10, 80))
    lo = min(float(v.min()) for v in values)
    hi = max(float(v.max()) for v in values)
    pad = max(hi - lo, 1e-3) * 0.05
    return np.linspace(lo - pad, hi + pad, bins + 1)


def _check_points(x: np.ndarray, name: str) -> None:
    if x.ndim != 2 or x.shape[1] not in (1, 2) or x.shape[0] == 0:
        raise ValueError(f"{name} must be points (N, 2) or scalars (N, 1), got shape {x.shape}")


def plot_samples(
    x: ArrayLike,
    path: str | os.PathLike,
    reference: ArrayLike | None = None,
    *,
    title: str | None = None,
    lims: object = None,
) -> Path:
    """Scatter samples ``x (N, 2)`` (histogram for ``(N, 1)``), beside the data ``reference``.

    2D: a "data" panel (when ``reference (M, 2)`` is given) next to a "samples" panel, same
    limits (``lims``, default: square around both) and equal aspect. 1D: one density histogram,
    the reference drawn as an outline over the samples.
    """
    samples = as_numpy(x, "x")
    _check_points(samples, "x")
    ref = None if reference is None else as_numpy(reference, "reference")
    if ref is not None:
        _check_points(ref, "reference")
        if ref.shape[1] != samples.shape[1]:
            raise ValueError(
                f"reference must have {samples.shape[1]} column(s) like x, got shape {ref.shape}"
            )
    if samples.shape[1] == 1:
        fig, axes = new_figure(1, 1)
        ax = axes[0, 0]
        bins = histogram_bins(samples, *([] if ref is None else [ref]))
        ax.hist(samples[:, 0], bins=bins, density=True, color="C0", alpha=0.7, label="samples")
        if ref is not None:
            ax.hist(ref[:, 0], bins=bins, density=True, histtype="step", color="k", label="data")
            ax.legend()
        ax.set_xlabel("x")
        ax.set_ylabel("density")
        if title:
            ax.set_title(title)
        return save_figure(fig, path)

    box: Lims = (
        parse_lims(lims)
        if lims is not None
        else square_lims(samples, *([] if ref is None else [ref]))
    )
    fig, axes = new_figure(1, 1 if ref is None else 2)
    if ref is not None:
        draw_points(axes[0, 0], ref, color="0.3")
        style_plane(axes[0, 0], box, f"data ({len(ref)})")
    draw_points(axes[0, -1], samples, color="C0")
    style_plane(axes[0, -1], box, f"samples ({len(samples)})")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# ---------------------------------------------------------------------- dispatch
def save_samples(
    x: ArrayLike, path: str | os.PathLike, *, title: str | None = None, nrow: int | None = None
) -> Path:
    """Save a batch in the picture that suits its shape; returns ``path``.

    - ``(N, 2)``: scatter (:func:`plot_samples`); ``(N, 1)``: histogram.
    - ``(N, C, H, W)`` with C = 1 or 3: image grid (:func:`image_grid`, ``nrow`` per row),
      values read as ``[-1, 1]`` if any is negative, else ``[0, 1]`` (or ``[0, max]`` above 1).
    """
    array = as_numpy(x, "x")
    if array.ndim == 2 and array.shape[1] in (1, 2):
        return plot_samples(array, path, title=title)
    if array.ndim == 4 and array.shape[1] in (1, 3):
        return image_grid(array, path, nrow, title=title)
    raise ValueError(
        "x must be points (N, 2), scalars (N, 1) or images (N, C, H, W) with C in {1, 3}, "
        f"got shape {array.shape}"
    )
