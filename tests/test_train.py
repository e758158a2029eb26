"""The training loop (`flowdiff.train`): convergence to known optima, the lr schedule and AdamW
update in closed form, clipping, EMA, phases, data handling, logging, snapshots, errors.

The test models are tiny and kind-less (not registered); their optima or parameter trajectories
are known in closed form, so every assertion compares with a value that could have come out
otherwise. The checkpoint/resume tests live in test_train_checkpoint.py, DDP in test_train_ddp.py
(both import the models from here).
"""

from __future__ import annotations

import csv
import math
import re
import sys
import types
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, TensorDataset

from flowdiff.models.base import GenerativeModel
from flowdiff.train import (
    EMA,
    TrainConfig,
    TrainingDiverged,
    fit,
    latest_checkpoint,
    learning_rate,
    list_checkpoints,
    load_checkpoint,
)
from flowdiff.train.data import StreamSampler, make_batch_source
from flowdiff.utils import randn, sum_event

torch.set_num_threads(1)


class Interrupted(Exception):
    """Raised by a model's fault injection to stop a run mid-way, as a crash would."""


class GaussianFit(GenerativeModel):
    """``N(mu, diag(exp(2 log_std)))`` fitted by maximum likelihood to ``x + noise_std * eps``.

    The optimum on a data set is closed form: ``mu* = mean(x)``, ``std*^2 = var(x) + noise_std^2``
    (biased variance). The noise comes from the loss's generator, so the seeding of that generator
    shows in the result.
    """

    def __init__(self, event_shape: tuple[int, ...] = (2,), noise_std: float = 0.0) -> None:
        super().__init__(event_shape)
        self.noise_std = noise_std
        self.mu = nn.Parameter(torch.zeros(self.event_shape))
        self.log_std = nn.Parameter(torch.zeros(self.event_shape))
        # Fault injection (not part of the config): (loss call number, "nan" | "interrupt").
        self.calls = 0
        self.fault: tuple[int, str] | None = None

    def config(self) -> dict:
        return {**super().config(), "noise_std": self.noise_std}

    def loss(self, x, y=None, *, phase="model", generator=None) -> Tensor:
        self.calls += 1
        if self.noise_std:
            x = x + self.noise_std * randn(x.shape, generator=generator)
        z = (x - self.mu) * torch.exp(-self.log_std)
        losses = sum_event(0.5 * z**2 + self.log_std)
        if self.fault is not None and self.calls == self.fault[0]:
            if self.fault[1] == "interrupt":
                raise Interrupted(f"interrupted at loss call {self.calls}")
            return losses * math.nan
        return losses

    def sample(self, n: int, generator=None) -> Tensor:
        with self.averaged():  # the EMA weights by default, as every family samples
            return self.mu + self.log_std.exp() * randn((n, *self.event_shape), generator=generator)


class TwoPhase(GaussianFit):
    """GAN-shaped protocol: group "location" (mu) steps twice, then "scale" (log_std) once."""

    def optim_groups(self):
        return {"location": [self.mu], "scale": [self.log_std]}

    def training_phases(self, step):
        return ["location", "location", "scale"]


class ConstantGradient(GenerativeModel):
    """Per-sample loss ``scale * sum(w)``: the gradient is ``scale`` in every coordinate, so the
    bias-corrected Adam ratio ``m_hat / (sqrt(v_hat) + eps)`` is ``scale / (scale + eps)`` at
    every step and the AdamW trajectory is closed form:
    ``w_k = (1 - lr_k wd) w_{k-1} - lr_k scale / (scale + eps)``. float64 for exactness.
    """

    def __init__(self, event_shape: tuple[int, ...] = (2,), scale: float = 1.0) -> None:
        super().__init__(event_shape)
        self.scale = scale
        self.w = nn.Parameter(torch.ones(self.event_shape, dtype=torch.float64))

    def config(self) -> dict:
        return {**super().config(), "scale": self.scale}

    def loss(self, x, y=None, *, phase="model", generator=None) -> Tensor:
        return (self.scale * self.w.sum()).expand(x.shape[0])

    def sample(self, n: int, generator=None) -> Tensor:
        with self.averaged():  # the EMA weights by default, as every family samples
            return self.w.detach().expand(n, *self.event_shape).clone()


def gaussian_data(n: int = 4096, seed: int = 0) -> Tensor:
    """``N((1, -2), diag(0.5^2, 1.5^2))`` samples."""
    gen = torch.Generator().manual_seed(seed)
    return torch.tensor([1.0, -2.0]) + torch.tensor([0.5, 1.5]) * torch.randn(n, 2, generator=gen)


def adamw_trajectory(config: TrainConfig, w0: float, scale: float, eps: float = 1e-8):
    """The closed-form ``w_k`` (k = 0..steps) and the loss ``2 scale w_{k-1}`` of step k for a
    2-d :class:`ConstantGradient` started at ``w0`` in every coordinate."""
    ws, losses = [w0], []
    for k in range(1, config.steps + 1):
        lr = learning_rate(config, k)
        losses.append(2 * scale * ws[-1])
        ws.append((1 - lr * config.weight_decay) * ws[-1] - lr * scale / (scale + eps))
    return ws, losses


def quiet(**options) -> TrainConfig:
    return TrainConfig(**{"progress": False, **options})


# ---------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", 0),
        ("steps", True),
        ("batch_size", 2.5),
        ("lr", 0.0),
        ("lr", math.nan),
        ("weight_decay", -1e-3),
        ("betas", (0.9,)),
        ("betas[1]", (0.9, 1.0)),
        ("warmup_steps", 2000),
        ("lr_schedule", "exp"),
        ("min_lr_ratio", 1.5),
        ("grad_clip", 0.0),
        ("ema_decay", 1.0),
        ("seed", -1),
        ("device", "tpu"),
        ("precision", "fp16"),
        ("compile", "yes"),
        ("out_dir", 3),
        ("checkpoint_every", 0),
        ("keep_last", 0),
        ("log_every", 0),
        ("sample_every", 0),
        ("sample_count", 0),
        ("progress", "auto"),
        ("resume", None),
        ("num_workers", -1),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    name = field.split("[")[0]
    with pytest.raises(ValueError, match=re.escape(field)):
        TrainConfig(**{name: value})


def test_config_cross_field_checks():
    with pytest.raises(ValueError, match=r"precision='bf16'.*device='cpu'"):
        TrainConfig(precision="bf16", device="cpu")
    with pytest.raises(ValueError, match="sample_every=5 needs out_dir"):
        TrainConfig(sample_every=5)


def test_config_round_trips_through_json_types(tmp_path):
    config = TrainConfig(betas=[0.8, 0.99], out_dir=tmp_path, lr_schedule="cosine")
    assert config.betas == (0.8, 0.99) and config.out_dir == str(tmp_path)
    assert TrainConfig(**config.to_dict()) == config


def test_unknown_fit_option_is_a_type_error():
    with pytest.raises(TypeError, match="lrr"):
        GaussianFit().fit(gaussian_data(64), lrr=1e-3)


# ---------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # warm-up 10 of 40 steps, floor m = 0.1; after it p = (k - 10) / 30.
        ("constant", {1: 0.1, 5: 0.5, 10: 1.0, 20: 1.0, 40: 1.0}),
        ("linear", {1: 0.1, 5: 0.5, 10: 1.0, 20: 1 - 0.9 / 3, 25: 0.55, 40: 0.1}),
        ("cosine", {1: 0.1, 5: 0.5, 10: 1.0, 20: 0.1 + 0.9 * 0.75, 25: 0.55, 40: 0.1}),
    ],
)
def test_learning_rate_warmup_and_decay_values(schedule, expected):
    config = TrainConfig(steps=40, lr=2e-3, warmup_steps=10, lr_schedule=schedule, min_lr_ratio=0.1)
    for step, factor in expected.items():
        assert learning_rate(config, step) == pytest.approx(2e-3 * factor, rel=1e-12), step
    with pytest.raises(ValueError, match="step must be an int >= 1"):
        learning_rate(config, 0)


def test_adamw_with_schedule_and_weight_decay_follows_closed_form():
    """The lr each step actually used (and weight decay, and Adam's update) show in the final
    weights: they match the closed-form trajectory to float64 precision."""
    config = quiet(
        steps=30,
        batch_size=4,
        lr=0.05,
        warmup_steps=5,
        lr_schedule="cosine",
        min_lr_ratio=0.2,
        weight_decay=0.3,
        grad_clip=None,
        log_every=3,
    )
    model = ConstantGradient(scale=2.0)
    result = fit(model, torch.zeros(16, 2), config)
    ws, _ = adamw_trajectory(config, 1.0, 2.0)
    torch.testing.assert_close(model.w.detach(), torch.full((2,), ws[-1], dtype=torch.float64))
    assert [row["step"] for row in result.history] == [*range(3, 31, 3)]
    for row in result.history:
        assert row["lr"] == pytest.approx(learning_rate(config, row["step"]), rel=1e-12)
        assert row["grad_norm"] == pytest.approx(2.0 * math.sqrt(2), rel=1e-12)


# ---------------------------------------------------------------------------------- convergence
def test_converges_to_the_maximum_likelihood_optimum():
    """With noisy data the optimum is mu = mean(x), std^2 = var(x) + noise^2 (closed form)."""
    x = gaussian_data()
    model = GaussianFit(noise_std=0.3)
    config = quiet(
        steps=600, batch_size=256, lr=0.05, warmup_steps=20, lr_schedule="cosine", ema_decay=0.99
    )
    result = fit(model, x, config)
    mu_star = x.mean(0)
    std_star = (x.var(0, unbiased=False) + 0.3**2).sqrt()
    # Measured error ~0.003 (mini-batch noise at the tail of the cosine); 0.03 is 10x margin.
    torch.testing.assert_close(model.mu.detach(), mu_star, atol=0.03, rtol=0)
    torch.testing.assert_close(model.log_std.exp().detach(), std_star, atol=0.03, rtol=0)
    with model.averaged():
        torch.testing.assert_close(model.mu.detach(), mu_star, atol=0.03, rtol=0)
    # The average NLL at the optimum is sum(log std*) + D/2 (up to mini-batch noise).
    nll_star = float(std_star.log().sum()) + 1.0
    assert result.final_loss == pytest.approx(nll_star, abs=0.05)
    assert result.step == 600 and result.checkpoint_dir is None


def test_same_seed_is_bit_identical_and_the_seed_matters():
    x = gaussian_data(512)
    weights = []
    for seed in (3, 3, 4):
        model = GaussianFit(noise_std=0.5)
        fit(model, x, quiet(steps=20, batch_size=32, lr=0.05, seed=seed))
        weights.append(torch.cat([model.mu.detach(), model.log_std.detach()]))
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def test_phases_step_their_own_group_on_fresh_batches(tmp_path):
    x = gaussian_data()
    model = TwoPhase()
    config = quiet(steps=300, batch_size=256, lr=0.05, lr_schedule="cosine", out_dir=tmp_path)
    result = fit(model, x, config)
    torch.testing.assert_close(model.mu.detach(), x.mean(0), atol=0.03, rtol=0)
    torch.testing.assert_close(model.log_std.exp().detach(), x.std(0), atol=0.03, rtol=0)
    row = result.history[-1]
    assert {"loss_location", "loss_scale", "grad_norm_location", "grad_norm_scale"} <= set(row)
    # loss is the mean over the 3 phase steps of each step; here each phase has the same loss.
    ckpt_path = latest_checkpoint(tmp_path)
    from safetensors.torch import load_file

    tensors = load_file(str(ckpt_path))
    assert float(tensors["optim.location.0.step"]) == 600  # two location steps per step
    assert float(tensors["optim.scale.0.step"]) == 300
    fresh = TwoPhase()
    ckpt = load_checkpoint(ckpt_path, fresh)
    assert ckpt.loop_state["data"]["batches"] == 900  # one fresh batch per phase


def test_bad_phase_and_bad_loss_shape_are_clear_errors():
    class BadPhase(GaussianFit):
        def training_phases(self, step):
            return ["generator"]

    class BadLoss(GaussianFit):
        def loss(self, x, y=None, *, phase="model", generator=None):
            return super().loss(x).mean()

    with pytest.raises(ValueError, match=r"training_phases\(0\) returned \['generator'\]"):
        fit(BadPhase(), gaussian_data(64), quiet(steps=2, batch_size=8))
    with pytest.raises(ValueError, match=r"per-sample losses of shape \(8,\), got \(\)"):
        fit(BadLoss(), gaussian_data(64), quiet(steps=2, batch_size=8))


# ---------------------------------------------------------------------------------- clipping
@pytest.mark.parametrize("clip", [None, 1.5])
def test_grad_clip_bounds_the_norm_given_to_the_optimizer(tmp_path, clip):
    """Gradient (3, 3, 3, 3) has norm 6. AdamW's first moment after one step is
    (1 - beta1) * g_clipped, so its norm is 0.1 * min(6, clip); the log records the raw 6."""
    from safetensors.torch import load_file

    config = quiet(steps=1, batch_size=4, grad_clip=clip, out_dir=tmp_path)
    result = fit(ConstantGradient((4,), scale=3.0), torch.zeros(8, 4), config)
    exp_avg = load_file(str(latest_checkpoint(tmp_path)))["optim.model.0.exp_avg"]
    expected = 0.1 * (6.0 if clip is None else clip)
    assert float(exp_avg.norm()) == pytest.approx(expected, rel=1e-6)
    assert result.history[-1]["grad_norm"] == pytest.approx(6.0, rel=1e-12)


# ---------------------------------------------------------------------------------- EMA
def _ema_closed_form(thetas: list[Tensor], ema: EMA) -> Tensor:
    """``ema_n = prod_k d_k theta_0 + sum_k (1 - d_k) prod_{j > k} d_j theta_k`` (unrolled)."""
    n = len(thetas) - 1
    d = [ema.decay_at(k) for k in range(1, n + 1)]
    total = math.prod(d) * thetas[0]
    for k in range(1, n + 1):
        total = total + (1 - d[k - 1]) * math.prod(d[k:]) * thetas[k]
    return total


def test_ema_matches_the_closed_form_of_the_recursion(gen):
    theta = nn.Parameter(torch.randn(5, dtype=torch.float64, generator=gen))
    ema = EMA({"theta": theta}, decay=0.95)
    thetas = [theta.detach().clone()]
    for _ in range(60):  # past the warm-up: d_k = min(0.95, (1 + k) / (10 + k)) hits 0.95 at k=170
        with torch.no_grad():
            theta.copy_(torch.randn(5, dtype=torch.float64, generator=gen))
        thetas.append(theta.detach().clone())
        ema.update()
    torch.testing.assert_close(
        ema.state["theta"], _ema_closed_form(thetas, ema), rtol=1e-12, atol=0
    )
    assert ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(10_000) == 0.95
    with pytest.raises(ValueError, match="decay must be in"):
        EMA({"theta": theta}, decay=1.0)


def test_fit_keeps_the_ema_of_the_closed_form_trajectory():
    config = quiet(steps=40, batch_size=4, lr=0.02, grad_clip=None, ema_decay=0.9)
    model = ConstantGradient(scale=1.0)
    fit(model, torch.zeros(8, 2), config)
    ws, _ = adamw_trajectory(config, 1.0, 1.0)
    ema = EMA({"w": model.w}, 0.9)  # only for its decay_at
    expected = _ema_closed_form([torch.tensor(w, dtype=torch.float64) for w in ws], ema)
    torch.testing.assert_close(model.ema_state["w"], expected.expand(2), rtol=1e-12, atol=0)
    with model.averaged():
        torch.testing.assert_close(model.w.detach(), expected.expand(2), rtol=1e-12, atol=0)
    fit(model, torch.zeros(8, 2), quiet(steps=1, batch_size=4, ema_decay=None))
    assert model.ema_state is None  # a run without EMA leaves no stale average behind


# ---------------------------------------------------------------------------------- divergence
def test_non_finite_loss_raises_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    model = GaussianFit()
    model.fault = (8, "nan")  # loss call 8 = step 8
    config = quiet(steps=20, batch_size=16, checkpoint_every=5, log_every=1, out_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match=r"step 8 \(phase 'model'\)") as info:
        fit(model, gaussian_data(128), config)
    assert info.value.step == 8 and info.value.phase == "model"
    assert info.value.checkpoint == tmp_path / "checkpoint-00000005.safetensors"
    assert [step for step, _ in list_checkpoints(tmp_path)] == [5]
    # The failed step was not applied, and the checkpoint is the good state of step 5.
    assert torch.isfinite(model.mu).all() and torch.isfinite(model.log_std).all()
    ckpt = load_checkpoint(info.value.checkpoint, GaussianFit())
    assert ckpt.step == 5
    with open(tmp_path / "metrics.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == list(range(1, 8))


def test_divergence_in_a_later_phase_keeps_the_earlier_phases_of_that_step():
    """TwoPhase runs location, location, scale at every step. A NaN in the scale phase of step 6
    (loss call 18) stops the run before the scale step: log_std is that of a 5-step run, while
    mu took step 6's two location steps, as in a 6-step run (constant lr: same trajectory)."""
    x = gaussian_data(256)
    model = TwoPhase()
    model.fault = (18, "nan")
    with pytest.raises(TrainingDiverged, match=r"step 6 \(phase 'scale'\)"):
        fit(model, x, quiet(steps=6, batch_size=16, lr=0.05))
    done = {}
    for steps in (5, 6):
        done[steps] = TwoPhase()
        fit(done[steps], x, quiet(steps=steps, batch_size=16, lr=0.05))
    assert torch.equal(model.log_std, done[5].log_std)
    assert not torch.equal(done[6].log_std, done[5].log_std)
    assert torch.equal(model.mu, done[6].mu) and not torch.equal(done[6].mu, done[5].mu)


# ---------------------------------------------------------------------------------- data
class PointSet(Dataset):
    def __init__(self, x: Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Tensor:
        return self.x[i]


def test_dataset_trains_exactly_like_the_tensor():
    """A Dataset is read through the same seeded index stream as a tensor: same run, bit for bit."""
    x = gaussian_data(300)
    config = quiet(steps=25, batch_size=64, lr=0.05)
    a, b = GaussianFit(noise_std=0.2), GaussianFit(noise_std=0.2)
    fit(a, x, config)
    fit(b, PointSet(x), config)
    assert torch.equal(a.mu, b.mu) and torch.equal(a.log_std, b.log_std)


def test_stream_sampler_is_distributed_sampler_epochs_split_into_the_global_batch():
    """Rank r's indices are DistributedSampler's, epoch after epoch; the ranks' k-th batches
    together are the k-th batch of one process, each epoch covers every sample once."""
    n, batch, steps = 10, 4, 5  # 20 indices = 2 epochs; batches straddle the epoch boundaries
    one = StreamSampler(n, batch, seed=7)
    ranks = [StreamSampler(n, batch, seed=7, rank=r, world_size=2) for r in range(2)]
    drawn, per_rank = [], [[], []]
    for _ in range(steps):
        global_batch = one.next()
        local = [s.next() for s in ranks]
        assert sorted(torch.cat(local).tolist()) == sorted(global_batch.tolist())
        drawn.append(global_batch)
        for r in range(2):
            per_rank[r].append(local[r])
    for r, stream in enumerate(ranks):
        assert isinstance(stream, DistributedSampler)
        reference = DistributedSampler(range(n), num_replicas=2, rank=r, shuffle=True, seed=7)
        epochs = []
        for epoch in range(2):
            reference.set_epoch(epoch)
            epochs += list(reference)
        assert torch.cat(per_rank[r]).tolist() == epochs
    drawn = torch.cat(drawn)
    for epoch in range(2):
        assert sorted(drawn[epoch * n : (epoch + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(drawn[:n], drawn[n:])  # a fresh permutation each epoch
    resumed = StreamSampler(n, batch, seed=7, position=3)
    assert torch.equal(torch.cat([resumed.next(), resumed.next()]), drawn[12:20])
    with pytest.raises(ValueError, match=r"batch_size \(5\) must be divisible .* \(2\)"):
        StreamSampler(n, 5, seed=0, world_size=2)


def test_user_loader_without_distributed_sampler_warns_under_ddp():
    model, x = GaussianFit(), gaussian_data(64)
    options = dict(batch_size=8, seed=0, device=torch.device("cpu"), rank=1, world_size=2)
    with pytest.warns(UserWarning, match="without a DistributedSampler.* 2 processes"):
        make_batch_source(DataLoader(TensorDataset(x), batch_size=4), model, **options)
    sharded = DistributedSampler(TensorDataset(x), num_replicas=2, rank=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_batch_source(DataLoader(TensorDataset(x), sampler=sharded), model, **options)


def test_bad_data_is_rejected_up_front():
    model = GaussianFit()
    config = quiet(steps=2, batch_size=8)
    nan = gaussian_data(64)
    nan[5, 1] = math.nan
    with pytest.raises(ValueError, match=r"data must have shape \(B, 2\).*got \(64, 3\)"):
        fit(model, torch.zeros(64, 3), config)
    with pytest.raises(ValueError, match="data has 1 non-finite"):
        fit(model, nan, config)
    with pytest.raises(ValueError, match="unconditional"):
        fit(model, (gaussian_data(64), torch.zeros(64, dtype=torch.long)), config)
    with pytest.raises(ValueError, match="pair"):
        fit(model, (gaussian_data(64),), config)
    with pytest.raises(TypeError, match="got ndarray"):
        fit(model, gaussian_data(64).numpy(), config)
    with pytest.raises(TypeError, match="IterableDataset"):
        fit(model, IterableDataset(), config)
    with pytest.raises(ValueError, match=r"first Dataset item.*got \(1, 3\)"):
        fit(model, PointSet(torch.zeros(64, 3)), config)
    with pytest.raises(ValueError, match=r"batch 2 of data \(DataLoader\)"):
        fit(model, DataLoader(TensorDataset(nan), batch_size=4), config)
    with pytest.raises(TypeError, match="model must be a GenerativeModel"):
        fit(nn.Linear(2, 2), gaussian_data(64), config)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        fit(model, gaussian_data(64), {"steps": 2})


def test_user_dataloader_cycles_epochs():
    """A 4-batch loader is re-iterated for 100 epochs; the fit converges to the data mean."""
    x = gaussian_data(32)
    model = GaussianFit()
    loader = DataLoader(TensorDataset(x), batch_size=8)
    fit(model, loader, quiet(steps=400, lr=0.05, lr_schedule="cosine"))
    torch.testing.assert_close(model.mu.detach(), x.mean(0), atol=0.05, rtol=0)


# ---------------------------------------------------------------------------------- logging
def test_metrics_csv_holds_the_window_means(tmp_path):
    """ConstantGradient's loss at step k is 2 w_{k-1} (closed form), so every CSV row's loss is
    a known mean over its 5-step window."""
    config = quiet(
        steps=20, batch_size=4, lr=0.01, warmup_steps=4, grad_clip=None, log_every=5,
        checkpoint_every=10, out_dir=tmp_path,
    )  # fmt: skip
    result = fit(ConstantGradient(), torch.zeros(8, 2), config)
    _, losses = adamw_trajectory(config, 1.0, 1.0)
    with open(tmp_path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", "loss", "lr", "grad_norm", "steps_per_s"]
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    for row, logged in zip(rows, result.history):
        step = int(row["step"])
        assert float(row["loss"]) == pytest.approx(sum(losses[step - 5 : step]) / 5, rel=1e-12)
        assert float(row["lr"]) == pytest.approx(learning_rate(config, step), rel=1e-12)
        assert float(row["grad_norm"]) == pytest.approx(math.sqrt(2), rel=1e-12)
        assert float(row["steps_per_s"]) > 0
        assert {k: float(v) for k, v in row.items()} == logged  # CSV floats round-trip exactly
    assert (tmp_path / "model.safetensors").is_file()
    saved = GenerativeModel.read_description(tmp_path / "model.safetensors")
    assert saved["has_ema"] is True


class FakeTensorBoard:
    """Stands in for ``SummaryWriter`` (tensorboard is not a dependency): its ``events`` outlive
    the writer, as event files do, and ``purge_step`` hides the stored events at steps
    ``>= purge_step``, as TensorBoard does. ``closed`` counts the writers closed."""

    def __init__(self, store: dict, purge_step: int | None) -> None:
        self.store = store
        if purge_step is not None:
            store["events"] = [e for e in store["events"] if e[2] < purge_step]

    def add_scalar(self, tag, value, step):
        self.store["events"].append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        self.store["closed"] += 1


def test_tensorboard_gets_every_scalar_once_even_after_a_resume(tmp_path, monkeypatch):
    """A run crashed at step 13 logged step 12 after its last checkpoint (10); the resumed run
    logs step 12 again, so TensorBoard must purge the first one."""
    stores = {run: {"events": [], "closed": 0} for run in ("a", "b")}
    monkeypatch.setattr(
        "flowdiff.train.log._open_tensorboard",
        lambda log_dir, purge_step: FakeTensorBoard(stores[log_dir.parent.name], purge_step),
    )
    options = dict(steps=20, batch_size=8, log_every=2, checkpoint_every=5, progress=False)
    x = gaussian_data(64)
    result = fit(GaussianFit(), x, TrainConfig(**options, out_dir=tmp_path / "a"))
    expected = [
        (f"train/{k}", v, row["step"])
        for row in result.history
        for k, v in row.items()
        if k != "step"
    ]
    assert stores["a"] == {"events": expected, "closed": 1}

    crashing = GaussianFit()
    crashing.fault = (13, "interrupt")
    with pytest.raises(Interrupted):
        fit(crashing, x, TrainConfig(**options, out_dir=tmp_path / "b"))
    assert max(step for _, _, step in stores["b"]["events"]) == 12
    fit(GaussianFit(), x, TrainConfig(**options, out_dir=tmp_path / "b"))
    assert stores["b"]["closed"] == 2

    def points(run):  # steps_per_s is a timing: compare its steps only
        return [
            (t, None if t.endswith("steps_per_s") else v, s) for t, v, s in stores[run]["events"]
        ]

    assert points("b") == points("a")


def test_progress_bar_shows_steps_and_loss(capsys):
    fit(
        GaussianFit(),
        gaussian_data(64),
        TrainConfig(steps=5, batch_size=8, log_every=5, progress=True),
    )
    err = capsys.readouterr().err
    assert "5/5" in err and "loss=" in err and "step/s" in err


# ---------------------------------------------------------------------------------- snapshots
class GlobalRNGGaussian(GaussianFit):
    """Draws its noise from the *global* torch RNG (like dropout), in training and sampling: a
    snapshot that touched that RNG would change the training run."""

    def loss(self, x, y=None, *, phase="model", generator=None):
        return super().loss(x + 0.3 * torch.randn(x.shape), y, phase=phase)

    def sample(self, n, generator=None):
        with self.averaged():
            return self.mu + self.log_std.exp() * torch.randn(n, *self.event_shape)


def fake_viz(monkeypatch, save_samples) -> None:
    monkeypatch.setitem(
        sys.modules, "flowdiff.viz", types.SimpleNamespace(save_samples=save_samples)
    )


def test_snapshots_sample_the_ema_weights(tmp_path, monkeypatch):
    """ConstantGradient samples its weights, so each snapshot must equal the closed-form EMA of
    the closed-form trajectory at that step (the raw weights differ)."""
    saved = {}
    fake_viz(monkeypatch, lambda x, path, title: saved.update({title: (x.clone(), path.name)}))
    config = quiet(steps=8, batch_size=4, lr=0.05, grad_clip=None, ema_decay=0.9,
                   sample_every=4, sample_count=3, out_dir=tmp_path)  # fmt: skip
    model = ConstantGradient()
    swaps, averaged = [], model.averaged

    def counting_averaged(enabled=True):
        swaps.append(enabled)
        return averaged(enabled)

    model.averaged = counting_averaged
    fit(model, torch.zeros(8, 2), config)
    ws, _ = adamw_trajectory(config, 1.0, 1.0)
    ema = EMA({"w": nn.Parameter(torch.zeros(1))}, 0.9)  # only for its decay_at
    assert sorted(saved) == ["step 4", "step 8"]
    assert swaps == [True, True]  # one swap to the EMA weights per snapshot, not two
    for step in (4, 8):
        x, name = saved[f"step {step}"]
        assert name == f"step-{step:08d}.png"
        expected = _ema_closed_form(
            [torch.tensor(w, dtype=torch.float64) for w in ws[: step + 1]], ema
        )
        torch.testing.assert_close(x, expected.expand(3, 2), rtol=1e-12, atol=0)
        assert abs(float(x[0, 0]) - ws[step]) > 1e-3


def test_snapshots_do_not_perturb_the_training_run(tmp_path, monkeypatch):
    fake_viz(monkeypatch, lambda x, path, title: None)
    x = gaussian_data(256)
    runs = []
    for sample_every in (4, None):
        torch.manual_seed(0)
        model = GlobalRNGGaussian()
        config = quiet(steps=10, batch_size=32, lr=0.05, sample_every=sample_every,
                       out_dir=tmp_path / str(sample_every))  # fmt: skip
        fit(model, x, config)
        runs.append(torch.cat([model.mu.detach(), model.log_std.detach()]))
    assert torch.equal(runs[0], runs[1])


def _cannot_draw(x, path, title):
    raise ValueError(f"x must be points (N, 2) or images, got shape {tuple(x.shape)}")


@pytest.mark.parametrize("viz", ["missing", "cannot draw"])
def test_snapshots_are_skipped_with_one_warning(tmp_path, monkeypatch, viz):
    if viz == "missing":
        monkeypatch.setitem(sys.modules, "flowdiff.viz", None)  # import raises ImportError
    else:
        fake_viz(monkeypatch, _cannot_draw)
    config = quiet(steps=6, batch_size=8, sample_every=2, out_dir=tmp_path)
    with pytest.warns(UserWarning, match="snapshots skipped") as record:
        result = fit(GaussianFit(), gaussian_data(64), config)
    assert len([w for w in record if "snapshots" in str(w.message)]) == 1
    assert result.step == 6


# ---------------------------------------------------------------------------------- devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_and_bf16_fallback():
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
        fit(GaussianFit(), gaussian_data(64), quiet(steps=1, batch_size=8, device="cuda"))
    x = gaussian_data(64)
    a, b = GaussianFit(), GaussianFit()
    with pytest.warns(UserWarning, match="bf16.*fp32"):
        fit(a, x, quiet(steps=5, batch_size=8, precision="bf16"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(b, x, quiet(steps=5, batch_size=8))
    assert torch.equal(a.mu, b.mu)  # the fallback is exactly fp32


class PlainGaussianFit(GaussianFit):
    """GaussianFit without the Python-side call counter, which torch.compile would recompile on."""

    def loss(self, x, y=None, *, phase="model", generator=None):
        z = (
            x + self.noise_std * randn(x.shape, generator=generator) - self.mu
        ) / self.log_std.exp()
        return sum_event(0.5 * z**2 + self.log_std)


def test_compiled_loss_trains_like_eager():
    from torch._dynamo.utils import counters

    x = gaussian_data(512)
    weights, graphs = [], []
    for compile_loss in (False, True):
        counters.clear()
        model = PlainGaussianFit(noise_std=0.2)
        fit(model, x, quiet(steps=20, batch_size=64, lr=0.05, compile=compile_loss))
        weights.append(torch.cat([model.mu.detach(), model.log_std.detach()]))
        graphs.append(counters["stats"]["unique_graphs"])
    # Dynamo captured graphs only when asked to: compile=True is not silently eager.
    assert graphs[0] == 0 and graphs[1] >= 1
    # Same random draws (the generator is passed through); only kernel fusion may round.
    torch.testing.assert_close(weights[1], weights[0], atol=1e-5, rtol=0)


class LinearMean(GenerativeModel):
    """``N(W 1, I)`` with the mean an ``nn.Linear(1, D)`` of a constant: a matmul, which bf16
    autocast runs in bf16 (an elementwise model would stay fp32 under autocast). ``seen`` records
    (autocast on, dtype of the Linear's output) inside every loss call."""

    def __init__(self, event_shape: tuple[int, ...] = (2,)) -> None:
        super().__init__(event_shape)
        self.mean = nn.Linear(1, event_shape[0], bias=False)
        self.seen: set[tuple[bool, torch.dtype]] = set()

    def loss(self, x, y=None, *, phase="model", generator=None) -> Tensor:
        mu = self.mean(x.new_ones(x.shape[0], 1))
        self.seen.add((torch.is_autocast_enabled("cuda"), mu.dtype))
        return sum_event(0.5 * (x - mu.float()) ** 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_runs_the_loss_in_bf16_and_trains_close_to_fp32():
    x = gaussian_data()
    results = []
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = LinearMean()
        fit(model, x, quiet(steps=300, batch_size=256, lr=0.05, lr_schedule="cosine",
                            device="cuda", precision=precision))  # fmt: skip
        assert model.seen == {(precision == "bf16", dtype)}
        assert model.mean.weight.device.type == "cuda"
        assert model.mean.weight.dtype == torch.float32  # autocast casts copies, not weights
        results.append(model.mean.weight.detach().cpu().squeeze(1))
    # The optimum is W 1 = mean(x). The bf16 run's error was 0.0004-0.0012 over 3 seeds with
    # CPU bf16 autocast standing in for CUDA's (the cast's gradient is the identity, so the fp32
    # weights keep converging below bf16's rounding step); 0.03 leaves room for the GPU's kernels.
    for weights in results:
        torch.testing.assert_close(weights, x.mean(0), atol=0.03, rtol=0)
