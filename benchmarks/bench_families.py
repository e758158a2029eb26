"""The family tree under one budget: every generative family trained the same way, same data.

Families: flow matching (``flow``), score-based diffusion (``diffusion``), CNF by maximum
likelihood (``cnf``), RealNVP, VAE, GAN, DDPM, and flow matching on VAE latents
(``latent_flow``); plus the trivial baseline, a single Gaussian fitted to the training set.

Budget, the same for every family: ``STEPS`` optimizer steps (one step = every phase of the
family: a GAN's discriminator and generator steps count as one) of batch 256, AdamW at lr 1e-3
(GAN: betas 0.5, 0.999), EMA 0.999, 1 thread; ``latent_flow`` spends half of its steps on its
VAE and half on its flow. Networks are MLPs (hidden width 128 on 2D, 256 on the digits) except
the CNF, whose tanh MLP (64 wide) is what its maximum-likelihood training can afford.

Data, all in the normalised units every model trains in (``flowdiff.data.load_data``): two 2D
toys (``moons``, ``8gaussians``; 5000 training points, 1000 fresh test points, and 1000 more for
the floors) and the 8x8 ``digits`` (``(1, 8, 8)``, grey levels 0..16 scaled to [-1, 1]; 300
held-out test images, 300 more held out for the floors, 120 for validation, the other 1077 for
training).

Early stopping on the digits, where 1077 images are few enough to overfit: every family with one
loss (all but the GAN and the latent flow, whose losses are no held-out measure) has its loss on
the 120 validation images measured every ``VAL_EVERY`` steps and ends with its (EMA) weights of
the lowest one (``fit(..., val_data=..., keep_best=True)``); the step is ``best_step`` in the
JSON. The test sets are never looked at during training.

The digits are quantised (17 grey levels), so every model is trained on *uniformly dequantised*
images (``flowdiff.data.Dequantized``: each training image plus fresh ``U(-w/2, w/2)`` noise, ``w``
one grey level, at every draw) and the held-out images are dequantised once with a fixed seed.
A fixed training draw would let the likelihood models peak on the 1197 noisy points (the old
table's RealNVP NLL of 4491 nats). The digits' NLL is then the dequantisation bound on the
*discrete* NLL of the grey levels, ``-E_u[log p(x + u)] - D log w`` in nats per image and in bits
per dimension (``flowdiff.data.discrete_log_likelihood_bound``): unit-free, comparable with any
model of the same 17-level images.

Reported per family: W2 (exact OT) and MMD^2 (RBF mixture) between samples and the test set,
each next to its floor (the same metric between the test set and the second held-out set, of the
same size; never the training set, which the models were fitted to); the test NLL in nats per
sample (exact for flow, CNF, RealNVP and the Gaussian; ``~`` for diffusion: the exact density of
its probability-flow ODE run over ``[t_eps, 1 - t_eps]`` from ``N(0, I)`` at ``t_eps = 0.01``, the
interval its sampler uses, which is not quite the model's ``p_1``; an upper bound ``-L_K`` or
``-ELBO`` for VAE, latent flow and DDPM, marked ``<=``; on the 2D sets a density of the
standardised data); the training time, the time to draw the evaluation samples, and NFE, the
network evaluations of one sampling call (solver steps x stages for the ODE/SDE models, K = 1000
for DDPM, 1 for a GAN, a VAE decoder or a RealNVP inverse pass). On the digits the NLL of as
many (dequantised) training images is recorded too (``train_nll`` in the JSON), which tells
overfitting from underfitting. Under each table, the families that do not beat the Gaussian
baseline are listed with what the results tell of the reason (over- or under-dispersed samples,
over- or under-fitting). A PNG shows the samples of every family
side by side.

Run: ``python -m benchmarks.bench_families [--quick]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from benchmarks.common import main, markdown_table, output_dir
from flowdiff.data import (
    Dequantized,
    dequantize,
    discrete_log_likelihood_bound,
    load_data,
    sample_toy,
)
from flowdiff.distributions import Gaussian
from flowdiff.families import CNF, DDPM, GAN, VAE, LatentFlow, RealNVP
from flowdiff.io import atomic_write
from flowdiff.metrics import bits_per_dim, floor, mmd, nll, wasserstein2
from flowdiff.models import DiffusionModel, FlowModel, GenerativeModel

FAMILIES = ("flow", "diffusion", "cnf", "realnvp", "vae", "gan", "ddpm", "latent_flow")
BASELINE = "gaussian (baseline)"
BATCH, LR = 256, 1e-3
# Steps between two validation losses (digits: early stopping, see the module notes).
VAL_EVERY = 250
# The full run, and the quick one (seconds, for the test suite: one toy, tiny sizes, coarse
# likelihood solves). ``ode_nll``: solver options of the flow / diffusion / CNF likelihoods.
SETTINGS: dict[bool, dict[str, Any]] = {
    False: {
        "steps": 4000,
        "toys": ("moons", "8gaussians"),
        "n_train": 5000,
        "n_test": 1000,
        "digits_test": 300,
        "digits_val": 120,
        "ddpm_steps": 1000,
        "ode_nll": {"solver": "dopri5"},
    },
    True: {
        "steps": 5,
        "toys": ("moons",),
        "n_train": 500,
        "n_test": 100,
        "digits_test": 100,
        "digits_val": 20,
        "ddpm_steps": 50,
        "ode_nll": {"solver": "euler", "steps": 4},
    },
}
# One grey level of the digits (0..16 mapped onto [-1, 1]): the grid step, the width of the
# uniform dequantisation noise.
DIGITS_BIN = 2.0 / 16
# What each family's NLL figure is (module notes): the exact NLL of the model (the default),
# an upper bound on it, or the exact NLL of the probability-flow ODE run over [t_eps, 1 - t_eps].
NLL_KIND = {"diffusion": "pf_ode", "vae": "bound", "ddpm": "bound", "latent_flow": "bound"}
NLL_MARK = {"exact": "", "pf_ode": "~ ", "bound": "<= "}


# ---------------------------------------------------------------------- data
@dataclass(frozen=True)
class Split:
    """One data set of the benchmark, in the normalised units the models train in.

    Attributes:
        train: ``(N, *shape)`` what the models are fitted to (the digits' grey levels as they
            are; :meth:`fit_data` dequantises them afresh at every draw).
        test: ``(n, *shape)`` held-out data, the reference of every metric.
        second: ``(n, *shape)`` another held-out set, disjoint from both, for the floors.
        bin_width: grid step of quantised data (the digits), ``None`` for continuous data.
        val: held-out data for early stopping, disjoint from the others (``None``: none).
    """

    train: Tensor
    test: Tensor
    second: Tensor
    bin_width: float | None = None
    val: Tensor | None = None

    def fit_data(self) -> Tensor | Dequantized:
        """The training data as ``model.fit`` takes it."""
        if self.bin_width is None:
            return self.train
        return Dequantized(self.train, self.bin_width, seed=0)

    def train_probe(self) -> Tensor | None:
        """Quantised data: the first test-sized slice of the training images, dequantised once,
        to compare the NLL of seen and unseen images (overfitting); ``None`` otherwise."""
        if self.bin_width is None:
            return None
        gen = torch.Generator().manual_seed(6)
        return dequantize(self.train[: len(self.test)], self.bin_width, generator=gen)


def _toy(name: str, settings: dict[str, Any]) -> Split:
    """Training set, and two fresh test-sized sets."""
    data = load_data(name, n=settings["n_train"], generator=torch.Generator().manual_seed(0))
    held_out = [
        data.normalizer.forward(
            sample_toy(name, settings["n_test"], torch.Generator().manual_seed(seed))
        )
        for seed in (1, 2)
    ]
    return Split(data.x, *held_out)


def _digits(settings: dict[str, Any]) -> Split:
    """The digits in random order: a test set, a floor set and a validation set, each
    dequantised once with its own seed, and the rest for training."""
    x = load_data("digits").x
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n, n_val = settings["digits_test"], settings["digits_val"]
    test, second, val = (
        dequantize(x[order[start : start + size]], DIGITS_BIN, generator=gen)
        for start, size, gen in zip(
            (0, n, 2 * n),
            (n, n, n_val),
            (torch.Generator().manual_seed(s) for s in (1, 2, 7)),
            strict=True,
        )
    )
    return Split(x[order[2 * n + n_val :]], test, second, DIGITS_BIN, val)


# ---------------------------------------------------------------------- models
def _mlp(shape: tuple[int, ...], width: int) -> dict[str, Any]:
    return {"type": "mlp", "event_shape": list(shape), "hidden": width, "depth": 3}


def _build(family: str, shape: tuple[int, ...], settings: dict[str, Any]) -> GenerativeModel:
    width = 128 if len(shape) == 1 else 256
    latent = 2 if len(shape) == 1 else 8
    if family == "flow":
        return FlowModel(shape, net=_mlp(shape, width))
    if family == "diffusion":
        return DiffusionModel(shape, net=_mlp(shape, width))
    if family == "cnf":
        return CNF(shape)
    if family == "realnvp":
        return RealNVP(shape, n_layers=8, hidden=width)
    if family == "vae":
        return VAE(shape, latent_dim=latent, hidden=width)
    if family == "gan":
        return GAN(shape, latent_dim=latent, hidden=width)
    if family == "ddpm":
        return DDPM(shape, num_steps=settings["ddpm_steps"], net=_mlp(shape, width))
    if family == "latent_flow":
        flow = FlowModel((latent,), net=_mlp((latent,), width))
        return LatentFlow(shape, latent_dim=latent, flow=flow, vae_steps=settings["steps"] // 2)
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")


def _sampled_networks(model: GenerativeModel) -> list[nn.Module]:
    """The networks whose calls count as NFE when ``model`` samples."""
    if isinstance(model, GAN):
        return [model.generator]
    if isinstance(model, VAE):
        return [model.decoder]
    if isinstance(model, RealNVP):
        return [model.couplings[0]]  # one call per inverse pass through all couplings
    if isinstance(model, LatentFlow):
        return [model.flow.net, model.vae.decoder]
    return [model.net]


@contextmanager
def _counting_calls(modules: list[nn.Module]) -> Iterator[list[int]]:
    """Count forward calls of ``modules`` (one counter for all) while the context is open."""
    count = [0]

    def hook(*_: object) -> None:
        count[0] += 1

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def _log_likelihood(model: GenerativeModel, x: Tensor, ode: dict[str, Any]) -> Tensor | None:
    """Test log-likelihood ``(B,)`` (or the family's lower bound on it, :data:`NLL_KIND`);
    ``None`` for a GAN.

    ``ode``: solver options of the ODE likelihoods. Above 2 dimensions their divergence is
    Hutchinson's estimate (one Rademacher probe; unbiased for ``log p``, and the mean over the
    test set averages its noise out): the exact trace costs ``D`` backward passes per step.
    """
    gen = torch.Generator().manual_seed(3)
    if isinstance(model, GAN):
        return None
    if isinstance(model, (FlowModel, DiffusionModel, CNF)):
        options = dict(ode)
        if x[0].numel() > 2:
            options.update(method="hutchinson", generator=gen)
    elif isinstance(model, VAE):
        options = {"n_samples": 64, "generator": gen}
    elif isinstance(model, LatentFlow):
        # the latent flow's own ODE, in latent_dim dimensions: exact divergence
        options = {"n_samples": 8, "generator": gen, **ode}
    elif isinstance(model, DDPM):
        options = {"generator": gen}
    else:
        options = {}
    with torch.no_grad():  # the ODE likelihoods take their Jacobians under enable_grad
        return model.log_prob(x, **options).detach()


# ---------------------------------------------------------------------- one data set
def _evaluate(samples: Tensor, test: Tensor) -> dict[str, float]:
    """W2, MMD^2 and ``spread``: the samples' mean per-coordinate standard deviation over the
    test set's (1 = as spread out as the data; a W2 shortfall with spread far from 1 is over-
    or under-dispersion)."""
    spread = samples.flatten(1).std(0).mean() / test.flatten(1).std(0).mean()
    return {"w2": wasserstein2(samples, test), "mmd": mmd(samples, test), "spread": float(spread)}


def _nll(log_p: Tensor | None, split: Split) -> dict[str, float | None]:
    """``{"nll": nats per sample}``: of the continuous data, or for quantised data the
    dequantisation bound on the discrete NLL, then with its ``"bits_per_dim"``."""
    if log_p is None:
        return {"nll": None}
    if split.bin_width is None:
        return {"nll": nll(log_p)}
    shape = tuple(split.test.shape[1:])
    bound = discrete_log_likelihood_bound(log_p, split.bin_width, split.test[0].numel())
    return {
        "nll": nll(bound),
        "bits_per_dim": bits_per_dim(log_p, shape, data_scale=split.bin_width),
    }


def _gaussian_row(split: Split) -> dict[str, Any]:
    """The baseline: the Gaussian with the mean and covariance of the training distribution."""
    flat = split.train.flatten(1)
    cov = torch.cov(flat.T)
    if split.bin_width is not None:
        # The dequantised training images x + u: the noise adds Var(u) = w^2 / 12 per pixel
        # (which also makes the constant border pixels' covariance non-singular).
        cov = cov + split.bin_width**2 / 12 * torch.eye(flat.shape[1])
    gaussian = Gaussian(flat.mean(0), cov)
    samples = gaussian.sample(len(split.test), generator=torch.Generator().manual_seed(4))
    return {
        **_evaluate(samples.reshape(-1, *split.test.shape[1:]), split.test),
        **_nll(gaussian.log_prob(split.test.flatten(1)), split),
        "nll_kind": "exact",
    }


def _run_family(
    family: str, split: Split, settings: dict[str, Any]
) -> tuple[dict[str, Any], Tensor]:
    torch.manual_seed(0)
    steps, test = settings["steps"], split.test
    model = _build(family, tuple(test.shape[1:]), settings)
    betas = (0.5, 0.999) if family == "gan" else (0.9, 0.999)
    options: dict[str, Any] = {"log_every": 10**9}
    if split.val is not None and len(model.optim_groups()) == 1:
        options = {"val_data": split.val, "keep_best": True, "log_every": min(VAL_EVERY, steps)}
    start = time.perf_counter()
    result = model.fit(
        split.fit_data(), steps=steps, batch_size=BATCH, lr=LR, betas=betas, **options
    )
    train_s = time.perf_counter() - start
    model.eval()
    with _counting_calls(_sampled_networks(model)) as calls:
        start = time.perf_counter()
        samples = model.sample(len(test), generator=torch.Generator().manual_seed(5))
        sample_s = time.perf_counter() - start
    log_p = _log_likelihood(model, test, settings["ode_nll"])
    row = {
        **_evaluate(samples, test),
        **_nll(log_p, split),
        "nll_kind": None if log_p is None else NLL_KIND.get(family, "exact"),
        "train_s": train_s,
        "sample_s": sample_s,
        "nfe": calls[0],
    }
    if result.best is not None:
        row["best_step"] = result.best["step"]
    probe = split.train_probe()
    if probe is not None and log_p is not None:
        row["train_nll"] = _nll(_log_likelihood(model, probe, settings["ode_nll"]), split)["nll"]
    return row, samples


def _shortfalls(rows: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """The metrics (``"w2"``, ``"nll"``) on which each family does not beat the baseline."""
    base = rows[BASELINE]
    found = {}
    for family in FAMILIES:
        row = rows[family]
        worse = [k for k in ("w2", "nll") if row[k] is not None and not row[k] < base[k]]
        if worse:
            found[family] = worse
    return found


def _table(rows: dict[str, dict[str, Any]], floors: dict[str, float], bits: bool) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        if row.get(key) is None:
            return "-"
        return f"{NLL_MARK[row['nll_kind']]}{row[key]:.3f}"

    def opt(row: dict[str, Any], key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "-"

    likelihood = ["nll", "bits_per_dim"] if bits else ["nll"]
    table = [["data vs data (floor)", floors["w2"], floors["mmd"], *("-" for _ in likelihood)]]
    table[0] += ["-", "-", "-"]
    for name, row in rows.items():
        table.append(
            [
                name,
                row["w2"],
                row["mmd"],
                *(cell(row, key) for key in likelihood),
                opt(row, "train_s", ".1f"),
                opt(row, "sample_s", ".2f"),
                opt(row, "nfe", "d"),
            ]
        )
    nll_header = ["NLL bound (nats)", "bits/dim"] if bits else ["NLL (nats)"]
    header = ["model", "W2", "MMD^2", *nll_header, "train s", "sample s", "NFE"]
    return markdown_table(header, table)


def _dispersion(row: dict[str, Any], metrics: list[str]) -> str | None:
    """A note when a family's W2 shortfall comes with samples 10% more or less spread out
    than the data."""
    if "w2" not in metrics or abs(row["spread"] - 1) < 0.1:
        return None
    return f"its samples are {row['spread']:.2f}x as spread out as the data"


def _fit_note(row: dict[str, Any], base: dict[str, Any]) -> str | None:
    """Training against held-out NLL (quantised data only: ``train_nll``), ``overfits`` when
    only the training images are fitted better than by the Gaussian."""
    train_nll = row.get("train_nll")
    if train_nll is None:
        return None
    verdict = "it overfits: " if train_nll < base["nll"] <= row["nll"] else ""
    return (
        f"{verdict}NLL {train_nll:.1f} on (dequantised) training images, {row['nll']:.1f} on "
        "held-out ones"
    )


def _shortfall_notes(shortfalls: dict[str, list[str]], rows: dict[str, dict[str, Any]]) -> str:
    if not shortfalls:
        return "Every family beats the Gaussian baseline on W2 and, where it has one, on NLL."
    lines = ["Not better than the Gaussian baseline:"]
    for family, metrics in shortfalls.items():
        row = rows[family]
        what = " and ".join("NLL" if m == "nll" else "W2" for m in metrics)
        if "nll" in metrics and row["nll_kind"] == "bound":
            what += " (an upper bound on its NLL)"
        reasons = [
            _dispersion(row, metrics),
            _fit_note(row, rows[BASELINE]),
        ]
        lines.append(f"- {family}: {'; '.join([what, *filter(None, reasons)])}.")
    return "\n".join(lines)


# ---------------------------------------------------------------------- pictures
def _scatter_figure(samples: dict[str, dict[str, Tensor]], path: Path) -> Path:
    """Rows: the 2D data sets; columns: the test data, then each family's samples."""
    from flowdiff.viz.figures import new_figure, save_figure, square_lims, style_plane
    from flowdiff.viz.samples import draw_points

    names = list(samples)
    columns = list(next(iter(samples.values())))
    fig, axes = new_figure(len(names), len(columns))
    for i, name in enumerate(names):
        lims = square_lims(samples[name]["data"].numpy())
        for j, column in enumerate(columns):
            points = samples[name][column].numpy()
            draw_points(axes[i, j], points, color="0.3" if column == "data" else f"C{j % 10}")
            style_plane(axes[i, j], lims, f"{name}: {column}" if j == 0 else column)
    return save_figure(fig, path)


def _digit_strip(samples: dict[str, Tensor], path: Path) -> Path:
    """One 4x4 grid of 16 images per model, captioned, side by side."""
    from flowdiff.viz.figures import caption
    from flowdiff.viz.samples import grid_array

    tiles = [
        caption(grid_array(x[:16].clamp(-1, 1).numpy(), 4, (-1.0, 1.0)), name)
        for name, x in samples.items()
    ]
    height = max(t.shape[0] for t in tiles)
    gap = np.full((height, 8, 3), 255, np.uint8)
    padded = [
        np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0)), constant_values=255) for t in tiles
    ]
    strip = np.concatenate([part for t in padded for part in (t, gap)][:-1], axis=1)
    with atomic_write(path) as tmp:
        Image.fromarray(strip).save(tmp, format="PNG")
    return path


# ---------------------------------------------------------------------- entry point
def run(quick: bool = False, out_dir: Path | None = None) -> dict[str, Any]:
    """Train and evaluate every family on every data set; tables and pictures in ``out_dir``
    (``benchmarks.common.output_dir``: ``benchmarks/results``, or a temporary folder when
    quick)."""
    out_dir = output_dir(out_dir, quick)
    settings = SETTINGS[quick]
    steps = settings["steps"]
    sets: dict[str, Callable[[], Split]] = {
        **{name: (lambda name=name: _toy(name, settings)) for name in settings["toys"]},
        "digits": lambda: _digits(settings),
    }
    results: dict[str, Any] = {"steps": steps, "batch_size": BATCH, "lr": LR, "datasets": {}}
    markdown = [
        f"Budget: {steps} steps of batch {BATCH} per family (lr {LR}, EMA 0.999), 1 thread; "
        "W2 and MMD^2 on held-out data in normalised units, each floor between two held-out "
        "sets. NLL: `<=` an upper bound (-ELBO, -L_K); `~` diffusion's probability-flow ODE "
        "over [0.01, 0.99] from N(0, I) at t = 0.01; unmarked: exact. 2D: nats of the "
        "standardised data. Digits: trained on images dequantised afresh at every draw; the "
        "NLL is the dequantisation bound on the discrete NLL of the 17 grey levels "
        "(-E log p(x + u) - D log w), in nats per image and bits per dimension; every family "
        f"with one loss keeps its weights of the lowest loss on {settings['digits_val']} "
        f"validation images (checked every {VAL_EVERY} steps; early stopping)."
    ]
    pictures: dict[str, dict[str, Tensor]] = {}
    for name, load in sets.items():
        split = load()
        floors = {
            "w2": floor(wasserstein2, split.second, split.test),
            "mmd": floor(mmd, split.second, split.test),
        }
        rows = {BASELINE: _gaussian_row(split)}
        pictures[name] = {"data": split.test}
        for family in FAMILIES:
            rows[family], pictures[name][family] = _run_family(family, split, settings)
            print(f"{name} {family}: {rows[family]}", flush=True)
        shortfalls = _shortfalls(rows)
        results["datasets"][name] = {"floor": floors, "models": rows, "shortfalls": shortfalls}
        title = f"### {name} (train {len(split.train)}, test {len(split.test)})"
        table = _table(rows, floors, bits=split.bin_width is not None)
        markdown.append(f"{title}\n\n{table}\n\n{_shortfall_notes(shortfalls, rows)}")
    figures = [
        _scatter_figure({n: pictures[n] for n in settings["toys"]}, out_dir / "families_2d.png"),
        _digit_strip(pictures["digits"], out_dir / "families_digits.png"),
    ]
    results["figures"] = [f.name for f in figures]
    markdown.append("![2D samples](families_2d.png)\n\n![digits](families_digits.png)")
    results["markdown"] = "\n\n".join(markdown)
    return results


if __name__ == "__main__":
    main("families", run)
