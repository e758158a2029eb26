"""Training curves: the loss (and every other ``*loss*`` column) against the step."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from flowdiff.data.files import read_csv_table
from flowdiff.viz.figures import WIDE_INCHES, as_numpy, new_figure, save_figure

__all__ = ["plot_loss"]

History = (
    str
    | os.PathLike
    | Sequence[float]
    | Sequence[Mapping[str, float]]
    | Mapping[str, Sequence[float]]
)


def _columns(history: History) -> dict[str, np.ndarray]:
    """Every input form as named columns of equal length (NaN where a row lacks a value)."""
    if isinstance(history, (str, os.PathLike)):
        header, values = read_csv_table(history, allow_empty=True)
        if header is None:
            raise ValueError(f"{history} needs a header row naming its columns (step, loss, ...)")
        return {name: values[:, j] for j, name in enumerate(header)}
    if isinstance(history, Mapping):
        return {str(k): as_numpy(v, f"history[{k!r}]").reshape(-1) for k, v in history.items()}
    if isinstance(history, (Tensor, np.ndarray)) or (
        isinstance(history, Sequence) and history and not isinstance(history[0], Mapping)
    ):
        return {"loss": as_numpy(history, "history").reshape(-1)}
    if isinstance(history, Sequence) and history:
        # Rows as logged by the training loop (TrainResult.history): one dict per log step.
        keys = list(dict.fromkeys(k for row in history for k in row))
        return {k: np.array([row.get(k, np.nan) for row in history], dtype=float) for k in keys}
    raise ValueError(
        "history must be a CSV path, a non-empty list of losses, a list of row dicts or a "
        f"dict of columns, got {type(history).__name__} {history!r:.60}"
    )


def _trailing_mean(y: np.ndarray, window: int) -> np.ndarray:
    """Mean of each value and the ``window - 1`` before it: ``(len(y) - window + 1,)``."""
    sums = np.cumsum(np.concatenate([[0.0], y]))
    return (sums[window:] - sums[:-window]) / window


def plot_loss(
    history_or_csv_path: History, path: str | os.PathLike, *, title: str | None = None
) -> Path:
    """Plot the training loss against the step, on a log scale when every value is positive.

    Args:
        history_or_csv_path: ``metrics.csv`` of a run (a header row; ``step`` is the x axis when
            present), the training loop's ``history`` (a list of row dicts), a dict of columns,
            or a plain sequence of losses (x = index). Every column whose name contains
            ``"loss"`` is drawn; non-finite points (empty cells, a diverged step) are skipped.

    Each curve is drawn raw (faint) and as a trailing mean over ``len / 50`` points (solid),
    which shows the trend through minibatch noise.
    """
    columns = _columns(history_or_csv_path)
    names = [k for k in columns if "loss" in k.lower()]
    if not names:
        raise ValueError(f"no loss column to plot: columns are {sorted(columns)}")
    n = len(columns[names[0]])
    steps = columns.get("step", np.arange(n, dtype=float))
    fig, axes = new_figure(1, 1, panel_width=WIDE_INCHES)
    ax = axes[0, 0]
    all_positive = True
    for i, name in enumerate(names):
        ok = np.isfinite(columns[name]) & np.isfinite(steps)
        x, y = steps[ok], columns[name][ok]
        if len(y) == 0:
            raise ValueError(f"column {name!r} has no finite values to plot")
        all_positive &= bool((y > 0).all())
        window = max(1, len(y) // 50)
        ax.plot(x, y, color=f"C{i}", alpha=0.3 if window > 1 else 1.0, lw=0.8)
        if window > 1:
            ax.plot(x[window - 1 :], _trailing_mean(y, window), color=f"C{i}", lw=1.6, label=name)
        else:
            ax.lines[-1].set_label(name)
    # A GAN's losses can be negative: log scale only when it is defined for every point.
    ax.set_yscale("log" if all_positive else "linear")
    ax.set_xlabel("step" if "step" in columns else "log row")
    ax.set_ylabel("loss" + ("" if all_positive else " (linear: some values <= 0)"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title or "training loss")
    return save_figure(fig, path)
