"""The one training loop of the library: :func:`fit`.

Every :class:`~flowdiff.models.base.GenerativeModel` trains here through its three-method
protocol. Optimizer step ``k = 1..steps`` runs, for each phase in ``model.training_phases(k - 1)``
(``["model"]``, or ``n x "discriminator"`` then ``"generator"`` for a GAN):

1. draw a fresh batch (each phase its own: a GAN's discriminator steps see different data);
2. ``loss = model.loss(x, y, phase=phase, generator=g).mean()`` (bf16 autocast if asked), backward;
   under DDP the loss runs inside the phase's ``DistributedDataParallel``, whose backward
   averages the phase's gradients over ranks (:mod:`flowdiff.train.distributed`), and the loss
   is averaged too;
3. stop with :class:`TrainingDiverged` if the loss or the gradient norm is not finite;
4. clip the gradient norm and take an AdamW step of that phase's group at the scheduled lr;

then updates the EMA of the weights, logs, checkpoints and snapshots. A run is reproducible bit
for bit on one machine: every random stream (batch order, the loss's generator, the torch RNG) is
seeded from ``config.seed`` and restored from checkpoints.

With ``val_data`` the mean loss over all of it is measured at log steps (every ``val_every``
steps) with the weights that sample (the EMA's), in eval mode, with the same loss noise each time
(a generator seeded afresh) so that two measurements differ only by the weights; it draws on no
stream of the training. ``keep_best`` keeps a copy of the best weights (in checkpoints too) and
loads them at the end: early stopping's model, without cutting the run short.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowdiff.models.base import GenerativeModel
from flowdiff.train.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from flowdiff.train.config import TrainConfig
from flowdiff.train.data import make_batch_source, make_validation_batches
from flowdiff.train.distributed import Distributed, setup_distributed
from flowdiff.train.ema import EMA
from flowdiff.train.log import MetricsLog, MetricsWindow
from flowdiff.train.schedule import learning_rate
from flowdiff.train.seeding import derive_seed

__all__ = ["TrainResult", "TrainingDiverged", "check_validation", "fit"]

MODEL_FILE = "model.safetensors"
SAMPLES_DIR = "samples"
# Temp files atomic_write leaves behind when a process is killed mid-write.
_STALE_TEMP = re.compile(
    r"^\.(checkpoint-\d+\.safetensors|metrics\.csv|model\.safetensors)\..*\.tmp$"
)
# Settings whose change on resume makes the continued run differ from an uninterrupted one.
_TRAJECTORY_FIELDS = (
    "steps", "batch_size", "lr", "weight_decay", "betas", "warmup_steps", "lr_schedule",
    "min_lr_ratio", "grad_clip", "ema_decay", "seed", "precision",
)  # fmt: skip


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm of one phase became NaN/inf; that phase's optimizer step was
    not taken (its group's weights and AdamW state are those before it, and the EMA was not
    updated). Earlier phases of the same training step were applied: a GAN whose generator phase
    fails has already taken that step's discriminator steps.

    Attributes:
        step: the optimizer step (1-based) that failed.
        phase: the phase (optim group) that produced it.
        checkpoint: the last good checkpoint, kept on disk (``None`` if none was written).
    """

    def __init__(
        self, step: int, phase: str, loss: float, grad_norm: float, checkpoint: Path | None
    ) -> None:
        self.step, self.phase, self.checkpoint = step, phase, checkpoint
        self.loss, self.grad_norm = loss, grad_norm
        kept = f"last good checkpoint: {checkpoint}" if checkpoint else "no checkpoint written"
        super().__init__(
            f"training diverged at step {step} (phase {phase!r}): loss={loss}, "
            f"grad_norm={grad_norm}; {kept}. Lower lr, add warm-up or grad_clip, and resume."
        )


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per log step: ``step, loss, lr, grad_norm, steps_per_s`` (and
            ``loss_<phase>, grad_norm_<phase>`` for multi-phase models), means since the
            previous log step, and ``val_loss`` at the steps it was measured.
        step: optimizer steps completed (``config.steps``).
        checkpoint_dir: the ``out_dir`` holding checkpoints, ``metrics.csv`` and
            ``model.safetensors`` (``None`` when nothing was written).
        resumed_from: the step of the checkpoint the run continued from, if any.
        best: ``{"step", "val_loss"}`` of the lowest held-out loss (``None`` without
            ``val_data``); with ``keep_best`` the model ends with those weights.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    checkpoint_dir: Path | None = None
    resumed_from: int | None = None
    best: dict[str, float] | None = None

    @property
    def final_loss(self) -> float | None:
        """The loss of the last log row."""
        return self.history[-1]["loss"] if self.history else None


def _resolve_device(config: TrainConfig) -> tuple[torch.device, bool]:
    """The device, and whether bf16 autocast is on (falls back to fp32, warning, off CUDA)."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available; use device='cpu' or 'auto'")
    cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    bf16 = config.precision == "bf16"
    if bf16 and not cuda:
        # Only reachable with device="auto" (TrainConfig rejects bf16 with device="cpu").
        warnings.warn("precision='bf16' needs CUDA; training in fp32 on CPU", stacklevel=3)
        bf16 = False
    return device, bf16


def _check_groups(model: GenerativeModel) -> dict[str, list[nn.Parameter]]:
    groups = model.optim_groups()
    name = type(model).__name__
    if not isinstance(groups, dict) or not groups:
        raise ValueError(f"{name}.optim_groups() must return a non-empty dict, got {groups!r}")
    seen: set[int] = set()
    for group, params in groups.items():
        params = list(params)
        if not params or not all(isinstance(p, nn.Parameter) for p in params):
            raise ValueError(f"{name}.optim_groups()[{group!r}] must be a non-empty parameter list")
        if seen & {id(p) for p in params}:
            raise ValueError(f"{name}.optim_groups()[{group!r}] shares parameters with a group")
        seen |= {id(p) for p in params}
        groups[group] = params
    return groups


def check_validation(model: GenerativeModel, config: TrainConfig, has_val_data: bool) -> int:
    """The step interval of the held-out loss (0 without ``val_data``), once the settings and
    the model allow one; a ``ValueError`` says what does not. Lets a caller (``flowdiff train``)
    fail before it writes anything."""
    if not has_val_data:
        if config.keep_best or config.val_every is not None:
            used = "keep_best=True" if config.keep_best else f"val_every={config.val_every}"
            raise ValueError(f"{used} needs held-out data: pass fit(..., val_data=...)")
        return 0
    groups = _check_groups(model)
    if len(groups) > 1:
        raise ValueError(
            f"val_data: {type(model).__name__} trains {len(groups)} optim groups "
            f"({', '.join(groups)}) whose losses are no held-out measure of the model; "
            "judge it by its samples (flowdiff.metrics) instead"
        )
    val_every = config.val_every if config.val_every is not None else config.log_every
    if val_every % config.log_every:
        raise ValueError(
            f"val_every ({val_every}) must be a multiple of log_every ({config.log_every}): "
            "val_loss is written into the log rows"
        )
    return val_every


class _Trainer:
    """State of one :func:`fit` call (see the module docstring for the step)."""

    def __init__(
        self,
        model: GenerativeModel,
        data: Any,
        config: TrainConfig,
        dist: Distributed,
        val_data: Any = None,
    ) -> None:
        device, bf16 = _resolve_device(config)
        if device.type == "cuda" and dist.enabled:
            device = torch.device("cuda", dist.local_rank)
        self.model, self.config, self.dist, self.device = model, config, dist, device
        self.autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
            if bf16
            else contextlib.nullcontext
        )
        self.was_training = model.training  # restored at the end
        model.to(device).train()
        self.groups = _check_groups(model)
        # The data is checked before anything (a checkpoint) is loaded into the model.
        self.source = make_batch_source(
            data,
            model,
            batch_size=config.batch_size,
            seed=config.seed,
            device=device,
            rank=dist.rank,
            world_size=dist.world_size,
            num_workers=config.num_workers,
        )
        self.val_every = check_validation(model, config, val_data is not None)
        self.validation = None
        if val_data is not None:
            self.validation = make_validation_batches(
                val_data, model, batch_size=config.batch_size, device=device
            )
        self.best: dict[str, float] | None = None
        self.best_weights: dict[str, Tensor] | None = None
        self.optimizers = {
            group: torch.optim.AdamW(
                params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
            )
            for group, params in self.groups.items()
        }
        self.out_dir = Path(config.out_dir) if config.out_dir is not None else None
        self.loss_generator = torch.Generator(device).manual_seed(
            derive_seed(config.seed, "loss", dist.rank)
        )
        self.last_checkpoint: Path | None = None
        self.start_step, self.resumed_from = 0, None
        history, loop_state = self._resume()
        # Every rank starts from rank 0's weights and buffers (the DDPs below do not sync),
        # before the EMA copies the weights as its start.
        dist.broadcast_module(model)

        self.ema: EMA | None = None
        if config.ema_decay is not None:
            trained = {id(p) for params in self.groups.values() for p in params}
            named = {n: p for n, p in model.named_parameters() if id(p) in trained}
            self.ema = EMA(named, config.ema_decay)
            if model.ema_state is not None and loop_state:
                self.ema.load(model.ema_state, loop_state["ema_updates"])
        # Sampling reads model.ema_state; it is the EMA's own dict, so always current.
        model.ema_state = self.ema.state if self.ema is not None else None
        loss = torch.compile(model.loss) if config.compile else model.loss
        self.phase_losses = dist.phase_losses(loss, self.groups)
        if loop_state:
            self.source.restore(loop_state["data"])
        self.log = MetricsLog(self.out_dir if dist.is_main else None, history, self.resumed_from)
        self.window = MetricsWindow(per_phase=len(self.groups) > 1)
        # Turned off by the first snapshot if flowdiff.viz cannot be imported.
        self.snapshots = config.sample_every is not None and dist.is_main

    # ------------------------------------------------------------------ resume
    def _resume(self) -> tuple[list[dict[str, float]], dict[str, Any] | None]:
        """Load the latest checkpoint of ``out_dir``; return its history and loop state."""
        if self.out_dir is None:
            return [], None
        if self.dist.is_main and self.out_dir.is_dir():
            for stale in self.out_dir.iterdir():
                if _STALE_TEMP.match(stale.name):
                    stale.unlink(missing_ok=True)
        latest = latest_checkpoint(self.out_dir)
        if latest is None:
            return [], None
        if not self.config.resume:
            raise ValueError(
                f"out_dir {str(self.out_dir)!r} already holds checkpoints (latest {latest.name}) "
                "and resume=False; pass resume=True to continue, or choose an empty out_dir"
            )
        ckpt = load_checkpoint(latest, self.model, optimizers=self.optimizers)
        for optimizer in self.optimizers.values():
            # Hyper-parameters come from this run's config; lr is set by the schedule each step.
            for group in optimizer.param_groups:
                group.update(betas=self.config.betas, weight_decay=self.config.weight_decay)
        old, new = ckpt.config.to_dict(), self.config.to_dict()
        changed = {k: (old[k], new[k]) for k in _TRAJECTORY_FIELDS if old[k] != new[k]}
        if changed:
            warnings.warn(
                f"resuming {latest.name} with changed settings (old, new): {changed}",
                stacklevel=4,
            )
        self._restore_rng(ckpt.rng, ckpt.loop_state)
        saved_best = ckpt.loop_state.get("best")
        # A run that switches keep_best on starts its record afresh (no weights were kept).
        if self.validation is not None and saved_best:
            if not self.config.keep_best:
                self.best = saved_best
            elif ckpt.best_weights:
                self.best = saved_best
                self.best_weights = {k: v.to(self.device) for k, v in ckpt.best_weights.items()}
        self.start_step = self.resumed_from = ckpt.step
        self.last_checkpoint = latest
        return ckpt.history, ckpt.loop_state

    # ------------------------------------------------------------------ random states
    def _rng_states(self) -> dict[str, Tensor]:
        """This rank's generator states (CPU ``uint8``)."""
        states = {"loss": self.loss_generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def _gather_rng(self) -> dict[str, Tensor]:
        """Every rank's states as ``rank<r>.<name>`` (collective: all ranks call it)."""
        gathered = {}
        for name, state in self._rng_states().items():
            for rank, value in enumerate(self.dist.gather(state)):
                gathered[f"rank{rank}.{name}"] = value.cpu()
        return gathered

    def _restore_rng(self, rng: dict[str, Tensor], loop_state: dict[str, Any]) -> None:
        if loop_state.get("world_size") != self.dist.world_size:
            warnings.warn(
                f"checkpoint was written by {loop_state.get('world_size')} process(es), this run "
                f"has {self.dist.world_size}: random streams restart from the seed",
                stacklevel=5,
            )
            return
        prefix = f"rank{self.dist.rank}."
        self.loss_generator.set_state(rng[prefix + "loss"])
        torch.set_rng_state(rng[prefix + "torch"])
        if self.device.type == "cuda" and prefix + "cuda" in rng:
            torch.cuda.set_rng_state(rng[prefix + "cuda"], self.device)

    # ------------------------------------------------------------------ one step
    def _phase_step(self, step: int, phase: str) -> tuple[float, float]:
        x, y = self.source.next()
        self.model.zero_grad(set_to_none=True)
        with self.autocast():
            losses = self.phase_losses[phase](x, y, self.loss_generator)
        if not isinstance(losses, Tensor) or losses.shape != (x.shape[0],):
            got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(
                f"{type(self.model).__name__}.loss(phase={phase!r}) must return per-sample "
                f"losses of shape ({x.shape[0]},), got {got}"
            )
        # Reduce in at least fp32: a bf16 mean over a large batch loses digits; fp64 stays fp64.
        if losses.dtype in (torch.float16, torch.bfloat16):
            losses = losses.float()
        loss = losses.mean()
        loss.backward()
        params = self.groups[phase]
        if self.dist.enabled:
            self._check_reduced(phase, params)
            loss = self.dist.all_mean(loss.detach())
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        # With max_norm=inf the gradients are multiplied by exactly 1: just the norm is measured.
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        loss_value, norm_value = float(loss.detach()), float(grad_norm)
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            raise TrainingDiverged(step, phase, loss_value, norm_value, self.last_checkpoint)
        self.optimizers[phase].step()
        return loss_value, norm_value

    def _check_reduced(self, phase: str, params: list[nn.Parameter]) -> None:
        """DDP averages a phase's gradients only once every parameter of its group got one."""
        if any(p.grad is None for p in params):
            names = {id(p): name for name, p in self.model.named_parameters()}
            missing = [names[id(p)] for p in params if p.grad is None]
            raise ValueError(
                f"under DDP every parameter of optim group {phase!r} must get a gradient from "
                f"{type(self.model).__name__}.loss(phase={phase!r}); these got none: {missing}"
            )

    def _phases(self, step_index: int) -> list[str]:
        phases = self.model.training_phases(step_index)
        unknown = [p for p in phases if p not in self.groups]
        if not phases or unknown:
            raise ValueError(
                f"{type(self.model).__name__}.training_phases({step_index}) returned {phases!r}; "
                f"expected a non-empty list of optim groups {sorted(self.groups)}"
            )
        return phases

    # ------------------------------------------------------------------ outputs
    def _checkpoint(self, step: int) -> None:
        rng = self._gather_rng()  # collective, before the rank-0-only write
        if self.dist.is_main:
            self.log.write_csv()
            loop_state = {
                "data": self.source.state(),
                "ema_updates": self.ema.num_updates if self.ema is not None else 0,
                "world_size": self.dist.world_size,
                "best": self.best,
            }
            save_checkpoint(
                checkpoint_path(self.out_dir, step),
                self.model,
                step=step,
                config=self.config,
                optimizers=self.optimizers,
                history=self.log.history,
                loop_state=loop_state,
                rng=rng,
                best_weights=self.best_weights,
            )
            prune_checkpoints(self.out_dir, self.config.keep_last)
        # Nobody runs ahead (or exits) before the checkpoint is on disk.
        self.dist.barrier()
        self.last_checkpoint = checkpoint_path(self.out_dir, step)

    def _snapshot(self, step: int) -> None:
        """Save ``model.sample(sample_count)`` via ``flowdiff.viz.save_samples``; ``sample``
        itself loads the EMA weights (every family samples under ``averaged()`` by default)."""
        try:
            from flowdiff.viz import save_samples
        except ImportError as err:
            warnings.warn(
                f"sample snapshots skipped: flowdiff.viz unavailable ({err})", stacklevel=2
            )
            self.snapshots = False
            return
        generator = torch.Generator(self.device).manual_seed(
            derive_seed(self.config.seed, "sample")
        )
        cuda = [self.device] if self.device.type == "cuda" else []
        # fork_rng: a snapshot must not move the training's random streams (bit-exact resume).
        with torch.random.fork_rng(devices=cuda):
            self.model.eval()
            try:
                x = self.model.sample(self.config.sample_count, generator=generator)
            finally:
                self.model.train()
        try:
            save_samples(
                x, self.out_dir / SAMPLES_DIR / f"step-{step:08d}.png", title=f"step {step}"
            )
        except ValueError as err:  # a shape it cannot draw (videos, point clouds)
            warnings.warn(f"sample snapshots skipped: {err}", stacklevel=2)
            self.snapshots = False

    # ------------------------------------------------------------------ held-out loss
    def _sampling_weights(self) -> dict[str, Tensor]:
        """The weights :meth:`GenerativeModel.sample` uses: the EMA's, or the model's own."""
        if self.ema is not None:
            return self.ema.state
        return self.model.state_dict()

    def _validate(self, step: int) -> float:
        """Mean loss over ``val_data`` with the sampling weights (see the module docstring);
        keeps a copy of those weights when it is the best so far and ``keep_best`` is set."""
        (phase,) = self.groups
        generator = torch.Generator(self.device).manual_seed(
            derive_seed(self.config.seed, "validation")
        )
        cuda = [self.device] if self.device.type == "cuda" else []
        total, count = 0.0, 0
        with torch.random.fork_rng(devices=cuda), torch.no_grad(), self.model.averaged():
            self.model.eval()
            try:
                for x, y in self.validation():
                    with self.autocast():
                        losses = self.model.loss(x, y, phase=phase, generator=generator)
                    total += float(losses.detach().double().sum())
                    count += x.shape[0]
            finally:
                self.model.train()
        val_loss = total / count
        if not math.isfinite(val_loss):
            where = f"{phase} on val_data"
            raise TrainingDiverged(step, where, val_loss, math.nan, self.last_checkpoint)
        if self.best is None or val_loss < self.best["val_loss"]:
            self.best = {"step": step, "val_loss": val_loss}
            if self.config.keep_best:
                weights = self._sampling_weights()
                self.best_weights = {k: v.detach().clone() for k, v in weights.items()}
        return val_loss

    def _load_best(self) -> None:
        """Put the best weights where sampling reads them (the EMA state, or the model)."""
        if self.best_weights is None:
            return
        with torch.no_grad():
            if self.ema is not None:
                for name, value in self.best_weights.items():
                    self.ema.state[name].copy_(value)
            else:
                self.model.load_state_dict(self.best_weights)

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        config, dist = self.config, self.dist
        show = config.progress if config.progress is not None else sys.stderr.isatty()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=config.steps,
            initial=min(self.start_step, config.steps),
            disable=not (show and dist.is_main),
            unit="step",
            dynamic_ncols=True,
        )
        self.window.reset(time.perf_counter())
        try:
            for step in range(self.start_step + 1, config.steps + 1):
                lr = learning_rate(config, step)
                for optimizer in self.optimizers.values():
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                for phase in self._phases(step - 1):
                    self.window.add(phase, *self._phase_step(step, phase))
                if self.ema is not None:
                    self.ema.update()
                self.window.steps += 1
                bar.update(1)
                if step % config.log_every == 0 or step == config.steps:
                    row = self.window.row(step, lr, time.perf_counter())
                    if self.validation is not None and (
                        step % self.val_every == 0 or step == config.steps
                    ):
                        row["val_loss"] = self._validate(step)
                    self.log.log(row)
                    bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
                    self.window.reset(time.perf_counter())
                if self.out_dir is not None and (
                    step % config.checkpoint_every == 0 or step == config.steps
                ):
                    self._checkpoint(step)
                if self.snapshots and step % config.sample_every == 0:
                    self._snapshot(step)
        except TrainingDiverged:
            if dist.is_main:
                self.log.write_csv()  # the curve up to the divergence, for diagnosis
            raise
        finally:
            bar.close()
            self.log.close()
            self.model.train(self.was_training)
        self._load_best()
        if self.out_dir is not None and dist.is_main:
            self.model.save(self.out_dir / MODEL_FILE)
            self.log.write_csv()
        dist.barrier()
        return TrainResult(
            history=self.log.history,
            step=max(self.start_step, config.steps),
            checkpoint_dir=self.out_dir,
            resumed_from=self.resumed_from,
            best=self.best,
        )


def fit(
    model: GenerativeModel,
    data: Any,
    config: TrainConfig | None = None,
    *,
    val_data: Any = None,
) -> TrainResult:
    """Train ``model`` on ``data`` with the library's one loop (see the module docstring).

    Args:
        model: any :class:`GenerativeModel` (``optim_groups``, ``training_phases``, ``loss``).
        data: a tensor ``(N, *event_shape)``, a pair ``(x, y)`` with integer labels ``(N,)``, a
            map-style ``Dataset`` yielding ``x`` or ``(x, y)``, or a ``DataLoader`` (see
            :mod:`flowdiff.train.data` for batching and DDP sharding).
        config: the settings (defaults: ``TrainConfig()``).
        val_data: held-out data in any form ``data`` takes (a ``DataLoader`` is iterated as
            given): its mean loss is logged as ``val_loss`` (see ``val_every``, ``keep_best``).
            Only for models with one optim group (not a GAN).

    Under ``torchrun`` (or an initialised process group) every rank calls ``fit``; ``batch_size``
    is the global batch, split evenly across ranks; rank 0 alone logs, snapshots and writes
    checkpoints. The trained weights stay in ``model``, their EMA in ``model.ema_state``.

    Raises:
        TrainingDiverged: a non-finite loss or gradient norm; the last good checkpoint is kept.
        ValueError: bad data (shape, NaN), a checkpoint in ``out_dir`` of another model, ...
    """
    if not isinstance(model, GenerativeModel):
        raise TypeError(f"model must be a GenerativeModel, got {type(model).__name__}")
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    wants_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    dist = setup_distributed(use_cuda=wants_cuda)
    return _Trainer(model, data, config, dist, val_data=val_data).run()
