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
toys (``moons``, ``8gaussians``; 5000 training points, 1000 fresh test points) and the 8x8
``digits`` (``(1, 8, 8)`` scaled to [-1, 1]; 1297 training, 500 held-out images).

Reported per family: W2 (exact OT) and MMD^2 (RBF mixture) between samples and the test set,
each next to its floor (the same metric between two data samples of the test size); the test
NLL in nats per sample (exact for flow, diffusion's probability-flow ODE, CNF, RealNVP and the
Gaussian; an upper bound ``-L_K`` or ``-ELBO`` for VAE, latent flow and DDPM, marked ``<=``; a
continuous density of the normalised data, not the bits per dimension of the 8-bit pixels); the
training time, the time to draw the evaluation samples, and NFE, the network evaluations of one
sampling call (solver steps x stages for the ODE/SDE models, K = 1000 for DDPM, 1 for a GAN, a
VAE decoder or a RealNVP inverse pass). A PNG shows the samples of every family side by side.

Run: ``python -m benchmarks.bench_families [--quick]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from benchmarks.common import RESULTS_DIR, main, markdown_table
from flowdiff.data import load_data, sample_toy
from flowdiff.distributions import Gaussian
from flowdiff.families import CNF, DDPM, GAN, VAE, LatentFlow, RealNVP
from flowdiff.io import atomic_write
from flowdiff.metrics import floor, mmd, wasserstein2
from flowdiff.models import DiffusionModel, FlowModel, GenerativeModel

FAMILIES = ("flow", "diffusion", "cnf", "realnvp", "vae", "gan", "ddpm", "latent_flow")
BATCH, LR = 256, 1e-3
# The full run, and the quick one (seconds, for the test suite: one toy, tiny sizes, coarse
# likelihood solves). ``ode_nll``: solver options of the flow / diffusion / CNF likelihoods.
SETTINGS: dict[bool, dict[str, Any]] = {
    False: {
        "steps": 4000,
        "toys": ("moons", "8gaussians"),
        "n_train": 5000,
        "n_test": 1000,
        "digits_test": 500,
        "ddpm_steps": 1000,
        "ode_nll": {"solver": "dopri5"},
    },
    True: {
        "steps": 5,
        "toys": ("moons",),
        "n_train": 500,
        "n_test": 100,
        "digits_test": 100,
        "ddpm_steps": 50,
        "ode_nll": {"solver": "euler", "steps": 4},
    },
}
# One grey level of the digits (0..16 mapped onto [-1, 1]): the width of the uniform
# dequantisation noise that makes a density of the pixels finite (Theis et al., 2016).
DIGITS_BIN = 2.0 / 16


# ---------------------------------------------------------------------- data
def _toy(name: str, settings: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """Training set, test set and a second independent test-sized set (for the floors)."""
    data = load_data(name, n=settings["n_train"], generator=torch.Generator().manual_seed(0))
    n_test = settings["n_test"]
    fresh = [
        data.normalizer.forward(sample_toy(name, n_test, torch.Generator().manual_seed(seed)))
        for seed in (1, 2)
    ]
    return data.x, fresh[0], fresh[1]


def _digits(settings: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """Dequantised digits: every pixel plus uniform noise over its grey level, so constant
    pixels (the borders) do not give densities an infinite peak to climb."""
    generator = torch.Generator().manual_seed(0)
    x = load_data("digits").x
    x = x + (torch.rand(x.shape, generator=generator) - 0.5) * DIGITS_BIN
    order = torch.randperm(len(x), generator=generator)
    n_test = settings["digits_test"]
    test, train = x[order[:n_test]], x[order[n_test:]]
    return train, test, train[:n_test]  # the floor's second sample: training images


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


def _log_likelihood(
    model: GenerativeModel, x: Tensor, ode: dict[str, Any]
) -> tuple[Tensor | None, bool]:
    """Test log-likelihood ``(B,)`` and whether it is exact (``False``: a lower bound).

    ``ode``: solver options of the ODE likelihoods. Above 2 dimensions their divergence is
    Hutchinson's estimate (one Rademacher probe; unbiased for ``log p``, and the mean over the
    test set averages its noise out): the exact trace costs ``D`` backward passes per step.
    """
    gen = torch.Generator().manual_seed(3)
    if x[0].numel() > 2:
        ode = {**ode, "method": "hutchinson", "generator": gen}
    with torch.no_grad():
        if isinstance(model, VAE):
            return model.log_prob(x, n_samples=64, generator=gen), False
        if isinstance(model, LatentFlow):
            return model.log_prob(x, n_samples=8, generator=gen, solver=ode["solver"]), False
        if isinstance(model, DDPM):
            return model.elbo(x, generator=gen), False
        if isinstance(model, RealNVP):
            return model.log_prob(x), True
    if isinstance(model, GAN):
        return None, True
    return model.log_prob(x, **ode).detach(), True


# ---------------------------------------------------------------------- one data set
def _evaluate(samples: Tensor, test: Tensor) -> dict[str, float]:
    return {"w2": wasserstein2(samples, test), "mmd": mmd(samples, test)}


def _gaussian_row(train: Tensor, test: Tensor) -> dict[str, Any]:
    flat = train.flatten(1)
    # Constant pixels (the digits' borders) make the covariance singular: a small ridge.
    cov = torch.cov(flat.T) + 1e-3 * torch.eye(flat.shape[1])
    gaussian = Gaussian(flat.mean(0), cov)
    samples = gaussian.sample(len(test), generator=torch.Generator().manual_seed(4))
    return {
        **_evaluate(samples.reshape(-1, *test.shape[1:]), test),
        "nll": float(-gaussian.log_prob(test.flatten(1)).mean()),
        "exact": True,
    }


def _run_family(
    family: str, train: Tensor, test: Tensor, settings: dict[str, Any]
) -> tuple[dict[str, Any], Tensor]:
    torch.manual_seed(0)
    steps = settings["steps"]
    model = _build(family, tuple(train.shape[1:]), settings)
    betas = (0.5, 0.999) if family == "gan" else (0.9, 0.999)
    start = time.perf_counter()
    model.fit(train, steps=steps, batch_size=BATCH, lr=LR, betas=betas, log_every=10**9)
    train_s = time.perf_counter() - start
    model.eval()
    with _counting_calls(_sampled_networks(model)) as calls:
        start = time.perf_counter()
        samples = model.sample(len(test), generator=torch.Generator().manual_seed(5))
        sample_s = time.perf_counter() - start
    log_p, exact = _log_likelihood(model, test, settings["ode_nll"])
    row = {
        **_evaluate(samples, test),
        "nll": None if log_p is None else float(-log_p.mean()),
        "exact": exact,
        "train_s": train_s,
        "sample_s": sample_s,
        "nfe": calls[0],
    }
    return row, samples


def _table(rows: dict[str, dict[str, Any]], floors: dict[str, float]) -> str:
    def nll(row: dict[str, Any]) -> str:
        if row["nll"] is None:
            return "-"
        return f"{row['nll']:.3f}" if row["exact"] else f"<= {row['nll']:.3f}"

    def opt(row: dict[str, Any], key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "-"

    table = [["data vs data (floor)", floors["w2"], floors["mmd"], "-", "-", "-", "-"]]
    for name, row in rows.items():
        table.append(
            [
                name,
                row["w2"],
                row["mmd"],
                nll(row),
                opt(row, "train_s", ".1f"),
                opt(row, "sample_s", ".2f"),
                opt(row, "nfe", "d"),
            ]
        )
    header = ["model", "W2", "MMD^2", "NLL (nats)", "train s", "sample s", "NFE"]
    return markdown_table(header, table)


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
def run(quick: bool = False, out_dir: Path = RESULTS_DIR) -> dict[str, Any]:
    """Train and evaluate every family on every data set; tables and pictures in ``out_dir``."""
    settings = SETTINGS[quick]
    steps = settings["steps"]
    sets: dict[str, Callable[[], tuple[Tensor, Tensor, Tensor]]] = {
        **{name: (lambda name=name: _toy(name, settings)) for name in settings["toys"]},
        "digits": lambda: _digits(settings),
    }
    results: dict[str, Any] = {"steps": steps, "batch_size": BATCH, "lr": LR, "datasets": {}}
    markdown = [
        f"Budget: {steps} steps of batch {BATCH} per family (lr {LR}, EMA 0.999), 1 thread; "
        "metrics on held-out data in normalised units; NLL `<=` is an upper bound."
    ]
    pictures: dict[str, dict[str, Tensor]] = {}
    for name, load in sets.items():
        train, test, second = load()
        floors = {"w2": floor(wasserstein2, second, test), "mmd": floor(mmd, second, test)}
        rows = {"gaussian (baseline)": _gaussian_row(train, test)}
        pictures[name] = {"data": test}
        for family in FAMILIES:
            rows[family], pictures[name][family] = _run_family(family, train, test, settings)
            print(f"{name} {family}: {rows[family]}", flush=True)
        results["datasets"][name] = {"floor": floors, "models": rows}
        title = f"### {name} (train {len(train)}, test {len(test)})"
        markdown.append(f"{title}\n\n{_table(rows, floors)}")
    out_dir = Path(out_dir)
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
