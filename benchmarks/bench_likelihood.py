"""Exact likelihood: held-out NLL of three model families against the true entropy, and the cost
of the divergence (exact trace vs Hutchinson) by dimension.

    python -m benchmarks.bench_likelihood           # full sizes (minutes)
    python -m benchmarks.bench_likelihood --quick   # tiny sizes (seconds)

1. NLL (nats, standardised units) on held-out points of two 2D sets whose density is known, for
   a flow-matching model (``FlowModel``), a CNF trained by maximum likelihood (``CNF``) and a
   coupling flow (``RealNVP``). ``gap`` is ``mean(log p_true - log p_model)`` on the same
   held-out points, a Monte Carlo estimate of ``KL(p_data || p_model) >= 0`` with its paired
   standard error. True entropies: ``gmm`` by Monte Carlo on exact samples of its mixture;
   ``checkerboard`` analytically, ``log(area) = log 32`` (uniform on 8 squares of side 2),
   minus ``sum log std`` of the standardisation in both cases.
2. Seconds per ``log_prob`` call (4 Euler steps, batch 32, an MLP field 3x256) with the exact
   divergence and with one Hutchinson probe, for D = 2, 64 and 784 (a ``(1, 28, 28)`` event),
   and the spread of the Hutchinson estimate around the exact value.

With the full sizes it also writes density heatmaps ``likelihood_<data>_<model>.png`` next to
the data into ``out_dir`` (default ``benchmarks/results``; ``flowdiff.viz.plot_density``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import main, markdown_table, median_time, output_dir
from flowdiff import nets
from flowdiff.data import Data, load_data, sample_toy, toy_mixture
from flowdiff.distributions import IsotropicGaussian
from flowdiff.families import RealNVP
from flowdiff.families.cnf import CNF
from flowdiff.metrics import nll
from flowdiff.models import FlowModel, GenerativeModel, likelihood

DATASETS = ("gmm", "checkerboard")
CHECKERBOARD_AREA = 32.0  # 8 squares of side 2 (flowdiff.data.toys)
DIMENSIONS = {2: (2,), 64: (64,), 784: (1, 28, 28)}

SIZES = {
    False: {"n_train": 20_000, "n_test": 5000, "n_entropy": 200_000, "fm": 5000, "cnf": 1500,
            "realnvp": 5000, "batch": 32, "repeats": 3, "figures": True},
    True: {"n_train": 1000, "n_test": 200, "n_entropy": 2000, "fm": 30, "cnf": 5,
           "realnvp": 30, "batch": 4, "repeats": 1, "figures": False},
}  # fmt: skip

# (size key, model, fit options, takes ODE options): every model sees the same data, batch
# size and seed; the ODE models' log_prob uses dopri5 (quick mode: RK4, 10 steps).
MODELS: dict[str, tuple[str, Callable[[], GenerativeModel], dict[str, Any], bool]] = {
    "flow matching": ("fm", lambda: FlowModel((2,)), {"lr": 2e-3, "ema_decay": 0.999}, True),
    "CNF (max. likelihood)": ("cnf", lambda: CNF((2,)), {"lr": 5e-3, "ema_decay": 0.99}, True),
    "RealNVP": ("realnvp", lambda: RealNVP((2,)), {"lr": 1e-3, "ema_decay": 0.999}, False),
}
QUICK_ODE = {"solver": "rk4", "steps": 10}


def true_log_prob(name: str, data: Data) -> Callable[[Tensor], Tensor]:
    """The exact log density of the standardised set ``name``: ``(B, 2) -> (B,)``.

    ``z = (x - mean) / std`` has ``log p_z(z) = log p_x(x) + sum log std``.
    """
    normalizer = data.normalizer
    log_det = float(normalizer.std.double().log().sum())

    def log_prob(z: Tensor) -> Tensor:
        x = normalizer.inverse(z.float()).double()
        if name == "gmm":
            return toy_mixture("gmm").log_prob(x) + log_det
        inside = sample_toy_support(x)
        value = torch.full((len(x),), -math.log(CHECKERBOARD_AREA) + log_det, dtype=x.dtype)
        return torch.where(inside, value, torch.full_like(value, -math.inf))

    return log_prob


def sample_toy_support(x: Tensor) -> Tensor:
    """Whether points ``(B, 2)`` lie on the checkerboard: squares with even column + row."""
    col, row = ((x + 4.0) // 2.0).long().unbind(1)
    on_board = ((x > -4.0) & (x < 4.0)).all(1)
    return on_board & ((col + row) % 2 == 0)


def true_entropy(name: str, data: Data, n: int, generator: torch.Generator) -> tuple[float, float]:
    """Entropy (nats) of the standardised set and its Monte Carlo standard error (0: exact)."""
    log_det = float(data.normalizer.std.double().log().sum())
    if name == "checkerboard":
        return math.log(CHECKERBOARD_AREA) - log_det, 0.0
    fresh = sample_toy(name, n, generator)
    log_p = toy_mixture(name).log_prob(fresh.double()) + log_det
    return -float(log_p.mean()), float(log_p.std()) / math.sqrt(n)


def nll_table(quick: bool, out_dir: Path) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    sizes = SIZES[quick]
    rows, records = [], []
    for name in DATASETS:
        gen = torch.Generator().manual_seed(0)
        data = load_data(name, n=sizes["n_train"] + sizes["n_test"], generator=gen)
        train, test = data.x[: sizes["n_train"]], data.x[sizes["n_train"] :]
        entropy, entropy_se = true_entropy(name, data, sizes["n_entropy"], gen)
        log_p_true = true_log_prob(name, data)(test)
        rows.append([name, "truth (entropy)", "", "", f"{entropy:.3f} ± {entropy_se:.3f}", ""])
        for label, (key, build, options, is_ode) in MODELS.items():
            torch.manual_seed(0)
            model = build()
            steps = sizes[key]
            eval_options = QUICK_ODE if quick and is_ode else {}
            start = time.perf_counter()
            model.fit(
                train, steps=steps, batch_size=512, lr_schedule="cosine",
                warmup_steps=steps // 20, device="cpu", progress=False, seed=0, **options,
            )  # fmt: skip
            train_s = time.perf_counter() - start
            start = time.perf_counter()
            log_p = model.log_prob(test, **eval_options).detach().double()
            eval_s = time.perf_counter() - start
            gap = log_p_true - log_p
            gap_se = float(gap.std()) / math.sqrt(len(gap))
            model_nll, nll_se = nll(log_p), float(log_p.std()) / math.sqrt(len(log_p))
            rows.append([
                name, label, steps, f"{train_s:.0f} / {eval_s:.1f}",
                f"{model_nll:.3f} ± {nll_se:.3f}", f"{float(gap.mean()):.3f} ± {gap_se:.3f}",
            ])  # fmt: skip
            records.append({
                "data": name, "model": label, "steps": steps, "train_s": train_s,
                "eval_s": eval_s, "nll": model_nll, "nll_se": nll_se, "entropy": entropy,
                "entropy_se": entropy_se, "gap": float(gap.mean()), "gap_se": gap_se,
            })  # fmt: skip
            if sizes["figures"]:
                from flowdiff.viz import plot_density

                slug = label.split(" ")[0].lower()
                plot_density(
                    lambda z, model=model: model.log_prob(z).detach(),
                    out_dir / f"likelihood_{name}_{slug}.png",
                    lims=(-3, 3), grid=100, data=test[:2000], title=f"{label} on {name}",
                )  # fmt: skip
    return rows, records


def timing_table(quick: bool) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    sizes = SIZES[quick]
    rows, records = [], []
    for dim, shape in DIMENSIONS.items():
        torch.manual_seed(0)
        field = nets.MLP(shape, hidden=256, depth=3)
        x = torch.randn(sizes["batch"], *shape, generator=torch.Generator().manual_seed(0))
        p_init = IsotropicGaussian(shape)

        def evaluate(method: str, x: Tensor = x, field: nets.MLP = field, p_init=p_init) -> Tensor:
            return likelihood.log_prob(
                field, x, p_init=p_init, solver="euler", steps=4, method=method,
                generator=torch.Generator().manual_seed(1),
            )  # fmt: skip

        exact_s = median_time(lambda: evaluate("exact"), repeats=sizes["repeats"])
        hutch_s = median_time(lambda: evaluate("hutchinson"), repeats=sizes["repeats"])
        spread = float((evaluate("hutchinson") - evaluate("exact")).std())
        rows.append([dim, exact_s, hutch_s, f"{exact_s / hutch_s:.1f}x", spread])
        records.append({"dim": dim, "exact_s": exact_s, "hutchinson_s": hutch_s,
                        "hutchinson_std": spread})  # fmt: skip
    return rows, records


def run(quick: bool = False, out_dir: Path | None = None) -> dict[str, Any]:
    """Both tables; the heatmaps (full sizes only) go to ``output_dir(out_dir, quick)``."""
    nll_rows, nll_records = nll_table(quick, output_dir(out_dir, quick))
    time_rows, time_records = timing_table(quick)
    markdown = "\n\n".join([
        "Held-out NLL (nats, standardised 2D data; train / eval seconds on 1 thread); "
        "gap = mean(log p_true - log p_model) on the same points, a KL estimate:",
        markdown_table(
            ["data", "model", "steps", "train / eval s", "NLL ± s.e.", "gap ± s.e."], nll_rows
        ),
        f"Seconds per log_prob call (batch {SIZES[quick]['batch']}, 4 Euler steps, MLP 3x256 "
        "field); Hutchinson: one Rademacher probe; spread: std of (Hutchinson - exact) log p "
        "over the batch:",
        markdown_table(["D", "exact s", "Hutchinson s", "speed-up", "spread (nats)"], time_rows),
    ])  # fmt: skip
    return {"markdown": markdown, "nll": nll_records, "timing": time_records, "quick": quick}


if __name__ == "__main__":
    main("likelihood", run)
