"""Two-process DDP training on CPU (gloo) launched by ``torchrun``: gradients go through
``DistributedDataParallel``, both ranks end with the same weights, only rank 0 writes, and the run
matches a one-process run of the same global batch. Covered: one optim group, two groups, and,
with per-rank loss noise, a flow-matching MLP (with held-out data), a GAN (k discriminator steps,
then a generator step through the frozen discriminator) and a CNF (its loss calls the network
inside an ODE solve)."""

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
from test_train import GaussianFit, TwoPhase, gaussian_data

torch.set_num_threads(1)
TESTS_DIR = Path(__file__).resolve().parent

# batch_size is the global batch: 32 = 2 ranks x 16.
RUN = dict(steps=40, batch_size=32, lr=0.05, lr_schedule="cosine", checkpoint_every=10,
           keep_last=2, log_every=10, ema_decay=0.9, progress=False)  # fmt: skip
# name: (steps, DDP forwards expected per optim group).
RUNS = {
    "gauss": (40, {"model": 40}),
    "two-phase": (40, {"location": 80, "scale": 40}),
    "flow": (30, {"model": 30}),
    "gan": (10, {"discriminator": 20, "generator": 10}),
    "cnf": (5, {"model": 5}),
}

WORKER = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from test_train import GaussianFit, TwoPhase, gaussian_data
from flowdiff.families import CNF, GAN
from flowdiff.io import write_json
from flowdiff.models import FlowModel
from flowdiff.train import TrainConfig, fit

out, rank = sys.argv[1], int(os.environ["RANK"])
# Spies: the forwards of every DistributedDataParallel, by the optim group it wraps (the loop must
# average gradients through DDP), and every file this rank moved into place (only rank 0 writes).
forwards, written = {{}}, []
ddp_forward, replace = DistributedDataParallel.forward, os.replace
def counting_forward(self, *args, **kwargs):
    forwards[self.module.phase] = forwards.get(self.module.phase, 0) + 1
    return ddp_forward(self, *args, **kwargs)
def recording_replace(source, target):
    written.append(os.path.basename(target))
    return replace(source, target)
DistributedDataParallel.forward, os.replace = counting_forward, recording_replace

def run(name, model, steps, val_data=None, **extra):
    forwards.clear()
    written.clear()
    options = {{**{run!r}, "steps": steps, "out_dir": out + "/" + name, **extra}}
    result = fit(model, gaussian_data(1000), TrainConfig(**options), val_data=val_data)
    record = {{"history": result.history, "forwards": forwards, "written": sorted(set(written))}}
    model.save(f"{{out}}/{{name}}-rank{{rank}}.safetensors")
    write_json(f"{{out}}/{{name}}-rank{{rank}}.json", record)

steps = {steps!r}
# Rank 1 starts from other weights: the loop must broadcast rank 0's.
torch.manual_seed(rank)
model = GaussianFit()
with torch.no_grad():
    model.mu.normal_()
run("gauss", model, steps["gauss"])
# Two optim groups; its location phases also give log_std (the scale group's) a gradient.
run("two-phase", TwoPhase(), steps["two-phase"])
# The next three draw per-rank noise in their losses (each rank its own generator).
net = {{"type": "mlp", "event_shape": [2], "hidden": 32, "depth": 2, "time_dim": 16}}
# Held out: every rank measures the same val_loss and keeps the same best weights.
run("flow", FlowModel((2,), net=net), steps["flow"], gaussian_data(100, 1), keep_best=True)
run("gan", GAN((2,), latent_dim=2, hidden=16, depth=1, discriminator_steps=2), steps["gan"])
run("cnf", CNF((2,), hidden=16, depth=1, steps=2), steps["cnf"])

class Unused(GaussianFit):
    def __init__(self):
        super().__init__()
        self.spare = nn.Parameter(torch.zeros(1))  # in the default group, never in the loss
try:
    fit(Unused(), gaussian_data(64), TrainConfig(steps=2, batch_size=8, progress=False))
except ValueError as err:
    write_json(f"{{out}}/unused-rank{{rank}}.json", str(err))
"""


@pytest.mark.slow  # ~25 s: torchrun starts two fresh Python processes importing torch
def test_two_process_gloo_run_matches_one_process_with_the_same_global_batch(tmp_path):
    steps = {name: count for name, (count, _) in RUNS.items()}
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS_DIR), run=RUN, steps=steps))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(script), str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    records = {}
    for name, (count, forwards) in RUNS.items():
        rank0, rank1 = (load_file(str(tmp_path / f"{name}-rank{r}.safetensors")) for r in (0, 1))
        assert rank0.keys() == rank1.keys() and any(k.startswith("ema.") for k in rank0)
        for key in rank0:  # weights and EMA: identical on both ranks, bit for bit
            assert torch.equal(rank0[key], rank1[key]), (name, key)
        records[name] = [
            json.loads((tmp_path / f"{name}-rank{r}.json").read_text()) for r in (0, 1)
        ]
        for record in records[name]:
            # One DDP forward per phase step on each rank: DDP averaged every gradient.
            assert record["forwards"] == forwards, name
        # Rank 0 alone wrote files: checkpoints, the CSV and the final model.
        last = f"checkpoint-{count:08d}.safetensors"
        assert {last, "metrics.csv", "model.safetensors"} <= set(records[name][0]["written"])
        assert records[name][1]["written"] == [], name
        # The logged loss is the global mean on every rank (timings aside); so is val_loss.
        logged = ("step", "loss", "lr", "grad_norm", "val_loss")
        for row0, row1 in zip(*(record["history"] for record in records[name])):
            assert {k: row0.get(k) for k in logged} == {k: row1.get(k) for k in logged}
    assert all(row["val_loss"] > 0 for row in records["flow"][0]["history"])
    for name in ("gauss", "two-phase"):
        assert [step for step, _ in list_checkpoints(tmp_path / name)] == [30, 40]
        tensors = load_file(str(latest_checkpoint(tmp_path / name)))
        # Each checkpoint holds both ranks' random states, which differ.
        assert not torch.equal(tensors["rng.rank0.loss"], tensors["rng.rank1.loss"])
    for rank in (0, 1):  # both ranks stop with the same clear error
        message = json.loads((tmp_path / f"unused-rank{rank}.json").read_text())
        assert "optim group 'model'" in message and "['spare']" in message

    torch.manual_seed(0)
    gauss = GaussianFit()
    with torch.no_grad():
        gauss.mu.normal_()  # rank 0's initial weights
    for name, model in (("gauss", gauss), ("two-phase", TwoPhase())):
        result = fit(model, gaussian_data(1000), TrainConfig(**RUN))
        # Same global batches; only the summation order of the mean differs (float32 round-off).
        for one, two in zip(result.history, records[name][0]["history"], strict=True):
            assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
            assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
        ddp = load_file(str(tmp_path / f"{name}-rank0.safetensors"))
        torch.testing.assert_close(ddp["model.mu"], model.mu.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(ddp["model.log_std"], model.log_std.detach(), atol=1e-5, rtol=0)
