"""The metrics log of a run: rows in memory (the history), ``metrics.csv``, TensorBoard."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from flowdiff.io import atomic_write

__all__ = ["MetricsLog", "MetricsWindow"]

METRICS_FILE = "metrics.csv"


class MetricsWindow:
    """Running sums of the per-step values between two log steps; rows report their means.

    ``loss`` and ``grad_norm`` average over every optimizer step of every phase; with more than
    one phase name (a GAN) each phase also gets ``loss_<phase>`` and ``grad_norm_<phase>``.
    """

    def __init__(self, per_phase: bool) -> None:
        self.per_phase = per_phase
        self.reset(start_time=0.0)

    def reset(self, start_time: float) -> None:
        self.start_time = start_time
        self.steps = 0
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, phase: str, loss: float, grad_norm: float) -> None:
        keys = ["", f"_{phase}"] if self.per_phase else [""]
        for suffix in keys:
            for name, value in (("loss", loss), ("grad_norm", grad_norm)):
                self._sums[name + suffix] += value
                self._counts[name + suffix] += 1

    def row(self, step: int, lr: float, now: float) -> dict[str, float]:
        elapsed = now - self.start_time
        row: dict[str, float] = {"step": step}
        means = {k: self._sums[k] / self._counts[k] for k in self._sums}
        row["loss"] = means.pop("loss")
        row["lr"] = lr
        row["grad_norm"] = means.pop("grad_norm")
        row["steps_per_s"] = self.steps / elapsed if elapsed > 0 else math.nan
        row.update(sorted(means.items()))
        return row


def _open_tensorboard(log_dir: Path, purge_step: int | None) -> Any:
    """A TensorBoard ``SummaryWriter``, or ``None`` when tensorboard is not installed.

    ``purge_step``: TensorBoard hides the events of earlier runs at steps ``>= purge_step``.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


class MetricsLog:
    """Appends rows to the history; mirrors them to TensorBoard and (on :meth:`write_csv`) to
    ``<out_dir>/metrics.csv``.

    The CSV is rewritten atomically from the history, at checkpoints and at the end, so the file
    always matches a checkpoint (a resumed run's CSV never holds rows from beyond the step it
    resumed from) and is never torn. TensorBoard writes its own event files (append-only; it
    cannot go through ``atomic_write``); a resumed run purges the points the killed run logged
    after its checkpoint, so that none appears twice.

    Args:
        out_dir: where files go; ``None`` keeps the history in memory only.
        history: rows restored from a checkpoint.
        resumed_from: the step of that checkpoint (``None`` for a fresh run).
    """

    def __init__(
        self,
        out_dir: Path | None,
        history: list[dict[str, float]] | None = None,
        resumed_from: int | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.history: list[dict[str, float]] = list(history or [])
        purge = None if resumed_from is None else resumed_from + 1
        self._tensorboard = _open_tensorboard(out_dir / "tensorboard", purge) if out_dir else None

    def log(self, row: dict[str, float]) -> None:
        self.history.append(row)
        if self._tensorboard is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key != "step":
                    self._tensorboard.add_scalar(f"train/{key}", value, step)

    def write_csv(self) -> Path | None:
        """Write the whole history to ``metrics.csv`` (columns in order of first appearance)."""
        if self.out_dir is None or not self.history:
            return None
        columns = list(dict.fromkeys(key for row in self.history for key in row))
        path = self.out_dir / METRICS_FILE
        with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.history)
        if self._tensorboard is not None:
            self._tensorboard.flush()
        return path

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
