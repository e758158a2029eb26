"""The training loop's settings: one frozen dataclass, every field validated on construction."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["LR_SCHEDULES", "TrainConfig"]

LR_SCHEDULES = ("constant", "cosine", "linear")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


def _check_int(name: str, value: object, minimum: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    # bool is an int subclass: ``steps=True`` is a mistake, not 1 step.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "None or an int" if optional else "an int"
        raise ValueError(f"{name} must be {kind} >= {minimum}, got {value!r}")


def _check_float(
    name: str, value: object, low: float, high: float, *, open_low: bool, open_high: bool
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and (
            value < high if open_high else value <= high
        )
    if not ok:
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`flowdiff.train.fit`; ``GenerativeModel.fit(data, **options)`` builds
    one from its keyword options. Invalid values raise ``ValueError`` naming the field.

    The learning rate at optimizer step ``k = 1..steps`` is ``lr * f(k)`` with a linear warm-up
    ``f(k) = k / warmup_steps`` for ``k <= warmup_steps``, then a decay over
    ``p = (k - warmup_steps) / (steps - warmup_steps)`` in ``(0, 1]`` to ``min_lr_ratio``:
    ``constant`` ``f = 1``; ``linear`` ``f = 1 - (1 - m) p``; ``cosine``
    ``f = m + (1 - m) (1 + cos(pi p)) / 2`` (Loshchilov & Hutter, SGDR, 2017).
    """

    # Number of optimizer steps (one step = every phase of ``model.training_phases``).
    steps: int = 1000
    # Global batch size; under DDP each of the W ranks gets batch_size / W samples of it.
    batch_size: int = 256
    # Peak AdamW learning rate, reached at the end of the warm-up.
    lr: float = 1e-3
    # AdamW decoupled weight decay (Loshchilov & Hutter 2019); 0 keeps plain Adam updates.
    weight_decay: float = 0.0
    # AdamW moment decay rates (beta1, beta2).
    betas: tuple[float, float] = (0.9, 0.999)
    # Linear warm-up length: large early Adam steps on a fresh network are what diverges.
    warmup_steps: int = 0
    # Decay after the warm-up: "constant", "cosine" or "linear" (formulas above).
    lr_schedule: str = "constant"
    # Final learning rate as a fraction of ``lr`` for the cosine/linear decays.
    min_lr_ratio: float = 0.0
    # Maximum global L2 norm of the gradients (None: no clipping; the norm is logged anyway).
    grad_clip: float | None = 1.0
    # EMA decay of the weights used for sampling (None: no EMA, sampling uses the raw weights).
    ema_decay: float | None = 0.999
    # Seed of every random stream of the loop (batches, loss noise, snapshots).
    seed: int = 0
    # "cpu", "cuda" or "auto" (CUDA when available); under torchrun CUDA means cuda:LOCAL_RANK.
    device: str = "auto"
    # "fp32", or "bf16" autocast for the loss (CUDA only; on CPU a clear error or fp32 fallback).
    precision: str = "fp32"
    # Wrap ``model.loss`` in ``torch.compile`` (pays a compile up front for faster steps).
    compile: bool = False
    # Folder for checkpoints, metrics.csv, snapshots and the final model (None: write nothing).
    out_dir: str | os.PathLike | None = None
    # Checkpoint every this many steps (and always at the end) when ``out_dir`` is set.
    checkpoint_every: int = 1000
    # Number of most recent checkpoints kept on disk; older ones are deleted.
    keep_last: int = 3
    # Log averaged metrics every this many steps (history, metrics.csv, TensorBoard, progress).
    log_every: int = 100
    # Mean held-out loss every this many steps when ``fit`` gets ``val_data`` (None: at every
    # log step); logged as ``val_loss``, with the EMA weights when there is an EMA.
    val_every: int | None = None
    # With ``val_data``: end with the weights of the lowest ``val_loss`` (the EMA weights when
    # there is an EMA), the early-stopping choice without stopping.
    keep_best: bool = False
    # Save a sample snapshot (EMA weights) every this many steps (None: never; needs out_dir).
    sample_every: int | None = None
    # Number of samples drawn for each snapshot.
    sample_count: int = 64
    # tqdm progress bar (None: on when stderr is a terminal); only rank 0 shows one.
    progress: bool | None = None
    # Continue from the latest checkpoint in ``out_dir`` when there is one.
    resume: bool = True
    # DataLoader worker processes when ``data`` is a Dataset (0: load in the main process).
    num_workers: int = 0

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_float("lr", self.lr, 0.0, math.inf, open_low=True, open_high=True)
        _check_float(
            "weight_decay", self.weight_decay, 0.0, math.inf, open_low=False, open_high=True
        )
        betas = self.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            _check_float(f"betas[{i}]", beta, 0.0, 1.0, open_low=False, open_high=True)
        # A list from JSON (a checkpoint) becomes the tuple the field is declared as.
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        _check_int("warmup_steps", self.warmup_steps, 0)
        if self.warmup_steps > self.steps:
            raise ValueError(
                f"warmup_steps must be <= steps ({self.steps}), got {self.warmup_steps}"
            )
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_float("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0, open_low=False, open_high=False)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, 0.0, math.inf, open_low=True, open_high=True)
        if self.ema_decay is not None:
            _check_float("ema_decay", self.ema_decay, 0.0, 1.0, open_low=False, open_high=True)
        _check_int("seed", self.seed, 0)
        _check_choice("device", self.device, DEVICES)
        _check_choice("precision", self.precision, PRECISIONS)
        if self.precision == "bf16" and self.device == "cpu":
            raise ValueError(
                "precision='bf16' is autocast on CUDA only, but device='cpu'; use precision="
                "'fp32' (with device='auto', a machine without CUDA falls back to fp32)"
            )
        for name in ("compile", "resume", "keep_best"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise ValueError(f"progress must be None, True or False, got {self.progress!r}")
        if self.out_dir is not None:
            if not isinstance(self.out_dir, (str, os.PathLike)):
                raise ValueError(f"out_dir must be None or a path, got {self.out_dir!r}")
            object.__setattr__(self, "out_dir", os.fspath(self.out_dir))
        _check_int("checkpoint_every", self.checkpoint_every, 1)
        _check_int("keep_last", self.keep_last, 1)
        _check_int("log_every", self.log_every, 1)
        _check_int("val_every", self.val_every, 1, optional=True)
        _check_int("sample_every", self.sample_every, 1, optional=True)
        if self.sample_every is not None and self.out_dir is None:
            raise ValueError(
                f"sample_every={self.sample_every} needs out_dir to save the snapshots, "
                "got out_dir=None"
            )
        _check_int("sample_count", self.sample_count, 1)
        _check_int("num_workers", self.num_workers, 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields: ``TrainConfig(**config.to_dict()) == config``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
