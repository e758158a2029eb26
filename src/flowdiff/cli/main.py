"""``flowdiff``: train, sample, evaluate and draw generative models without writing Python.

Every command prints one line and exits with status 2 on bad input (unknown names, missing or
corrupt files, conflicting options); nothing is written over an existing run unless ``--force``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

# The figures of `flowdiff simulate` (one PNG each): the worked ODE/SDE examples, then the
# probability paths of a Gaussian mixture.
SIMULATE_EXAMPLES = (
    "linear", "euler", "brownian", "ou", "langevin",
    "conditional-path", "marginal-field", "conditional-vs-marginal",
)  # fmt: skip
EPILOG_TRAIN = """examples:
  flowdiff train --data moons --model flow --out runs/moons
  flowdiff train --data digits --model flow --steps 4000 --out runs/digits
  flowdiff train --data my_points.csv --model diffusion --path vp --out runs/mine
  flowdiff train --data digits --model realnvp --val-fraction 0.1 --keep-best --out runs/nvp
  flowdiff train --config runs/moons/config.yaml --out runs/moons-again
"""
EPILOG_SAMPLE = """examples:
  flowdiff sample runs/moons --n 2000 --solver midpoint --steps 8 --out moons.npy
  flowdiff sample runs/digits --n 64 --label 3 --guidance 3 --out threes.png
"""
EPILOG_EVALUATE = """examples:
  flowdiff evaluate runs/moons --data moons
  flowdiff evaluate runs/digits --data digits --n 500 --nll --out digits-metrics.json
  flowdiff evaluate runs/digits --inception-weights pt_inception-2015-12-05.pth --force

Sample metrics are computed in the model's normalised units (vectors standardised per feature,
images in [-1, 1]), each next to its floor (the same metric between two data samples).
"""
EPILOG_PLOT = """examples:
  flowdiff plot runs/moons --kind field --out field.png
  flowdiff plot runs/moons --kind animation --out flow.gif
  flowdiff plot runs/moons --kind density-animation --steps 8 --out density.gif
"""
EPILOG_DEMO = """examples:
  flowdiff demo                            # two moons, pictures in demo_out/
  flowdiff demo --data checkerboard --out demo_cb
  flowdiff demo --steps 4000 --out demo_out --force   # retrain over an existing demo
"""
EPILOG_SIMULATE = """examples:
  flowdiff simulate                       # every worked example
  flowdiff simulate --example langevin --out figures
  flowdiff simulate --example marginal-field   # the exact u_t(x) of a mixture at 5 times
"""


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus an error; we print one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"flowdiff {self.prog.split()[-1]}: error: {message}\n")
        sys.exit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _key_value(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flowdiff",
        description="Flow matching and diffusion models: train, sample, evaluate, draw.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "train", help="train a model on a data set", epilog=EPILOG_TRAIN, formatter_class=fmt
    )
    p.add_argument("--data", help="built-in data set name or path (.npy/.npz/.pt/.csv/IDX/folder)")
    p.add_argument(
        "--model", help="model family (flow, diffusion, cnf, realnvp, vae, gan, ddpm, ...)"
    )
    p.add_argument("--out", required=True, help="run folder (config, model, logs, pictures)")
    p.add_argument("--config", help="TOML/YAML settings file; flags override it")
    p.add_argument("--n-data", type=_positive_int, help="points drawn from a toy set / subset size")
    p.add_argument("--path", help="schedule of flow/diffusion models (linear, cosine, vp, ...)")
    p.add_argument("--hidden", type=_positive_int, help="hidden width of the network")
    p.add_argument("--depth", type=_positive_int, help="hidden layers of the network (MLPs)")
    p.add_argument("--steps", type=_positive_int, help="optimizer steps")
    p.add_argument("--batch-size", type=_positive_int, help="samples per step")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int, help="random seed (a run repeats bit for bit)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train")
    p.add_argument(
        "--dequantize",
        action=argparse.BooleanOptionalAction,
        help="train on data + uniform noise of one grid step (default: yes for integer-valued "
        "data such as images)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        help="hold out this fraction of the data; its loss is logged as val_loss",
    )
    p.add_argument(
        "--keep-best",
        action="store_true",
        help="end with the weights of the lowest val_loss (needs --val-fraction)",
    )
    p.add_argument(
        "--conditional",
        action=argparse.BooleanOptionalAction,
        help="train on the data's labels (default: yes for labelled images, no for toys)",
    )
    p.add_argument(
        "--set",
        dest="model_options",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="other model constructor argument (repeatable)",
    )
    p.add_argument(
        "--train-set",
        dest="train_options",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="other training option, e.g. ema_decay=0.99 (repeatable)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "sample", help="draw samples from a trained run", epilog=EPILOG_SAMPLE, formatter_class=fmt
    )
    p.add_argument("run", help="run folder written by `flowdiff train`")
    p.add_argument("--n", type=_positive_int, default=1000, help="number of samples")
    p.add_argument(
        "--solver", help="ODE/SDE solver (euler, midpoint, heun, rk4, dopri5, euler_maruyama, ...)"
    )
    p.add_argument("--steps", type=_positive_int, help="solver steps")
    p.add_argument("--sigma", type=float, help="diffusion coefficient: sample a flow as an SDE")
    p.add_argument("--label", type=int, help="class to sample (conditional models)")
    p.add_argument(
        "--guidance", type=float, help="classifier-free guidance weight w (needs --label)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", required=True, help=".npy/.pt/.csv for the tensor, .png for a picture")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    p = sub.add_parser(
        "evaluate",
        help="metrics of a trained run against data",
        epilog=EPILOG_EVALUATE,
        formatter_class=fmt,
    )
    p.add_argument("run", help="run folder written by `flowdiff train`")
    p.add_argument("--data", help="data to compare with (default: the run's training data)")
    p.add_argument("--n", type=_positive_int, default=2000, help="samples from model and data")
    p.add_argument("--steps", type=_positive_int, help="solver steps for sampling")
    p.add_argument("--nll", action="store_true", help="also the negative log-likelihood (slow)")
    p.add_argument("--classifier", help="cache file of the feature classifier (images)")
    p.add_argument(
        "--inception-weights",
        metavar="FILE",
        help="also FID with these Inception-v3 weights (images; needs torchmetrics; no download)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", help="JSON file for the metrics (default RUN/metrics.json)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    p = sub.add_parser(
        "plot", help="pictures of a trained run", epilog=EPILOG_PLOT, formatter_class=fmt
    )
    p.add_argument("run", help="run folder written by `flowdiff train`")
    p.add_argument(
        "--kind",
        required=True,
        choices=[
            "samples",
            "trajectories",
            "field",
            "density",
            "animation",
            "density-animation",
            "loss",
        ],
        help="density-animation: the model density p_t at 11 times from noise to data",
    )
    p.add_argument("--n", type=_positive_int, help="number of samples / paths")
    p.add_argument(
        "--steps",
        type=_positive_int,
        help="solver steps (density, density-animation: RK4 steps of the likelihood over [0, 1])",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", required=True, help="output file (.png; .gif for the animations)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    p = sub.add_parser(
        "demo",
        help="train a flow on built-in 2D data and draw everything (about a minute)",
        epilog=EPILOG_DEMO,
        formatter_class=fmt,
    )
    p.add_argument("--out", default="demo_out", help="folder for the demo's files")
    p.add_argument("--data", default="moons", help="built-in 2D data set")
    p.add_argument("--steps", type=_positive_int, default=2000, help="training steps")
    p.add_argument("--force", action="store_true", help="overwrite an existing demo run")

    p = sub.add_parser(
        "simulate",
        help="the worked ODE/SDE examples and probability paths of the notes, as pictures",
        epilog=EPILOG_SIMULATE,
        formatter_class=fmt,
    )
    p.add_argument(
        "--example",
        default="all",
        choices=["all", *SIMULATE_EXAMPLES],
        help="one figure (default all): the ODE/SDE examples, then the paths of a mixture",
    )
    p.add_argument("--out", default="simulate_out", help="folder for the pictures")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowdiff`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from flowdiff.cli import commands

    try:
        getattr(commands, f"cmd_{args.command}")(args)
    except KeyboardInterrupt:
        sys.stderr.write("flowdiff: interrupted\n")
        return 130
    except (ValueError, TypeError, OSError) as err:  # CLIError is a ValueError
        if os.environ.get("FLOWDIFF_DEBUG"):  # developers: the full traceback
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in message:
            message = f"{message}: {err.filename}"
        sys.stderr.write(f"flowdiff {args.command}: error: {message}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
