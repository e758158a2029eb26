"""What each ``flowdiff`` command does; :mod:`flowdiff.cli.main` parses and reports errors.

A run folder written by ``flowdiff train --out DIR`` holds:

- ``config.yaml``: the settings (``flowdiff train --config DIR/config.yaml`` repeats the run);
- ``model.safetensors``: the trained model (EMA weights, JSON description in its header);
- ``checkpoint-*.safetensors``, ``metrics.csv``: the training loop's checkpoints and log (a
  killed run restarted with the same command resumes from its last checkpoint);
- ``samples.png``, ``loss.png``: a first look at the result;
- ``metrics.json`` once ``flowdiff evaluate`` has run, ``classifier.safetensors`` (images: the
  feature classifier of the image metrics, unless ``--classifier`` put it elsewhere).

``flowdiff demo`` adds ``field.png``, ``trajectories.png``, ``density.png``, ``flow.gif`` and
``density.gif``, all in data units.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowdiff.cli.config import RunConfig, read_config_file
from flowdiff.io import atomic_write, write_json
from flowdiff.train.loop import MODEL_FILE, check_validation  # MODEL_FILE: the final model
from flowdiff.utils import check_name, closest_name_hint

CONFIG_FILE = "config.yaml"
RUN_FILES = (CONFIG_FILE, MODEL_FILE, "metrics.csv", "samples.png", "loss.png", "metrics.json")
RUN_DIRS = ("samples", "tensorboard")  # the loop's sample snapshots and TensorBoard log
# TrainConfig fields the command sets from its own flags: not accepted in --train-set.
TRAIN_FLAGS = {
    "steps": "--steps",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "seed": "--seed",
    "device": "--device",
    "out_dir": "--out",
    "progress": "--quiet",
    "keep_best": "--keep-best",
}
# The density animation: frames at evenly spaced times from noise to data.
DENSITY_FRAMES = 11


class CLIError(ValueError):
    """A user error: ``flowdiff`` prints it as one line and exits with status 2."""


# ---------------------------------------------------------------------------- helpers
def _accepts(fn: Any, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_out_file(path: Path, force: bool) -> Path:
    if path.exists() and not force:
        raise CLIError(f"{path} exists; pass --force to overwrite it")
    return path


def _load_run(run: str) -> tuple[Any, RunConfig, Path]:
    """The model and settings of a run folder."""
    from flowdiff.models import GenerativeModel

    folder = Path(run)
    if not folder.is_dir():
        raise CLIError(f"run folder not found: {folder}")
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise CLIError(
            f"{folder} holds no trained model ({MODEL_FILE}); run `flowdiff train` first"
        )
    config = RunConfig.from_dict(read_config_file(folder / CONFIG_FILE), str(folder / CONFIG_FILE))
    model = GenerativeModel.load(model_path)
    model.eval()
    return model, config, folder


def _run_config(args: argparse.Namespace) -> RunConfig:
    """Defaults, then the ``--config`` file, then flags."""
    values: dict[str, Any] = {}
    if args.config:
        values.update(read_config_file(args.config))
    flags = {
        "data": args.data,
        "model": args.model,
        "n_data": args.n_data,
        "path": args.path,
        "hidden": args.hidden,
        "depth": args.depth,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "device": args.device,
        "val_fraction": args.val_fraction,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.keep_best:
        values["keep_best"] = True
    if args.conditional is not None:
        values["conditional"] = args.conditional
    if args.dequantize is not None:
        values["dequantize"] = args.dequantize
    if args.model_options:
        values["model_options"] = {**values.get("model_options", {}), **dict(args.model_options)}
    if args.train_options:
        values["train_options"] = {**values.get("train_options", {}), **dict(args.train_options)}
    return RunConfig.from_dict(values, args.config or "the command line")


def _changed_settings(out: Path, config: RunConfig) -> list[str] | None:
    """Settings in which the run recorded in ``out`` differs from ``config`` (``None``: no
    recorded run)."""
    existing = out / CONFIG_FILE
    if not existing.is_file():
        return None
    previous = RunConfig.from_dict(read_config_file(existing), str(existing)).to_dict()
    return sorted(k for k, v in config.to_dict().items() if previous.get(k) != v)


def _check_run_folder(out: Path, config: RunConfig, force: bool) -> None:
    """Refuse to write over another run (writes nothing); the same settings resume a run that
    has no model yet, ``--force`` starts afresh."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    if force:
        return
    changed = _changed_settings(out, config)
    if changed:
        raise CLIError(
            f"{out} holds a run with other settings ({', '.join(changed)} differ); "
            "pass --force to overwrite it or choose another --out"
        )
    if changed is not None and (out / MODEL_FILE).is_file():
        raise CLIError(f"{out} already holds this trained run; pass --force to retrain")
    if changed is None and out.is_dir() and any(out.iterdir()):
        raise CLIError(f"{out} is not empty and holds no flowdiff run; choose another --out")


def _clear_run_folder(out: Path) -> None:
    """``--force``: remove what a previous run wrote (other files are left alone)."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
    for checkpoint in out.glob("checkpoint-*.safetensors"):
        checkpoint.unlink()


def _train_options(config: RunConfig, out: Path, quiet: bool) -> dict[str, Any]:
    """The keyword options of ``model.fit``, validated as a ``TrainConfig`` (unknown keys get
    the closest valid one), so that bad settings fail before the run folder is touched."""
    from flowdiff.train import TrainConfig

    for key in config.train_options:
        if key in TRAIN_FLAGS:
            raise CLIError(
                f"training option {key!r} is set by {TRAIN_FLAGS[key]} (or `{key}` in the "
                "config file), not by --train-set / train_options"
            )
    valid = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in TRAIN_FLAGS]
    _check_keys(config.train_options, valid, "training option", "--train-set / train_options")
    options = {
        "steps": config.steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "device": config.device,
        "out_dir": str(out),
        "keep_best": config.keep_best,
        **config.train_options,
    }
    if quiet:
        options["progress"] = False
    TrainConfig(**options)  # a bad value raises a ValueError naming the field
    return options


def _check_keys(options: dict[str, Any], valid: list[str], what: str, where: str) -> None:
    """An unknown key is named with the closest valid one and the whole list."""
    for key in options:
        if key not in valid:
            raise CLIError(
                f"unknown {what} {key!r} ({where}){closest_name_hint(key, valid)} "
                f"(choose from {', '.join(valid)})"
            )


def _check_model_options(cls: type, kind: str, options: dict[str, Any]) -> None:
    """``--set`` keys must be the model's real constructor arguments."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n in params if n not in ("self", "event_shape")]
    _check_keys(options, valid, f"option of a {kind!r} model", "--set / model_options")


def build_model(config: RunConfig, event_shape: tuple[int, ...], num_classes: int | None) -> Any:
    """The model a run's settings describe, for data of ``event_shape``."""
    from flowdiff import nets
    from flowdiff.models import model_class, registered_models

    cls = model_class(config.model)
    _check_model_options(cls, config.model, config.model_options)
    kwargs: dict[str, Any] = {"event_shape": event_shape, **config.model_options}
    takes_labels = _accepts(cls.__init__, "num_classes")
    if config.conditional:  # asked for explicitly: never dropped silently
        if not takes_labels:
            labelled = [
                k for k in registered_models() if _accepts(model_class(k).__init__, "num_classes")
            ]
            raise CLIError(
                f"--conditional: a {config.model!r} model takes no labels; "
                f"use one of {', '.join(labelled)}"
            )
        if num_classes is None:
            raise CLIError(f"--conditional: the data {config.data!r} have no labels")
    conditional = len(event_shape) >= 3 if config.conditional is None else config.conditional
    if num_classes is not None and conditional and takes_labels:
        kwargs["num_classes"] = num_classes
    if config.path is not None:
        if not _accepts(cls.__init__, "path"):
            raise CLIError(f"--path does not apply to a {config.model!r} model")
        kwargs["path"] = config.path
    size = {k: v for k, v in (("hidden", config.hidden), ("depth", config.depth)) if v is not None}
    if size and "net" not in kwargs and _accepts(cls.__init__, "net"):
        # flow / diffusion models take a network config: an MLP, or a U-Net for images.
        classes = kwargs.get("num_classes")
        if len(event_shape) == 3 and event_shape[1] % 2 == 0 and event_shape[2] % 2 == 0:
            if "depth" in size:
                raise CLIError("--depth applies to MLPs; images use a U-Net (set --hidden only)")
            kwargs["net"] = nets.UNet(
                event_shape[0], base_channels=size["hidden"], num_classes=classes
            ).config
        else:
            kwargs["net"] = nets.MLP(event_shape, **size, num_classes=classes).config
    else:
        for key, value in size.items():
            if not _accepts(cls.__init__, key):
                raise CLIError(f"--{key} does not apply to a {config.model!r} model")
            kwargs[key] = value
    return cls(**kwargs)


def _sample_options(model: Any, **options: Any) -> dict[str, Any]:
    """Keep the sampling options given (not ``None``); refuse those the model cannot use."""
    chosen = {k: v for k, v in options.items() if v is not None}
    for key in chosen:
        if not _accepts(model.sample, key):
            flag = {"y": "label"}.get(key, key)
            raise CLIError(f"--{flag} does not apply to a {model.kind!r} model")
    return chosen


def _first_look(model: Any, folder: Path, history_csv: Path, seed: int) -> None:
    """``samples.png`` and ``loss.png`` of a freshly trained run."""
    from flowdiff import viz

    n = 64 if len(model.event_shape) >= 3 else 2000
    x = model.sample(n, generator=_generator(seed))
    viz.save_samples(x, folder / "samples.png", title=f"{model.kind} samples")
    if history_csv.is_file():
        viz.plot_loss(history_csv, folder / "loss.png")


# ---------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> None:
    from flowdiff.data import load_data
    from flowdiff.train import TrainConfig

    config = _run_config(args)
    out = Path(args.out)
    _check_run_folder(out, config, args.force)
    # Everything that can fail on bad input runs before the folder is created or cleared, so a
    # failed command leaves nothing behind (a stray config.yaml would refuse the next run).
    data = load_data(config.data, n=config.n_data, generator=_generator(config.seed))
    on_grid = data.bin_width is not None
    dequantize = config.dequantize if config.dequantize is not None else on_grid
    if dequantize and not on_grid:
        raise CLIError(
            f"--dequantize needs data on a grid (integer values, one scale for every entry); "
            f"{config.data} is not"
        )
    val_data = None
    if config.val_fraction is not None:
        data, val_data = data.split(config.val_fraction, seed=config.seed)
    torch.manual_seed(config.seed)  # the network's initial weights: a run repeats bit for bit
    model = build_model(config, data.event_shape, data.num_classes)
    options = _train_options(config, out, args.quiet)
    try:
        check_validation(model, TrainConfig(**options), val_data is not None)
    except ValueError as err:
        raise CLIError(f"--val-fraction: {err}") from None
    # Under torchrun every process runs this command; only the first one (RANK 0, which also
    # writes the checkpoints) touches the folder, draws the pictures and reports.
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        if args.force:
            _clear_run_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        config.write(out / CONFIG_FILE)
    # Writes out/model.safetensors at the end.
    result = model.fit(data, val_data=val_data, dequantize=dequantize, **options)
    if not main_process:
        return
    _first_look(model.cpu(), out, out / "metrics.csv", config.seed)
    loss = result.history[-1]["loss"] if result.history else float("nan")
    held_out = ""
    if result.best is not None:
        kept = "kept" if config.keep_best else "lowest"
        held_out = f", {kept}: val_loss {result.best['val_loss']:.4g} at step {result.best['step']}"
    print(
        f"trained {config.model} on {config.data}{' (dequantised)' if dequantize else ''} "
        f"for {config.steps} steps "
        f"(last logged loss {loss:.4g}{held_out}) -> {out / MODEL_FILE}"
    )


def cmd_sample(args: argparse.Namespace) -> None:
    model, _, _ = _load_run(args.run)
    out = _check_out_file(Path(args.out), args.force)
    suffix = out.suffix.lower()
    if suffix not in (".npy", ".pt", ".csv", ".png"):
        raise CLIError(f"--out must end in .npy, .pt, .csv or .png, got {out.name!r}")
    if args.guidance is not None and args.label is None:
        raise CLIError("--guidance needs --label (the class to guide towards)")
    options = _sample_options(
        model,
        steps=args.steps,
        solver=args.solver,
        sigma=args.sigma,
        y=args.label,
        guidance=args.guidance,
    )
    x = model.sample(args.n, generator=_generator(args.seed), **options).detach().cpu()
    if suffix == ".png":
        from flowdiff import viz

        viz.save_samples(x, out)
    elif suffix == ".csv":
        if x.dim() != 2:
            raise CLIError(
                f"--out .csv needs vector samples (N, D), got {tuple(x.shape)}; use .npy"
            )
        with atomic_write(out) as tmp:
            np.savetxt(tmp, x.numpy(), delimiter=",", fmt="%.7g")
    elif suffix == ".npy":
        with atomic_write(out) as tmp, open(tmp, "wb") as fh:
            np.save(fh, x.numpy())
    else:
        with atomic_write(out) as tmp:
            torch.save(x, tmp)
    print(f"wrote {args.n} samples of shape {tuple(x.shape[1:])} -> {out}")


# The MMD kernel mixture: bandwidths at these multiples of the median pairwise distance of the
# reference data (the median heuristic), from well inside a mode to the spread of the whole set.
MMD_BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
# Fraction of a labelled image set held out from the feature classifier, for its own accuracy.
CLASSIFIER_HOLDOUT = 0.2


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Sample metrics of a run against data, each with its floor, written as JSON.

    Units: the sample metrics (``wasserstein2``, ``sliced_wasserstein``, ``mmd``,
    ``energy_distance``) are computed in the model's normalised units (vectors standardised per
    feature, images mapped to [-1, 1]), where every feature has a comparable scale; MMD uses the
    RBF bandwidths ``MMD_BANDWIDTH_FACTORS`` x the median heuristic of the reference data in
    those units (recorded as ``mmd_bandwidths``). Each ``X_floor`` is the same metric between
    two disjoint data samples of the same size, with the same bandwidths and projections.

    ``--nll``: ``nll`` (nats per sample) and ``bits_per_dim`` of data in data units. Integer data
    (grey levels) are uniformly dequantised first (``nll_dequantized``), which makes
    ``bits_per_dim`` an upper bound, in expectation, on the bits per dimension of the discrete
    model (in units of one level; see ``flowdiff.metrics.bits_per_dim``).
    """
    from flowdiff import metrics
    from flowdiff.data import load_data

    model, config, folder = _load_run(args.run)
    out = _check_out_file(Path(args.out) if args.out else folder / "metrics.json", args.force)
    images = len(model.event_shape) == 3
    if args.inception_weights:
        if not images:
            raise CLIError(
                f"--inception-weights needs images (C, H, W); the model draws {model.event_shape}"
            )
        try:
            metrics.check_inception_fid(args.inception_weights)
        except ImportError as err:
            raise CLIError(str(err)) from err
    name = args.data or config.data
    gen = _generator(args.seed)
    # Toys draw fresh points; a fixed data set is split into two disjoint halves: one to
    # compare with, one for each metric's sample-size floor (data vs data at the same size).
    real = load_data(name, n=2 * args.n if name in _toy_names() else None, generator=gen)
    if tuple(real.event_shape) != tuple(model.event_shape):
        raise CLIError(
            f"data {name!r} has event shape {real.event_shape}, the model {model.event_shape}"
        )
    if args.inception_weights and real.normalizer.kind != "images":
        raise CLIError(f"--inception-weights needs image data in [0, max], not {name!r}")
    n = min(args.n, len(real) // 2)
    if n < 2:
        raise CLIError(f"data {name!r} has {len(real)} samples; evaluation needs at least 4")
    perm = torch.randperm(len(real), generator=gen)
    ref, other = real.raw()[perm[:n]], real.raw()[perm[n : 2 * n]]
    options = _sample_options(model, steps=args.steps)
    fake = model.sample(n, generator=gen, **options).detach().cpu()

    def model_units(x: torch.Tensor) -> torch.Tensor:
        return model.normalize_with_log_det(x)[0]

    fake_z, ref_z, other_z = model_units(fake), model_units(ref), model_units(other)
    median = metrics.median_heuristic(ref_z)
    bandwidths = [median * factor for factor in MMD_BANDWIDTH_FACTORS]
    extra: dict[str, Callable[[], dict[str, Any]]] = {
        "mmd": lambda: {"bandwidths": bandwidths},
        # A fresh generator per call: the figure and its floor use the same directions.
        "sliced_wasserstein": lambda: {"generator": _generator(args.seed)},
    }
    results: dict[str, Any] = {"model": model.kind, "data": name, "n": n, "units": "normalised"}
    for metric in ("wasserstein2", "sliced_wasserstein", "mmd", "energy_distance"):
        fn = metrics.get_metric(metric)
        kwargs = extra.get(metric, dict)
        results[metric] = fn(fake_z, ref_z, **kwargs())
        # The floor (metrics.floor's definition) called directly: floor() keeps `generator`
        # for its own random split instead of passing it on to the metric.
        results[f"{metric}_floor"] = fn(other_z, ref_z, **kwargs())
    results["mmd_bandwidths"] = bandwidths
    if images and real.y is not None:
        results.update(_classifier_metrics(model, real, ref, other, fake, folder, args, options))
    if args.inception_weights:
        results.update(_inception_metrics(real, ref, other, fake, args.inception_weights))
    if args.nll:
        results.update(_likelihood_metrics(model, ref[: min(n, 500)], gen))
    for key, value in results.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise CLIError(f"metric {key} is not finite ({value}); the model may have diverged")
    write_json(out, results)
    print(json.dumps(results, indent=2))


def _toy_names() -> list[str]:
    from flowdiff.data import toy_names

    return toy_names()


def _classifier_metrics(
    model: Any,
    real: Any,
    ref: torch.Tensor,
    other: torch.Tensor,
    fake: torch.Tensor,
    folder: Path,
    args: argparse.Namespace,
    options: dict[str, Any],
) -> dict[str, float]:
    """Classifier Frechet distance with its floor, the classifier's held-out accuracy on real
    images and, for conditional models, the class accuracy of conditional samples.

    The classifier is fitted on a fixed 80% of the real images (the split does not depend on
    ``--seed``, so its cache is reused) and ``class_accuracy_real`` is its accuracy on the other
    20%: the ceiling ``class_accuracy`` can reach.
    """
    from flowdiff import metrics

    split = torch.randperm(len(real), generator=_generator(0))
    held_out = max(1, int(CLASSIFIER_HOLDOUT * len(real)))
    train, test = split[held_out:], split[:held_out]
    cache = Path(args.classifier) if args.classifier else folder / "classifier.safetensors"
    classifier = metrics.load_or_train_classifier(cache, real.x[train], real.y[train])
    norm = real.normalizer
    out: dict[str, float] = {
        "classifier_frechet": metrics.classifier_frechet_distance(
            classifier, norm.forward(ref), norm.forward(fake)
        ),
        "classifier_frechet_floor": metrics.classifier_frechet_distance(
            classifier, norm.forward(ref), norm.forward(other)
        ),
        "class_accuracy_real": metrics.classifier_accuracy(classifier, real.x[test], real.y[test]),
    }
    if model.num_classes is not None:
        n = len(fake)
        labels = torch.arange(n) % model.num_classes
        gen = _generator(args.seed + 1)  # not the stream of the unconditional samples
        conditional = model.sample(n, y=labels, generator=gen, **options).detach().cpu()
        out["class_accuracy"] = metrics.classifier_accuracy(
            classifier, norm.forward(conditional), labels
        )
    return out


def _inception_metrics(
    real: Any, ref: torch.Tensor, other: torch.Tensor, fake: torch.Tensor, weights: str
) -> dict[str, float]:
    """FID with the user's Inception weights, and its floor (real vs real)."""
    from flowdiff import metrics

    def unit_range(x: torch.Tensor) -> torch.Tensor:
        # The "images" normaliser maps [0, max] onto [-1, 1]; FID wants [0, 1]. Samples may
        # overshoot the range a little: clip them as an image file would.
        return ((real.normalizer.forward(x) + 1) / 2).clamp(0, 1)

    r, f, o = unit_range(ref), unit_range(fake), unit_range(other)
    return {
        "inception_frechet": metrics.inception_frechet_distance(r, f, weights),
        "inception_frechet_floor": metrics.inception_frechet_distance(r, o, weights),
    }


def _likelihood_metrics(model: Any, x: torch.Tensor, gen: torch.Generator) -> dict[str, Any]:
    """``nll`` and ``bits_per_dim`` of data ``x`` (data units), dequantised when integer."""
    from flowdiff import metrics
    from flowdiff.data.dequantize import dequantize

    # Grey levels: a density at the grid points bounds nothing; at x + U(-1/2, 1/2) it bounds
    # the discrete likelihood (bin width 1 in data units, so no log-width term to add).
    dequantized = bool(torch.equal(x, x.round()))
    if dequantized:
        x = dequantize(x, 1.0, generator=gen)
    try:
        with torch.no_grad():  # values only (the flows' divergence enables grad inside)
            log_prob = model.log_prob(x)
    except NotImplementedError as err:
        raise CLIError(str(err)) from err
    return {
        "nll": metrics.nll(log_prob),
        "bits_per_dim": metrics.bits_per_dim(log_prob, model.event_shape),
        "nll_dequantized": dequantized,
    }


def _plot_lims(x: torch.Tensor) -> tuple[tuple[float, float], tuple[float, float]]:
    lo, hi = x.min(0).values, x.max(0).values
    pad = 0.15 * (hi - lo)
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (
        float(lo[1] - pad[1]),
        float(hi[1] + pad[1]),
    )


ANIMATIONS = ("animation", "density-animation")


def cmd_plot(args: argparse.Namespace) -> None:
    from flowdiff import viz

    model, _, folder = _load_run(args.run)
    out = _check_out_file(Path(args.out), args.force)
    kind = args.kind
    if (kind in ANIMATIONS) != (out.suffix.lower() == ".gif"):  # fail before any sampling
        wanted = "a .gif" if kind in ANIMATIONS else "a picture (.png, .pdf, .svg, .jpg)"
        raise CLIError(f"--kind {kind} writes {wanted}, not {out.name!r}")
    gen = _generator(args.seed)
    if kind == "loss":
        viz.plot_loss(folder / "metrics.csv", out)
    elif kind == "samples":
        n = args.n or (64 if len(model.event_shape) >= 3 else 2000)
        x = model.sample(n, generator=gen, **_sample_options(model, steps=args.steps))
        viz.save_samples(x.detach().cpu(), out)
    else:
        plot_flow(model, kind, out, n=args.n, steps=args.steps, generator=gen)
    print(f"wrote {kind} -> {out}")


def _model_field(model: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The model's unconditional velocity ``u_t(z)`` in model units: ``(M, *shape), (M,)``."""
    field = model.field()
    if not hasattr(model, "conditioning"):  # a CNF: field() comes with its (null) labels bound
        return field
    return lambda z, t: field(z, t, **model.conditioning(None, z.shape[0]))


def _data_units_field(model: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The velocity in data units: with ``x = A z + b`` (the affine denormalisation) the
    data moves at ``dx/dt = A u_t(z)``, which is ``denormalize(z + u) - denormalize(z)``."""
    field = _model_field(model)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z = model.normalize_with_log_det(x)[0]
        with torch.no_grad(), model.averaged():
            u = field(z, t)
        return model.denormalize(z + u) - model.denormalize(z)

    return velocity


def log_density_in_time(
    model: Any, steps: int
) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], float, float]:
    """``log p_t(x)`` in data units of a flow's ODE at any time, and its span ``(t0, t1)``.

    ``X_t = denormalize(Z_t)`` with ``Z_t`` the model's ODE from ``p_init`` at ``t0`` (t1: the
    data). By the instantaneous change of variables (``flowdiff.models.likelihood``, eq. 1)
    ``log p_t(z) = log p_init(Z_t0) - int_t0^t div u_s(Z_s) ds``, solved backward from
    ``Z_t = z`` with RK4 in ``ceil(steps (t - t0) / (t1 - t0))`` steps (``steps`` over the whole
    span), plus the log-determinant of ``x -> z``.

    Returns:
        ``(log_p, t0, t1)``: ``log_p(x (M, *shape), t (M,)) -> (M,)`` takes one time per call
        (``t[0]``), as :func:`flowdiff.viz.animate_density` calls it.
    """
    from flowdiff.models import likelihood

    if hasattr(model, "sampling_interval"):  # flow and diffusion models (the ODE's span)
        p_init = model.path.p_init(model.event_shape)
        t0, t1 = model.sampling_interval(False, 1e-2)  # 1e-2: PathModel.sample's t_eps
    else:  # a CNF
        p_init, t0, t1 = model.p_init, 0.0, 1.0
    field = _model_field(model)

    def log_p(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z, log_det = model.normalize_with_log_det(x)
        time = min(max(float(t[0]), t0), t1)
        if time == t0:
            return p_init.log_prob(z) + log_det
        k = max(1, math.ceil(steps * (time - t0) / (t1 - t0) - 1e-9))
        with model.averaged():
            log_pz = likelihood.log_prob(
                field, z, p_init=p_init, solver="rk4", steps=k, t0=t0, t1=time
            )
        return log_pz + log_det

    return log_p, t0, t1


def plot_flow(
    model: Any,
    kind: str,
    out: Path,
    *,
    n: int | None,
    steps: int | None,
    generator: torch.Generator,
) -> Path:
    """Pictures of a model's flow, all in data units: ``trajectories``, ``field``, ``density``,
    ``animation`` (samples moving), ``density-animation`` (``p_t`` at ``DENSITY_FRAMES``
    times)."""
    from flowdiff import viz

    if not hasattr(model, "field"):
        raise CLIError(f"--kind {kind} needs a flow or diffusion model, not {model.kind!r}")
    drawable = {
        "field": ((2,),),
        "density": ((2,),),
        "density-animation": ((2,),),
        "trajectories": ((1,), (2,)),
        "animation": ((2,),),
    }[kind]
    images = len(model.event_shape) == 3
    if model.event_shape not in drawable and not (kind == "animation" and images):
        raise CLIError(f"--kind {kind} cannot draw samples of shape {model.event_shape}")
    if kind in ("trajectories", "animation"):
        default_n = 64 if images else (300 if kind == "trajectories" else 1500)
        solution = model.sample(
            n or default_n, steps=steps or 50, generator=generator, return_solution=True
        )
        if kind == "trajectories":
            return viz.plot_trajectories(solution.xs.cpu(), solution.ts.cpu(), out)
        every = max(1, (len(solution.ts) - 1) // 40)  # at most ~40 frames
        return viz.animate_samples(solution.xs[::every].cpu(), solution.ts[::every].cpu(), out)
    # Samples set the plotting window; 20 solver steps are plenty for that.
    reference = model.sample(2000, steps=20, generator=generator)
    lims = _plot_lims(reference)
    if kind == "density":
        return viz.plot_density(
            # An 80 x 80 grid with 10 RK4 steps: a picture, not a benchmark (seconds, not minutes).
            lambda x: model.log_prob(x, steps=steps or 10, solver="rk4"),
            out,
            lims=lims,
            grid=80,
            data=reference,
            data_label="model samples",
            title=f"model density ({steps or 10}-step RK4 likelihood)",
        )
    if kind == "density-animation":
        # 50 x 50 and 6 RK4 steps over [0, 1]: a few seconds on one core for the 11 frames.
        log_p, t0, t1 = log_density_in_time(model, steps or 6)
        times = torch.linspace(t0, t1, DENSITY_FRAMES).tolist()
        return viz.animate_density(log_p, times, out, lims=lims, grid=50, fps=4)
    return viz.plot_vector_field(_data_units_field(model), [0.0, 1 / 3, 2 / 3, 1.0], out, lims=lims)


def cmd_demo(args: argparse.Namespace) -> None:
    """Train a flow on a built-in 2D set; draw samples, field, paths, density and animations.

    A folder that already holds a trained demo with the same settings is redrawn; one with other
    settings (another ``--data`` or ``--steps``) is refused unless ``--force`` retrains it.
    """
    data = check_name(args.data, _toy_names(), "2D data set for the demo")
    out = Path(args.out)
    from flowdiff.cli.main import build_parser  # the demo is `flowdiff train` with these flags

    train_argv = ["train", "--data", data, "--model", "flow", "--steps", str(args.steps),
                  "--seed", "0", "--device", "cpu", "--out", str(out)]  # fmt: skip
    train_args = build_parser().parse_args(train_argv + (["--force"] if args.force else []))
    if (out / MODEL_FILE).is_file() and not args.force:
        changed = _changed_settings(out, _run_config(train_args))
        if changed is None:
            raise CLIError(
                f"{out} holds a model but no {CONFIG_FILE}; pass --force or choose another --out"
            )
        if changed:
            raise CLIError(
                f"{out} holds a trained run with other settings ({', '.join(changed)} differ); "
                "pass --force to retrain it or choose another --out"
            )
        print(f"{out} already holds this trained demo; drawing its pictures (--force retrains)")
    else:
        cmd_train(train_args)
    model, _, _ = _load_run(str(out))
    gen = _generator(0)
    for kind, name in (
        ("field", "field.png"),
        ("trajectories", "trajectories.png"),
        ("density", "density.png"),
        ("animation", "flow.gif"),
        ("density-animation", "density.gif"),
    ):
        path = plot_flow(model, kind, out / name, n=None, steps=None, generator=gen)
        print(f"wrote {path}")


def _path_figures() -> dict[str, Callable[[Path], Path]]:
    """The learning half of the notes on their 8-mode mixture under the linear path: the
    conditional path towards one data point, the exact marginal field, and conditional against
    marginal trajectories (``flowdiff.viz.paths``)."""
    from flowdiff.distributions import GaussianMixture
    from flowdiff.paths import GaussianMixtureOracle, GaussianPath
    from flowdiff.viz import paths as figures

    mixture = GaussianMixture.symmetric_2d(n_modes=8)
    path = GaussianPath("linear")
    oracle = GaussianMixtureOracle(mixture, path)
    times = [0.0, 0.25, 0.5, 0.75, 1.0]
    return {
        "conditional-path": lambda out: figures.plot_conditional_path(
            path, mixture.means[0], times, out, generator=_generator(0)
        ),
        "marginal-field": lambda out: figures.plot_marginal_field(oracle, times, out),
        "conditional-vs-marginal": lambda out: figures.plot_conditional_vs_marginal(
            oracle, out, generator=_generator(0)
        ),
    }


def cmd_simulate(args: argparse.Namespace) -> None:
    from flowdiff.viz import dynamics as figures

    out = Path(args.out)
    makers = {
        "linear": figures.plot_linear_ode,
        "euler": figures.plot_euler_vs_exact,
        "brownian": figures.plot_brownian_motion,
        "ou": figures.plot_ornstein_uhlenbeck,
        "langevin": figures.plot_langevin,
        **_path_figures(),
    }
    chosen = makers if args.example == "all" else {args.example: makers[args.example]}
    for name, make in chosen.items():
        path = make(out / f"{name}.png")
        print(f"wrote {path}")
