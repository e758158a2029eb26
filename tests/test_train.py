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
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

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
from flowdiff.train.data import IndexStream
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


def test_index_stream_covers_each_epoch_once_and_splits_the_global_batch():
    n, batch, steps = 10, 4, 5  # 20 indices = 2 epochs; batches straddle the epoch boundaries
    one = IndexStream(n, batch, seed=7)
    ranks = [IndexStream(n, batch, seed=7, rank=r, world_size=2) for r in range(2)]
    drawn = []
    for _ in range(steps):
        global_batch = one.next()
        assert torch.equal(torch.cat([s.next() for s in ranks]), global_batch)
        drawn.append(global_batch)
    drawn = torch.cat(drawn)
    for epoch in range(2):
        assert sorted(drawn[epoch * n : (epoch + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(drawn[:n], drawn[n:])  # a fresh permutation each epoch
    resumed = IndexStream(n, batch, seed=7, position=3)
    assert torch.equal(torch.cat([resumed.next(), resumed.next()]), drawn[12:20])
    with pytest.raises(ValueError, match=r"batch_size \(5\) must be divisible .* \(2\)"):
        IndexStream(n, 5, seed=0, world_size=2)


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


def test_tensorboard_receives_every_logged_scalar(tmp_path, monkeypatch):
    calls = []

    class Recorder:
        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append("closed")

    monkeypatch.setattr("flowdiff.train.log._open_tensorboard", lambda log_dir: Recorder())
    result = fit(
        GaussianFit(),
        gaussian_data(64),
        quiet(steps=4, batch_size=8, log_every=2, out_dir=tmp_path),
    )
    expected = [
        (f"train/{k}", v, row["step"])
        for row in result.history
        for k, v in row.items()
        if k != "step"
    ]
    assert calls == [*expected, "closed"]


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
    fit(ConstantGradient(), torch.zeros(8, 2), config)
    ws, _ = adamw_trajectory(config, 1.0, 1.0)
    ema = EMA({"w": nn.Parameter(torch.zeros(1))}, 0.9)  # only for its decay_at
    assert sorted(saved) == ["step 4", "step 8"]
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
    x = gaussian_data(512)
    weights = []
    for compile_loss in (False, True):
        model = PlainGaussianFit(noise_std=0.2)
        fit(model, x, quiet(steps=20, batch_size=64, lr=0.05, compile=compile_loss))
        weights.append(torch.cat([model.mu.detach(), model.log_std.detach()]))
    # Same random draws (the generator is passed through); only kernel fusion may round.
    torch.testing.assert_close(weights[1], weights[0], atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_trains_close_to_fp32():
    x = gaussian_data()
    results = []
    for precision in ("fp32", "bf16"):
        model = GaussianFit()
        fit(model, x, quiet(steps=300, batch_size=256, lr=0.05, lr_schedule="cosine",
                            device="cuda", precision=precision))  # fmt: skip
        assert model.mu.device.type == "cuda"
        results.append(model.mu.detach().cpu())
    torch.testing.assert_close(results[0], x.mean(0), atol=0.03, rtol=0)
    torch.testing.assert_close(results[1], results[0], atol=0.03, rtol=0)
