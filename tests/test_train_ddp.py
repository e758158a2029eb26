"""Two-process DDP training on CPU (gloo) launched by ``torchrun``: both ranks end with the same
weights, and the run matches a one-process run of the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowdiff.train import TrainConfig, fit, latest_checkpoint, list_checkpoints
from test_train import GaussianFit, gaussian_data

torch.set_num_threads(1)
TESTS_DIR = Path(__file__).resolve().parent

# batch_size is the global batch: 32 = 2 ranks x 16.
RUN = dict(steps=40, batch_size=32, lr=0.05, lr_schedule="cosine", checkpoint_every=10,
           keep_last=2, log_every=10, ema_decay=0.9, progress=False)  # fmt: skip

WORKER = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from test_train import GaussianFit, TwoPhase, gaussian_data
from flowdiff.io import write_json
from flowdiff.train import TrainConfig, fit

out, rank = sys.argv[1], int(os.environ["RANK"])
# Rank 1 starts from other weights: the loop must broadcast rank 0's.
torch.manual_seed(rank)
model = GaussianFit()
with torch.no_grad():
    model.mu.normal_()
result = fit(model, gaussian_data(1000), TrainConfig(**{run!r}, out_dir=out + "/gauss"))
model.save(out + f"/gauss-rank{{rank}}.safetensors")
write_json(out + f"/history-rank{{rank}}.json", result.history)
# Two optim groups, and per-rank loss noise (each rank its own generator).
model = TwoPhase(noise_std=0.3)
fit(model, gaussian_data(1000), TrainConfig(**{run!r}, out_dir=out + "/two-phase"))
model.save(out + f"/two-phase-rank{{rank}}.safetensors")
"""


@pytest.mark.slow  # ~20 s: torchrun starts two fresh Python processes importing torch
def test_two_process_gloo_run_matches_one_process_with_the_same_global_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS_DIR), run=RUN))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(script), str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    for name in ("gauss", "two-phase"):
        rank0, rank1 = (load_file(str(tmp_path / f"{name}-rank{r}.safetensors")) for r in (0, 1))
        assert rank0.keys() == rank1.keys()
        for key in rank0:  # weights and EMA: identical on both ranks, bit for bit
            assert torch.equal(rank0[key], rank1[key]), (name, key)
        # Rank 0 alone wrote checkpoints; each holds both ranks' random states.
        assert [step for step, _ in list_checkpoints(tmp_path / name)] == [30, 40]
        tensors = load_file(str(latest_checkpoint(tmp_path / name)))
        assert not torch.equal(tensors["rng.rank0.loss"], tensors["rng.rank1.loss"])

    histories = [json.loads((tmp_path / f"history-rank{r}.json").read_text()) for r in (0, 1)]
    # The logged loss is the global mean on every rank (timings aside).
    for row0, row1 in zip(*histories):
        assert {k: row0[k] for k in ("step", "loss", "lr", "grad_norm")} == {
            k: row1[k] for k in ("step", "loss", "lr", "grad_norm")
        }

    torch.manual_seed(0)
    model = GaussianFit()
    with torch.no_grad():
        model.mu.normal_()  # rank 0's initial weights
    result = fit(model, gaussian_data(1000), TrainConfig(**RUN))
    # Same global batches; only the summation order of the mean differs (float32 round-off).
    for one, two in zip(result.history, histories[0]):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
    ddp = load_file(str(tmp_path / "gauss-rank0.safetensors"))
    torch.testing.assert_close(ddp["model.mu"], model.mu.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(ddp["model.log_std"], model.log_std.detach(), atol=1e-5, rtol=0)
