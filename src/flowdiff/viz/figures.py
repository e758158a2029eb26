"""What every picture shares: input conversion, figure creation, atomic saving, GIF writing.

Figures are built as ``matplotlib.figure.Figure`` objects on the Agg canvas directly, never
through ``pyplot``: no display, no global figure registry to leak memory, and nothing that
changes the backend of a user's interactive session. Every file goes through
:func:`flowdiff.io.atomic_write`.

Conventions (also relied on by tests): each panel is ``PANEL_INCHES`` square at ``DPI`` dots per
inch, so a figure of ``r x c`` panels is ``(c * PANEL_PX) x (r * PANEL_PX)`` pixels (width x
height); 2D panels use equal aspect so circles look round.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from flowdiff.io import atomic_write

__all__ = [
    "DPI",
    "PANEL_INCHES",
    "PANEL_PX",
    "WIDE_INCHES",
    "WIDE_PX",
    "as_numpy",
    "as_times",
    "caption",
    "check_gif_args",
    "evaluate_on_grid",
    "figure_to_array",
    "grid_points",
    "new_figure",
    "panel_grid",
    "parse_lims",
    "save_figure",
    "square_lims",
    "style_plane",
    "write_gif",
]

DPI = 100
PANEL_INCHES = 4.0
PANEL_PX = int(DPI * PANEL_INCHES)
WIDE_INCHES = 6.0  # panels with time or steps on the x axis (loss curves, 1D trajectories)
WIDE_PX = int(DPI * WIDE_INCHES)
_FIGURE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".jpg": "jpg", ".jpeg": "jpg"}

Lims = tuple[tuple[float, float], tuple[float, float]]


def as_numpy(x: object, name: str, *, allow_neg_inf: bool = False) -> np.ndarray:
    """A tensor (any device, with or without grad) or array-like as a finite float64 array.

    ``allow_neg_inf`` lets ``-inf`` through (a log-density of 0); NaN and ``+inf`` never pass.
    """
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    try:
        array = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be a tensor or an array of numbers, got {type(x).__name__}"
        ) from err
    bad = ~np.isfinite(array)
    if allow_neg_inf:
        bad &= array != -np.inf
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} non-finite value(s) (NaN or inf)")
    return array


def as_times(ts: object, name: str = "ts") -> np.ndarray:
    """Times ``(T,)`` from a float, a sequence or a tensor; at least one."""
    t = np.atleast_1d(as_numpy(ts, name))
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of times, got shape {t.shape}")
    return t


def parse_lims(lims: object, name: str = "lims") -> Lims:
    """``(lo, hi)`` for both axes, or ``((x_lo, x_hi), (y_lo, y_hi))``; each ``lo < hi``."""
    try:
        array = np.asarray(lims, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi))") from err
    if array.shape == (2,):
        array = np.stack([array, array])
    if (
        array.shape != (2, 2)
        or not np.all(np.isfinite(array))
        or np.any(array[:, 0] >= array[:, 1])
    ):
        raise ValueError(
            f"{name} must be (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi)) with lo < hi, got {lims!r}"
        )
    return (float(array[0, 0]), float(array[0, 1])), (float(array[1, 0]), float(array[1, 1]))


def square_lims(*points: np.ndarray, margin: float = 0.05) -> Lims:
    """Limits holding every ``(..., 2)`` point set, padded by ``margin`` and made square around
    their centre, so that a panel with equal aspect is filled."""
    stacked = np.concatenate([p.reshape(-1, 2) for p in points])
    lo, hi = stacked.min(axis=0), stacked.max(axis=0)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-3) * (1 + margin)
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def new_figure(
    nrows: int = 1, ncols: int = 1, *, panel_width: float = PANEL_INCHES
) -> tuple[Figure, np.ndarray]:
    """A figure of ``nrows x ncols`` panels, each ``panel_width x PANEL_INCHES`` inches (square
    by default; wider for curves against time), and its axes array ``(nrows, ncols)``."""
    fig = Figure(figsize=(panel_width * ncols, PANEL_INCHES * nrows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def panel_grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    """Rows and columns for ``n`` panels, at most ``max_cols`` per row."""
    ncols = min(n, max_cols)
    return math.ceil(n / ncols), ncols


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` (``.png``, ``.pdf``, ``.svg``, ``.jpg``) atomically."""
    path = Path(path)
    fmt = _FIGURE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"path must end in one of {sorted(_FIGURE_FORMATS)} for a figure, got {str(path)!r}"
        )
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI)
    return path


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` and return its pixels ``(H, W, 3)`` uint8 (one animation frame)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """``image (H, W[, 3])`` uint8 with a white strip of ``text`` added on top."""
    font = ImageFont.load_default(size=14)
    height = 22
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    canvas = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + height), "white")
    canvas.paste(Image.fromarray(rgb), (0, height))
    ImageDraw.Draw(canvas).text((4, 3), text, fill="black", font=font)
    return np.asarray(canvas)


def check_gif_args(path: str | os.PathLike, fps: float) -> Path:
    """Validate a GIF's ``path`` and ``fps`` (before any frame is rendered); return the path."""
    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"path must end in .gif for an animation, got {str(path)!r}")
    if isinstance(fps, bool) or not (isinstance(fps, (int, float)) and 0 < fps <= 100):
        raise ValueError(f"fps must be a number in (0, 100] (GIF timing is in 10 ms), got {fps!r}")
    return path


def write_gif(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float) -> Path:
    """Write ``frames`` (each ``(H, W, 3)`` uint8, one size) as a looping GIF at ``fps``.

    Pillow drops a frame identical to the one before it, so callers label each frame with its
    index: the file then has exactly ``len(frames)`` frames.
    """
    path = check_gif_args(path, fps)
    # Quantise each frame to its own 256-colour palette (GIF is paletted).
    images = [Image.fromarray(f).quantize(colors=256) for f in frames]
    duration = max(10, round(1000 / fps))
    with atomic_write(path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
        )
    return path


def grid_points(lims: Lims, grid: int) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """A ``grid x grid`` lattice over ``lims``: mesh ``X, Y (grid, grid)`` and points ``(M, 2)``."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid must be an int >= 2, got {grid!r}")
    xs = np.linspace(*lims[0], grid)
    ys = np.linspace(*lims[1], grid)
    X, Y = np.meshgrid(xs, ys)
    points = torch.tensor(np.stack([X.ravel(), Y.ravel()], axis=1), dtype=torch.get_default_dtype())
    return X, Y, points


def evaluate_on_grid(
    fn: Callable[..., Tensor],
    points: Tensor,
    *args: Tensor,
    name: str,
    out_shape: tuple[int, ...],
    allow_neg_inf: bool = False,
) -> np.ndarray:
    """``fn(points, *args)`` checked to be a finite tensor of ``out_shape``, as numpy.

    No ``torch.no_grad()`` here: a score or a likelihood may differentiate internally.
    """
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    out = fn(points, *args)
    if not isinstance(out, Tensor):
        raise TypeError(f"{name} must return a tensor, got {type(out).__name__}")
    if tuple(out.shape) != out_shape:
        raise ValueError(f"{name} must return shape {out_shape}, got {tuple(out.shape)}")
    return as_numpy(out, f"the output of {name}", allow_neg_inf=allow_neg_inf)


def style_plane(ax: Axes, lims: Lims, title: str | None = None) -> None:
    """Equal-aspect 2D panel with the given limits, labelled axes and an optional title."""
    ax.set_xlim(*lims[0])
    ax.set_ylim(*lims[1])
    # Equal aspect through the box shape rather than set_aspect("equal"): constrained layout
    # places such boxes right in one pass (with set_aspect the titles of a row of panels can be
    # pushed above the top edge).
    ax.set_box_aspect((lims[1][1] - lims[1][0]) / (lims[0][1] - lims[0][0]))
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title:
        ax.set_title(title)
