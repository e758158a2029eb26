"""The one training loop (:func:`fit`) with checkpoints, resume, EMA, logging and DDP.

``GenerativeModel.fit(data, **options)`` is ``fit(model, data, TrainConfig(**options))``.
"""

from flowdiff.train.checkpoint import (
    Checkpoint,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from flowdiff.train.config import TrainConfig
from flowdiff.train.ema import EMA
from flowdiff.train.loop import TrainingDiverged, TrainResult, check_validation, fit
from flowdiff.train.schedule import learning_rate

__all__ = [
    "EMA",
    "Checkpoint",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "check_validation",
    "checkpoint_path",
    "fit",
    "latest_checkpoint",
    "learning_rate",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]
