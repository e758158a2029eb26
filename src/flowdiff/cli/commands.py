"""What each ``flowdiff`` command does; :mod:`flowdiff.cli.main` parses and reports errors.

A run folder written by ``flowdiff train --out DIR`` holds:

- ``config.yaml``: the settings (``flowdiff train --config DIR/config.yaml`` repeats the run);
- ``model.safetensors``: the trained model (EMA weights, JSON description in its header);
- ``checkpoint-*.safetensors``, ``metrics.csv``: the training loop's checkpoints and log (a
  killed run restarted with the same command resumes from its last checkpoint);
- ``samples.png``, ``loss.png``: a first look at the result.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowdiff.cli.config import RunConfig, read_config_file
from flowdiff.io import atomic_write, write_json
from flowdiff.train.loop import MODEL_FILE  # where the training loop writes the final model

CONFIG_FILE = "config.yaml"
RUN_FILES = (CONFIG_FILE, MODEL_FILE, "metrics.csv", "samples.png", "loss.png", "metrics.json")
RUN_DIRS = ("samples", "tensorboard")  # the loop's sample snapshots and TensorBoard log


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
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.conditional is not None:
        values["conditional"] = args.conditional
    if args.model_options:
        values["model_options"] = {**values.get("model_options", {}), **dict(args.model_options)}
    if args.train_options:
        values["train_options"] = {**values.get("train_options", {}), **dict(args.train_options)}
    return RunConfig.from_dict(values, args.config or "the command line")


def _prepare_run_folder(out: Path, config: RunConfig, force: bool) -> None:
    """Refuse to write over another run; same settings resume, ``--force`` starts afresh."""
    existing = out / CONFIG_FILE
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    if force:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for name in RUN_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
        for checkpoint in out.glob("checkpoint-*.safetensors"):
            checkpoint.unlink()
        return
    if existing.is_file():
        previous = RunConfig.from_dict(read_config_file(existing), str(existing))
        if previous != config:
            changed = sorted(
                k for k, v in config.to_dict().items() if previous.to_dict().get(k) != v
            )
            raise CLIError(
                f"{out} holds a run with other settings ({', '.join(changed)} differ); "
                "pass --force to overwrite it or choose another --out"
            )
        if (out / MODEL_FILE).is_file():
            raise CLIError(f"{out} already holds this trained run; pass --force to retrain")
    elif out.is_dir() and any(out.iterdir()):
        raise CLIError(f"{out} is not empty and holds no flowdiff run; choose another --out")


def build_model(config: RunConfig, event_shape: tuple[int, ...], num_classes: int | None) -> Any:
    """The model a run's settings describe, for data of ``event_shape``."""
    from flowdiff import nets
    from flowdiff.models import model_class

    cls = model_class(config.model)
    kwargs: dict[str, Any] = {"event_shape": event_shape, **config.model_options}
    conditional = len(event_shape) >= 3 if config.conditional is None else config.conditional
    if num_classes is not None and conditional and _accepts(cls.__init__, "num_classes"):
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

    config = _run_config(args)
    out = Path(args.out)
    _prepare_run_folder(out, config, args.force)
    data = load_data(config.data, n=config.n_data, generator=_generator(config.seed))
    torch.manual_seed(config.seed)  # the network's initial weights: a run repeats bit for bit
    model = build_model(config, data.event_shape, data.num_classes)
    out.mkdir(parents=True, exist_ok=True)
    config.write(out / CONFIG_FILE)
    options = {
        "steps": config.steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "device": config.device,
        "out_dir": str(out),
        **config.train_options,
    }
    if args.quiet:
        options["progress"] = False
    result = model.fit(data, **options)  # writes out/model.safetensors at the end
    _first_look(model.cpu(), out, out / "metrics.csv", config.seed)
    loss = result.history[-1]["loss"] if result.history else float("nan")
    print(
        f"trained {config.model} on {config.data} for {config.steps} steps "
        f"(last logged loss {loss:.4g}) -> {out / MODEL_FILE}"
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


def cmd_evaluate(args: argparse.Namespace) -> None:
    from flowdiff import metrics
    from flowdiff.data import load_data

    model, config, folder = _load_run(args.run)
    name = args.data or config.data
    gen = _generator(args.seed)
    # Toys draw fresh points; a fixed data set is split into two disjoint halves: one to
    # compare with, one for each metric's sample-size floor (data vs data at the same size).
    real = load_data(name, n=2 * args.n if name in _toy_names() else None, generator=gen)
    if tuple(real.event_shape) != tuple(model.event_shape):
        raise CLIError(
            f"data {name!r} has event shape {real.event_shape}, the model {model.event_shape}"
        )
    n = min(args.n, len(real) // 2)
    if n < 2:
        raise CLIError(f"data {name!r} has {len(real)} samples; evaluation needs at least 4")
    perm = torch.randperm(len(real), generator=gen)
    ref, other = real.raw()[perm[:n]], real.raw()[perm[n : 2 * n]]
    options = _sample_options(model, steps=args.steps)
    fake = model.sample(n, generator=gen, **options).detach().cpu()
    results: dict[str, Any] = {"model": model.kind, "data": name, "n": n}
    for metric in ("wasserstein2", "sliced_wasserstein", "mmd", "energy_distance"):
        fn = metrics.get_metric(metric)
        results[metric] = fn(fake, ref)
        results[f"{metric}_floor"] = fn(other, ref)
    if len(model.event_shape) == 3 and real.y is not None:
        results.update(_image_metrics(model, real, ref, n, folder, args, gen))
    if args.nll:
        try:
            log_prob = model.log_prob(ref[: min(n, 500)])
        except NotImplementedError as err:
            raise CLIError(str(err)) from err
        results["nll"] = metrics.nll(log_prob)
    for key, value in results.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise CLIError(f"metric {key} is not finite ({value}); the model may have diverged")
    out = Path(args.out) if args.out else folder / "metrics.json"
    write_json(out, results)
    print(json.dumps(results, indent=2))


def _toy_names() -> list[str]:
    from flowdiff.data import toy_names

    return toy_names()


def _image_metrics(
    model: Any,
    real: Any,
    ref: torch.Tensor,
    n: int,
    folder: Path,
    args: argparse.Namespace,
    gen: torch.Generator,
) -> dict[str, float]:
    """Classifier Frechet distance and, for conditional models, class accuracy of samples."""
    from flowdiff import metrics

    cache = Path(args.classifier) if args.classifier else folder / "classifier.safetensors"
    classifier = metrics.load_or_train_classifier(cache, real.x, real.y)
    norm = real.normalizer
    out: dict[str, float] = {}
    fake = model.sample(n, generator=gen).detach().cpu()
    out["classifier_frechet"] = metrics.classifier_frechet_distance(
        classifier, norm.forward(ref), norm.forward(fake)
    )
    if model.num_classes is not None:
        labels = torch.arange(n) % model.num_classes
        conditional = model.sample(n, y=labels, generator=gen).detach().cpu()
        out["class_accuracy"] = metrics.classifier_accuracy(
            classifier, norm.forward(conditional), labels
        )
    return out


def _plot_lims(x: torch.Tensor) -> tuple[tuple[float, float], tuple[float, float]]:
    lo, hi = x.min(0).values, x.max(0).values
    pad = 0.15 * (hi - lo)
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (
        float(lo[1] - pad[1]),
        float(hi[1] + pad[1]),
    )


def cmd_plot(args: argparse.Namespace) -> None:
    from flowdiff import viz

    model, _, folder = _load_run(args.run)
    out = Path(args.out)
    gen = _generator(args.seed)
    kind = args.kind
    if kind == "loss":
        viz.plot_loss(folder / "metrics.csv", out)
    elif kind == "samples":
        n = args.n or (64 if len(model.event_shape) >= 3 else 2000)
        x = model.sample(n, generator=gen, **_sample_options(model, steps=args.steps))
        viz.save_samples(x.detach().cpu(), out)
    else:
        plot_flow(model, kind, out, n=args.n, steps=args.steps, generator=gen)
    print(f"wrote {kind} -> {out}")


def plot_flow(
    model: Any,
    kind: str,
    out: Path,
    *,
    n: int | None,
    steps: int | None,
    generator: torch.Generator,
) -> Path:
    """Pictures of a model's flow: ``trajectories``, ``field``, ``density``, ``animation``."""
    from flowdiff import viz

    if not hasattr(model, "field"):
        raise CLIError(f"--kind {kind} needs a flow or diffusion model, not {model.kind!r}")
    drawable = {
        "field": ((2,),),
        "density": ((2,),),
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
    # Samples (in model units) set the plotting window; 20 midpoint steps are plenty for that.
    z = model.sample(2000, steps=20, generator=generator, denormalize=False)
    if kind == "density":
        reference = model.denormalize(z)
        return viz.plot_density(
            # An 80 x 80 grid with 10 RK4 steps: a picture, not a benchmark (seconds, not minutes).
            lambda x: model.log_prob(x, steps=steps or 10, solver="rk4"),
            out,
            lims=_plot_lims(reference),
            grid=80,
            data=reference,
        )
    # The field lives in the model's (normalised) coordinates; draw it there.
    field = model.field()
    return viz.plot_vector_field(
        lambda x, t: field(x, t).detach(), [0.0, 1 / 3, 2 / 3, 1.0], out, lims=_plot_lims(z)
    )


def cmd_demo(args: argparse.Namespace) -> None:
    """Train a flow on a built-in 2D set and draw samples, field, paths, density, animation."""
    out = Path(args.out)
    train_args = argparse.Namespace(
        config=None,
        data=args.data,
        model="flow",
        n_data=None,
        path=None,
        hidden=None,
        depth=None,
        steps=args.steps,
        batch_size=None,
        lr=None,
        seed=0,
        device="cpu",
        conditional=None,
        model_options=[],
        train_options=[],
        out=str(out),
        force=args.force,
        quiet=False,
    )
    config = _run_config(train_args)
    if config.data not in _toy_names():
        raise CLIError(
            f"the demo draws 2D pictures: --data must be one of {', '.join(_toy_names())}"
        )
    if (out / MODEL_FILE).is_file() and not args.force:
        print(f"{out} already holds a trained demo model; drawing its pictures (--force retrains)")
    else:
        cmd_train(train_args)
    model, _, _ = _load_run(str(out))
    gen = _generator(0)
    for kind, name in (
        ("field", "field.png"),
        ("trajectories", "trajectories.png"),
        ("density", "density.png"),
        ("animation", "flow.gif"),
    ):
        path = plot_flow(model, kind, out / name, n=None, steps=None, generator=gen)
        print(f"wrote {path}")


def cmd_simulate(args: argparse.Namespace) -> None:
    from flowdiff.viz import dynamics as figures

    out = Path(args.out)
    makers = {
        "linear": figures.plot_linear_ode,
        "euler": figures.plot_euler_vs_exact,
        "brownian": figures.plot_brownian_motion,
        "ou": figures.plot_ornstein_uhlenbeck,
        "langevin": figures.plot_langevin,
    }
    chosen = makers if args.example == "all" else {args.example: makers[args.example]}
    for name, make in chosen.items():
        path = make(out / f"{name}.png")
        print(f"wrote {path}")
