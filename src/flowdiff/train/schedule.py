"""Learning-rate warm-up and decay as a pure function of the step.

Being a function of the step alone, the schedule has no state of its own to checkpoint: a resumed
run recomputes the same value from the step number stored in the checkpoint.
"""

from __future__ import annotations

import math

from flowdiff.train.config import TrainConfig

__all__ = ["learning_rate"]


def learning_rate(config: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (``1..config.steps``).

    Linear warm-up ``lr * k / W`` for ``k <= W = warmup_steps``, then with
    ``p = (k - W) / (steps - W)`` and ``m = min_lr_ratio``: ``constant`` ``lr``, ``linear``
    ``lr (1 - (1 - m) p)``, ``cosine`` ``lr (m + (1 - m)(1 + cos(pi p)) / 2)`` (SGDR,
    Loshchilov & Hutter 2017, without restarts). The last step uses exactly ``m * lr``.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be an int >= 1, got {step!r}")
    warmup = config.warmup_steps
    if step <= warmup:
        return config.lr * step / warmup
    if config.lr_schedule == "constant":
        return config.lr
    # Past ``steps`` (a run resumed with fewer steps) the decay stays at its floor.
    span = config.steps - warmup
    progress = 1.0 if span <= 0 else min(1.0, (step - warmup) / span)
    floor = config.min_lr_ratio
    if config.lr_schedule == "linear":
        factor = 1.0 - (1.0 - floor) * progress
    else:
        factor = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr * factor
