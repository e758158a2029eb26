"""Training checkpoints: one safetensors file per checkpoint, its structure as JSON in the header.

A checkpoint ``<dir>/checkpoint-<step:08d>.safetensors`` holds

- tensors: ``model.<name>`` (state dict), ``ema.<name>`` (EMA weights), ``optim.<group>.<i>.<key>``
  (AdamW moments and step counts of parameter ``i`` of optimizer ``group``), ``rng.<name>``
  (random generator states as ``uint8`` tensors), ``best.<name>`` (the weights of the lowest
  held-out loss, with ``keep_best``);
- the JSON header under ``"flowdiff.checkpoint"``: format, step, the model description (kind,
  class, config, normalisation), the :class:`TrainConfig`, the optimizers' non-tensor structure
  (hyper-parameters, which tensor holds which state), the loop's own state and the metrics
  history.

One file per checkpoint makes the write atomic (:func:`flowdiff.io.atomic_write`: temp file,
fsync, rename): a ``SIGKILL`` at any moment leaves either the previous checkpoints alone or the new
one complete, never a torn one. Nothing is unpickled on load.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowdiff.io import atomic_write
from flowdiff.models.base import GenerativeModel
from flowdiff.train.config import TrainConfig

__all__ = [
    "Checkpoint",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

FORMAT = "flowdiff.checkpoint/1"
_HEADER_KEY = "flowdiff.checkpoint"
_MODEL_HEADER_KEY = "flowdiff"  # the key GenerativeModel.save uses
_FILE_NAME = re.compile(r"^checkpoint-(\d+)\.safetensors$")


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read besides the weights it loaded into the model.

    Attributes:
        path: the file.
        step: number of optimizer steps completed when it was written.
        config: the :class:`TrainConfig` of the run that wrote it.
        history: the metrics rows logged up to ``step``.
        loop_state: JSON-able state of the training loop (data position, EMA update count, ...).
        rng: name -> random generator state (``uint8`` CPU tensors).
        best_weights: the weights of the lowest held-out loss so far (``keep_best``; else empty).
    """

    path: Path
    step: int
    config: TrainConfig
    history: list[dict[str, float]]
    loop_state: dict[str, Any]
    rng: dict[str, Tensor]
    best_weights: dict[str, Tensor]


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    """``<directory>/checkpoint-<step:08d>.safetensors``."""
    return Path(directory) / f"checkpoint-{step:08d}.safetensors"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint file in ``directory``, oldest first.

    Only complete files carry the checkpoint name (writes go through a hidden temp file), so an
    interrupted write is never listed.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _FILE_NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint of the highest step in ``directory``, or ``None`` if there is none."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def prune_checkpoints(directory: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` most recent checkpoints; return the deleted paths."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last!r}")
    stale = [path for _, path in list_checkpoints(directory)[:-keep_last]]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------------- model identity
def _model_header(model: GenerativeModel) -> dict[str, Any]:
    # ``kind`` identifies registered families; kind-less classes (tests, user experiments) are
    # identified by their import path instead.
    cls = type(model)
    return {**model.description(), "class": f"{cls.__module__}.{cls.__qualname__}"}


def _model_name(header: dict[str, Any]) -> str:
    return repr(header["kind"]) if header.get("kind") else f"class {header.get('class')}"


def _check_same_model(saved: dict[str, Any], model: GenerativeModel, path: Path) -> None:
    mine = _model_header(model)
    if _model_name(saved) != _model_name(mine):
        raise ValueError(
            f"{path} is a checkpoint of a {_model_name(saved)} model, but the model being "
            f"loaded is a {_model_name(mine)} model"
        )
    if saved.get("config") != mine["config"]:
        old, new = saved.get("config") or {}, mine["config"]
        diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))}
        diff = {k: v for k, v in diff.items() if v[0] != v[1]}
        raise ValueError(
            f"{path} holds a model with another configuration; (checkpoint, model) differ in {diff}"
        )


# ---------------------------------------------------------------------------------- optimizers
def _optimizer_to_tensors(
    group: str, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON structure referring to them.

    The per-parameter state is keyed by the parameter's index in the optimizer; JSON keys must be
    strings, so the index is stored as a string and turned back into an int on load (a string
    index would silently not match any parameter in ``Optimizer.load_state_dict``).
    """
    state_dict = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        entry: dict[str, Any] = {}
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                name = f"optim.{group}.{index}.{key}"
                tensors[name] = value.detach().cpu().contiguous()
                entry[key] = {"tensor": name}
            else:
                entry[key] = value
        state[str(index)] = entry
    return tensors, {"param_groups": state_dict["param_groups"], "state": state}


def _optimizer_from_tensors(
    structure: dict[str, Any], tensors: dict[str, Tensor], path: Path
) -> dict[str, Any]:
    def value(entry: Any) -> Any:
        if isinstance(entry, dict) and "tensor" in entry:
            if entry["tensor"] not in tensors:
                raise ValueError(f"{path} is corrupt: optimizer tensor {entry['tensor']!r} missing")
            return tensors[entry["tensor"]]
        return entry

    state = {
        int(index): {key: value(v) for key, v in per_param.items()}
        for index, per_param in structure["state"].items()
    }
    return {"param_groups": structure["param_groups"], "state": state}


def _check_optimizer_shapes(
    saved: dict[str, Any], optimizer: torch.optim.Optimizer, path: Path, group: str
) -> None:
    saved_sizes = [len(g["params"]) for g in saved["param_groups"]]
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    if saved_sizes != sizes:
        raise ValueError(
            f"{path}: optimizer {group!r} has parameter groups of sizes {saved_sizes}, "
            f"the model's has {sizes}"
        )


# ---------------------------------------------------------------------------------- save / load
def save_checkpoint(
    path: str | os.PathLike,
    model: GenerativeModel,
    *,
    step: int,
    config: TrainConfig,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    history: list[dict[str, float]] | None = None,
    loop_state: dict[str, Any] | None = None,
    rng: dict[str, Tensor] | None = None,
    best_weights: dict[str, Tensor] | None = None,
) -> Path:
    """Write one checkpoint atomically (see the module docstring for its layout).

    Args:
        path: target file, normally :func:`checkpoint_path` ``(out_dir, step)``.
        model: its state dict and ``model.ema_state`` are saved.
        step: optimizer steps completed.
        config: the run's settings.
        optimizers: optimizer per optim group (``model.optim_groups()`` names).
        history: metrics rows logged so far.
        loop_state: JSON-able loop state.
        rng: name -> generator state (``uint8``).
        best_weights: name -> tensor of the best weights (``keep_best``).
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.ema_state is not None:
        tensors.update(
            {f"ema.{k}": v.detach().cpu().contiguous() for k, v in model.ema_state.items()}
        )
    structures = {}
    for group, optimizer in (optimizers or {}).items():
        optim_tensors, structures[group] = _optimizer_to_tensors(group, optimizer)
        tensors.update(optim_tensors)
    for name, state in (rng or {}).items():
        tensors[f"rng.{name}"] = state.detach().cpu().contiguous()
    for name, value in (best_weights or {}).items():
        tensors[f"best.{name}"] = value.detach().cpu().contiguous()
    header = {
        "format": FORMAT,
        "step": int(step),
        "model": _model_header(model),
        "train_config": config.to_dict(),
        "optimizers": structures,
        "history": list(history or []),
        "loop": dict(loop_state or {}),
    }
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={_HEADER_KEY: json.dumps(header)})
    return path


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Header and tensors of a checkpoint file, or a ``ValueError`` saying what the file is."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types for torn/foreign files
        raise ValueError(
            f"{path} is not a readable flowdiff checkpoint (truncated, corrupt or not a "
            f"safetensors file: {err})"
        ) from err
    if _HEADER_KEY not in meta:
        what = (
            "a saved model (GenerativeModel.save; load it with GenerativeModel.load)"
            if _MODEL_HEADER_KEY in meta
            else "a safetensors file without a flowdiff checkpoint header"
        )
        raise ValueError(f"{path} is {what}, not a training checkpoint")
    try:
        header = json.loads(meta[_HEADER_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} has a corrupt checkpoint header: {err}") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else header
        raise ValueError(f"{path} has checkpoint format {got!r}, expected {FORMAT!r}")
    return header, tensors


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_checkpoint(
    path: str | os.PathLike,
    model: GenerativeModel,
    *,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> Checkpoint:
    """Load a checkpoint's weights (and EMA weights, and optimizer states if ``optimizers`` is
    given) into ``model`` in place and return the rest.

    Everything is checked before anything is loaded, so on any ``ValueError`` (a checkpoint of
    another model kind or configuration, a truncated or foreign file) the model and the
    optimizers are left untouched.
    """
    path = Path(path)
    header, tensors = _read(path)
    _check_same_model(header["model"], model, path)

    weights = _prefixed(tensors, "model.")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not match the model: missing {missing}, unexpected {unexpected}, "
            f"wrong shapes {wrong}"
        )
    ema = _prefixed(tensors, "ema.") if header["model"].get("has_ema") else None
    if ema is not None:
        params = dict(model.named_parameters())
        bad = sorted(k for k in ema if k not in params or params[k].shape != ema[k].shape)
        if bad:
            raise ValueError(f"{path} has EMA weights that do not match the model: {bad}")

    optimizer_states = {}
    if optimizers is not None:
        saved = header.get("optimizers", {})
        if set(saved) != set(optimizers):
            raise ValueError(
                f"{path} has optimizers {sorted(saved)}, the model trains {sorted(optimizers)}"
            )
        for group, optimizer in optimizers.items():
            _check_optimizer_shapes(saved[group], optimizer, path, group)
            optimizer_states[group] = _optimizer_from_tensors(saved[group], tensors, path)

    try:
        config = TrainConfig(**header["train_config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} has an invalid training configuration: {err}") from err

    # Every check passed: now load.
    device = model.device
    model.load_state_dict(weights)
    model.ema_state = None if ema is None else {k: v.to(device) for k, v in ema.items()}
    model.normalization = header["model"].get("normalization")
    for group, state in optimizer_states.items():
        optimizers[group].load_state_dict(state)
    return Checkpoint(
        path=path,
        step=int(header["step"]),
        config=config,
        history=header.get("history", []),
        loop_state=header.get("loop", {}),
        rng=_prefixed(tensors, "rng."),
        best_weights=_prefixed(tensors, "best."),
    )
