"""Training-loop overhead: one step of ``flowdiff.train.fit`` against a bare step.

``overhead = time(one library training step) / time(bare step)``, where the bare step is
``model.loss(x).mean()``, ``backward()``, ``AdamW.step()`` on the same network, loss and batch
(goal <= 1.10). The library step adds what a real run needs: drawing the batch from the seeded
index stream, the lr schedule, gradient-norm clipping (1.0), the EMA update (0.999), the
divergence check and the metrics window. Checkpoints and logging to disk are off (``out_dir``
None), as they happen every N steps, not every step.

The library time per step is ``(time(fit, 1 + n steps) - time(fit, 1 step)) / n``, which cancels
the set-up and the first (slower) step; the bare time is the median of ``n`` steps after one
warm-up. Bare and library measurements alternate and the ratio is the median over repeats, so
this machine's noise hits both alike. 1 thread.

Cases: the 3x256 MLP flow model on 2D points at batch 4096; the default U-Net flow model on the
8x8 digits (1x8x8) at batch 128.

Run: ``python -m benchmarks.bench_train [--quick]``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import main, markdown_table, setup
from flowdiff.data import load_data
from flowdiff.models import FlowModel
from flowdiff.train import TrainConfig, fit


def _bare_step_time(model: FlowModel, x: torch.Tensor, steps: int) -> float:
    """Seconds per bare forward + backward + AdamW step on the batch ``x``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(x, generator=generator).mean().backward()
        optimizer.step()

    step()  # warm-up (allocator, lazy optimizer state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _library_step_time(
    make_model: Callable[[], FlowModel], data: torch.Tensor, batch_size: int, steps: int
) -> float:
    """Seconds per step of ``fit`` (set-up and first step cancelled by a 1-step run)."""

    def run(n: int) -> float:
        model = make_model()
        config = TrainConfig(steps=n, batch_size=batch_size, lr=1e-4, progress=False)
        start = time.perf_counter()
        fit(model, data, config)
        return time.perf_counter() - start

    return (run(1 + steps) - run(1)) / steps


def _case(
    name: str,
    make_model: Callable[[], FlowModel],
    data: torch.Tensor,
    batch_size: int,
    *,
    steps: int,
    repeats: int,
) -> dict[str, Any]:
    batch = data[:batch_size]
    ratios, library, bare = [], [], []
    for _ in range(repeats):
        bare.append(_bare_step_time(make_model(), batch, steps))
        library.append(_library_step_time(make_model, data, batch_size, steps))
        ratios.append(library[-1] / bare[-1])
    return {
        "case": name,
        "batch": batch_size,
        "params": sum(p.numel() for p in make_model().parameters()),
        "bare_ms": 1e3 * statistics.median(bare),
        "library_ms": 1e3 * statistics.median(library),
        "overhead": statistics.median(ratios),
        # The spread of the per-repeat ratios: this machine's noise, against the 10% goal.
        "overhead_range": [min(ratios), max(ratios)],
        "steps_per_s": 1.0 / statistics.median(library),
    }


def run(quick: bool = False) -> dict[str, Any]:
    setup()
    steps, repeats = (3, 2) if quick else (30, 7)
    points = torch.randn(8192, 2, generator=torch.Generator().manual_seed(0))
    digits = load_data("digits").x
    mlp_batch, unet_batch = (256, 32) if quick else (4096, 128)
    hidden = 32 if quick else 256

    def mlp_flow() -> FlowModel:
        torch.manual_seed(0)
        return FlowModel((2,), net={"type": "mlp", "event_shape": [2], "hidden": hidden})

    def unet_flow() -> FlowModel:
        torch.manual_seed(0)
        return FlowModel((1, 8, 8))

    cases = [
        _case(f"MLP 3x{hidden}, 2D points", mlp_flow, points, mlp_batch, steps=steps,
              repeats=repeats),
        _case("U-Net, 8x8 digits", unet_flow, digits, unet_batch, steps=steps, repeats=repeats),
    ]  # fmt: skip
    header = ["case", "batch", "params", "bare step (ms)", "fit step (ms)", "overhead",
              "overhead range", "steps/s"]  # fmt: skip
    rows = [
        [c["case"], c["batch"], c["params"], c["bare_ms"], c["library_ms"], c["overhead"],
         "{:.3f}-{:.3f}".format(*c["overhead_range"]), c["steps_per_s"]]
        for c in cases
    ]  # fmt: skip
    table = markdown_table(header, rows)
    note = (
        f"\n\nMedians over {repeats} repeats of {steps} steps, 1 thread; goal overhead <= 1.10 "
        "(fit adds batch drawing, lr schedule, grad clipping, EMA, divergence check). The "
        "range is the lowest and highest per-repeat ratio: a median below 1 is the noise of "
        "this machine, not a loop faster than a bare step."
    )
    return {"cases": cases, "markdown": table + note}


if __name__ == "__main__":
    main("train", run)
