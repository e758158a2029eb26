"""Sample quality against network evaluations (NFE), and classifier-free guidance on digits.

**2D (checkerboard, two moons).** Four models are trained with the same 3x128 ``flowdiff.nets``
MLP, the same initial weights, data, steps, optimiser, learning-rate schedule, EMA and seed (all
through ``flowdiff.train.fit``); only the library that defines the path and the loss differs:

- ``flowdiff`` flow: :class:`~flowdiff.models.FlowModel` (linear path, velocity);
- ``flowdiff`` diffusion: :class:`~flowdiff.models.DiffusionModel` (linear path, noise);
- ``flow_matching`` (facebookresearch): ``AffineProbPath(CondOTScheduler())`` and the MSE on its
  ``dx_t``, sampled with its ``ODESolver``;
- ``torchcfm``: ``ConditionalFlowMatcher(sigma=0)``, sampled with ``torchdiffeq.odeint`` as in
  its examples.

Each cell is ``W2 / floor``: the exact 2-Wasserstein distance (``flowdiff.metrics.wasserstein2``)
between ``N`` samples and ``N`` fresh data points, averaged over ``K`` pairs, divided by the same
average between two independent data samples (the sample-size floor: 1.0 is as good as data).
The fresh data are random subsets of a large draw, hence i.i.d. (scikit-learn's moons are evenly
spaced in angle within one draw). NFE is counted from the network calls; a cell is empty when
the solver cannot use exactly that many (midpoint needs an even NFE, RK4 a multiple of 4).
``dopri5`` adapts its steps (rtol = atol = 1e-5); its NFE is reported beside its W2.

**Digits.** A class-conditional U-Net flow model on scikit-learn's 8x8 digits (at most 10 minutes
of CPU), sampled with classifier-free guidance ``u~ = (1 - w) u(x | null) + w u(x | y)`` for
``w in (0, 1, 2, 3, 5)``; accuracy is the fraction of samples that a CNN trained on 80% of the
real digits (its accuracy on the other 20% is printed) assigns to the requested class. A grid of
guided samples (row = class) is saved as ``sampling_digits.png``.

Run: ``python -m benchmarks.bench_sampling [--quick]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchdiffeq
from flow_matching.path import AffineProbPath
from flow_matching.path.scheduler import CondOTScheduler
from flow_matching.solver import ODESolver
from flow_matching.utils import ModelWrapper
from torch import Tensor, nn
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

from benchmarks.common import RESULTS_DIR, main, markdown_table
from flowdiff import nets
from flowdiff.data import Data, load_data, sample_toy
from flowdiff.metrics import wasserstein2
from flowdiff.metrics.classifier import classifier_accuracy, train_classifier
from flowdiff.models import DiffusionModel, FlowModel, GenerativeModel
from flowdiff.utils import randn

NFES = (1, 2, 4, 8, 16, 100)
# flowdiff's ODE solvers and torchdiffeq's equivalents, with their network calls per step.
SOLVERS = {
    "euler": ("euler", 1),
    "midpoint": ("midpoint", 2),
    "heun": ("heun2", 2),
    "rk4": ("rk4", 4),
}
GUIDANCE = (0.0, 1.0, 2.0, 3.0, 5.0)
SETTINGS: dict[bool, dict[str, Any]] = {
    False: {
        "toys": ("checkerboard", "moons"),
        "n_data": 20000,
        "n": 1000,
        "k": 8,
        "train": {"steps": 3000, "batch_size": 1024, "lr": 5e-3, "warmup_steps": 100},
        "digits_net": {"base_channels": 32, "channel_mults": [1, 2], "num_res_blocks": 1},
        "digits_train": {"steps": 2500, "batch_size": 128, "lr": 2e-3, "warmup_steps": 100},
        "digits_per_class": 50,
        "digits_steps": 10,
    },
    True: {
        "toys": ("checkerboard", "moons"),
        "n_data": 2000,
        "n": 100,
        "k": 2,
        "train": {"steps": 30, "batch_size": 256, "lr": 5e-3, "warmup_steps": 5},
        "digits_net": {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1},
        "digits_train": {"steps": 5, "batch_size": 64, "lr": 2e-3, "warmup_steps": 1},
        "digits_per_class": 2,
        "digits_steps": 2,
    },
}
COMMON_TRAIN = {
    "lr_schedule": "cosine",
    "ema_decay": 0.999,
    "seed": 0,
    "progress": False,
}


# ---------------------------------------------------------------------- the reference libraries
class CountingNet(nn.Module):
    """The network ``net(x, t)``, counting its calls (the NFE of a foreign solver)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.net(x, t)


class ReferenceFlow(GenerativeModel):
    """A velocity MLP regressed on another library's conditional path, trained by flowdiff's
    loop so that the optimiser, schedule, EMA and batches are exactly those of ``FlowModel``.

    Args:
        net: the ``flowdiff.nets.MLP`` (same initial weights as the flowdiff models).
        conditional_flow: ``(x0, x1, t) -> (x_t, u_t)`` of the library's CondOT path.
    """

    def __init__(
        self, net: nn.Module, conditional_flow: Callable[[Tensor, Tensor, Tensor], tuple]
    ) -> None:
        super().__init__(2)
        self.net, self.conditional_flow = net, conditional_flow

    def loss(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        phase: str = "model",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        x0 = randn(x.shape, generator=generator)
        t = torch.rand(x.shape[0], generator=generator)
        x_t, u_t = self.conditional_flow(x0, x, t)
        return ((self.net(x_t, t) - u_t) ** 2).mean(dim=1)


def flow_matching_pair(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    sample = AffineProbPath(CondOTScheduler()).sample(x_0=x0, x_1=x1, t=t)
    return sample.x_t, sample.dx_t


def torchcfm_pair(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    _, x_t, u_t = ConditionalFlowMatcher(sigma=0.0).sample_location_and_conditional_flow(
        x0, x1, t=t
    )
    return x_t, u_t


class _FlowMatchingVelocity(ModelWrapper):
    def forward(self, x: Tensor, t: Tensor, **extras: Any) -> Tensor:
        return self.model(x, t)


def flow_matching_sampler(net: CountingNet) -> Callable[[Tensor, str, int | None], Tensor]:
    solver = ODESolver(velocity_model=_FlowMatchingVelocity(net))

    def sample(x0: Tensor, method: str, steps: int | None) -> Tensor:
        grid = torch.tensor([0.0, 1.0]) if steps is None else torch.linspace(0, 1, steps + 1)
        return solver.sample(x_init=x0, step_size=None, method=method, time_grid=grid)

    return sample


def torchcfm_sampler(net: CountingNet) -> Callable[[Tensor, str, int | None], Tensor]:
    def sample(x0: Tensor, method: str, steps: int | None) -> Tensor:
        grid = torch.tensor([0.0, 1.0]) if steps is None else torch.linspace(0, 1, steps + 1)
        with torch.no_grad():
            # the tolerances flow_matching's ODESolver and flowdiff use for dopri5
            solution = torchdiffeq.odeint(
                lambda t, x: net(x, t), x0, grid, method=method, rtol=1e-5, atol=1e-5
            )
            return solution[-1]

    return sample


# ---------------------------------------------------------------------- W2 against the floor
class Judge:
    """``W2 / floor`` of ``k`` samples of ``n`` points against fresh i.i.d. data."""

    def __init__(self, name: str, n: int, k: int) -> None:
        pool = sample_toy(name, 30 * n * k, torch.Generator().manual_seed(1))
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(2))
        fresh = pool[order[: 3 * n * k]].view(3 * k, n, 2)
        self.n, self.k, self.reference = n, k, fresh[2 * k :]
        self.floor = sum(wasserstein2(fresh[i], fresh[k + i]) for i in range(k)) / k

    def __call__(self, x: Tensor) -> float:
        pairs = zip(x.view(self.k, self.n, 2), self.reference)
        return sum(wasserstein2(a, b) for a, b in pairs) / self.k / self.floor


def _cell(ratio: float, nfe: int | None = None) -> str:
    return f"{ratio:.3g}" if nfe is None else f"{ratio:.3g} ({nfe})"


def _fixed_step_row(
    label: str, solver: str, stages: int, evaluate: Callable[[int], float]
) -> list[str]:
    """``[label, solver, W2/floor at each NFE..., ""]``; ``evaluate(steps) -> W2/floor``."""
    cells = [_cell(evaluate(nfe // stages)) if nfe % stages == 0 else "" for nfe in NFES]
    return [label, solver, *cells, ""]


def _adaptive_row(label: str, ratio: float, nfe: int) -> list[str]:
    return [label, "dopri5", *([""] * len(NFES)), _cell(ratio, nfe)]


# ---------------------------------------------------------------------- 2D
def _train(model: GenerativeModel, data: Data, settings: dict[str, Any]) -> float:
    start = time.process_time()
    model.fit(data, **COMMON_TRAIN, **settings["train"])
    return time.process_time() - start


def _mlp() -> nets.MLP:
    torch.manual_seed(0)  # the same initial weights for every library
    return nets.MLP(2, hidden=128, depth=3)


def _toy_rows(name: str, settings: dict[str, Any]) -> tuple[list[list[str]], dict[str, Any]]:
    """Train the four models on ``name`` and measure ``W2 / floor`` for every sampler."""
    data = load_data(name, n=settings["n_data"], generator=torch.Generator().manual_seed(0))
    judge = Judge(name, settings["n"], settings["k"])
    count = judge.n * judge.k
    flow, diffusion = FlowModel(2, net=_mlp()), DiffusionModel(2, net=_mlp())
    references = {
        "flow_matching": (ReferenceFlow(_mlp(), flow_matching_pair), flow_matching_sampler),
        "torchcfm": (ReferenceFlow(_mlp(), torchcfm_pair), torchcfm_sampler),
    }
    cpu = {"flowdiff flow": _train(flow, data, settings)}
    cpu["flowdiff diffusion"] = _train(diffusion, data, settings)
    for library, (model, _) in references.items():
        cpu[library] = _train(model, data.x, settings)

    def ours(model: FlowModel | DiffusionModel, solver: str, steps: int | None, **kw: Any):
        gen = torch.Generator().manual_seed(3)
        sol = model.sample(
            count, steps=steps, solver=solver, generator=gen, return_solution=True, **kw
        )
        return judge(sol.x), sol.nfe

    rows = []
    for solver, (_, stages) in SOLVERS.items():
        rows.append(
            _fixed_step_row(
                "flowdiff flow", solver, stages, lambda k, solver=solver: ours(flow, solver, k)[0]
            )
        )
    rows.append(_adaptive_row("flowdiff flow", *ours(flow, "dopri5", None)))
    for library, (model, make_sampler) in references.items():
        counter = CountingNet(model.net)
        sample = make_sampler(counter)

        def theirs(method: str, steps: int | None, sample: Callable = sample) -> float:
            x0 = torch.randn(count, 2, generator=torch.Generator().manual_seed(3))
            return judge(data.normalizer.inverse(sample(x0, method, steps)))

        with model.averaged():
            for solver, (method, stages) in SOLVERS.items():
                rows.append(
                    _fixed_step_row(
                        library, solver, stages, lambda k, method=method: theirs(method, k)
                    )
                )
            counter.calls = 0
            ratio = theirs("dopri5", None)
            rows.append(_adaptive_row(library, ratio, counter.calls))
    # The flow as an SDE (sigma_t = beta_t = 1 - t on the linear path), the diffusion model as
    # an SDE (its default sigma_t = beta_t) and as its probability-flow ODE (sigma = 0).
    variants = [
        ("flowdiff flow, SDE", flow, "euler_maruyama", {"sigma": lambda t: 1 - t}),
        ("flowdiff diffusion, SDE", diffusion, "euler_maruyama", {}),
        ("flowdiff diffusion, SDE", diffusion, "stochastic_heun", {}),
        ("flowdiff diffusion, ODE", diffusion, "midpoint", {"sigma": 0.0}),
        ("flowdiff diffusion, ODE", diffusion, "rk4", {"sigma": 0.0}),
    ]
    for label, model, solver, kw in variants:
        stages = {
            "euler_maruyama": 1,
            "stochastic_heun": 2,
            **{k: v[1] for k, v in SOLVERS.items()},
        }
        rows.append(
            _fixed_step_row(
                label,
                solver,
                stages[solver],
                lambda k, model=model, solver=solver, kw=kw: ours(model, solver, k, **kw)[0],
            )
        )
    rows.append(
        _adaptive_row("flowdiff diffusion, ODE", *ours(diffusion, "dopri5", None, sigma=0.0))
    )
    return rows, {"floor": judge.floor, "train_cpu_s": cpu}


# ---------------------------------------------------------------------- digits
def _digits(settings: dict[str, Any], out_dir: Path) -> tuple[list[list[Any]], dict[str, Any]]:
    """Train the class-conditional U-Net; accuracy of guided samples by ``w``; a sample grid."""
    from flowdiff.viz import image_grid

    data = load_data("digits")
    torch.manual_seed(0)
    net = {"type": "unet", "in_channels": 1, "num_classes": 10, **settings["digits_net"]}
    model = FlowModel((1, 8, 8), net=net, num_classes=10, label_dropout=0.1)
    start = time.process_time()
    model.fit(data, **COMMON_TRAIN, **settings["digits_train"])
    train_cpu = time.process_time() - start

    # The judge: a CNN fitted on 80% of the real digits, scored on the other 20%.
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(data))
    raw = data.raw()
    classifier = train_classifier(
        raw[order[:cut]], data.y[order[:cut]], num_classes=10,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    held_out = classifier_accuracy(classifier, raw[order[cut:]], data.y[order[cut:]])

    labels = torch.arange(10).repeat_interleave(settings["digits_per_class"])
    rows, accuracy = [], {}
    for w in GUIDANCE:
        gen = torch.Generator().manual_seed(1)
        start = time.process_time()
        sol = model.sample(
            len(labels), steps=settings["digits_steps"], y=labels, guidance=w, generator=gen,
            return_solution=True,
        )  # fmt: skip
        seconds = time.process_time() - start
        accuracy[w] = classifier_accuracy(classifier, sol.x, labels)
        rows.append([w, accuracy[w], sol.nfe, seconds])
        if w == 3.0:
            grid = torch.cat([sol.x[labels == c][:10] for c in range(10)])
            # Guided samples overshoot the data range [0, 16] a little: fix the grey scale to
            # it (clipped) rather than let the viewer guess a range from the sign of the values.
            image_grid(grid, out_dir / "sampling_digits.png", nrow=len(grid) // 10,
                       value_range=(0.0, data.normalizer.max_value),
                       title="flow model, guidance w = 3 (row = class)")  # fmt: skip
    info = {"train_cpu_s": train_cpu, "classifier_held_out": held_out, "accuracy": accuracy}
    return rows, info


# ---------------------------------------------------------------------- entry point
def run(quick: bool = False, out_dir: Path = RESULTS_DIR) -> dict[str, Any]:
    settings = SETTINGS[quick]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = ["library", "solver", *[f"NFE {n}" for n in NFES], "adaptive W2 (NFE)"]
    result: dict[str, Any] = {"settings": {**settings, "common_train": COMMON_TRAIN}, "toys": {}}
    parts = [
        "W2 / floor (mean exact W2 of N samples to N fresh data points over K pairs, divided "
        "by the same between two data samples; 1.0 = as good as data), "
        f"N = {settings['n']}, K = {settings['k']}."
    ]
    for name in settings["toys"]:
        rows, info = _toy_rows(name, settings)
        result["toys"][name] = {"rows": rows, **info}
        cpu = ", ".join(f"{k} {v:.0f} s" for k, v in info["train_cpu_s"].items())
        parts.append(
            f"### {name} (floor W2 = {info['floor']:.4g}; training CPU: {cpu})\n\n"
            + markdown_table(header, rows)
        )
    rows, info = _digits(settings, out_dir)
    result["digits"] = info
    parts.append(
        f"### digits: guided accuracy by w (training CPU {info['train_cpu_s']:.0f} s; the "
        f"judge's held-out accuracy {info['classifier_held_out']:.3f})\n\n"
        + markdown_table(["w", "accuracy", "NFE", "sampling CPU s"], rows)
    )
    result["markdown"] = "\n\n".join(parts)
    return result


if __name__ == "__main__":
    main("sampling", run)
