"""Held-out loss in the training loop (`fit(..., val_data=...)`, `val_every`, `keep_best`) and
`Data.split`.

The runs use the closed-form models of test_train.py. A Gaussian fitted to data centred at 3 and
judged on data centred at 1.5 walks its mean from 0 through 1.5 to 3, so its held-out loss falls
and then rises: the best step is known to lie strictly inside the run.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from flowdiff.data import load_data
from flowdiff.models import FlowModel
from flowdiff.nets import MLP
from flowdiff.train import TrainConfig, TrainingDiverged, fit, latest_checkpoint, load_checkpoint
from flowdiff.train.seeding import derive_seed
from test_train import GaussianFit, Interrupted, TwoPhase, gaussian_data, quiet
from test_train_checkpoint import assert_same_tensors, weights_of

torch.set_num_threads(1)

# 60 steps at lr 0.1 carry mu from 0 to ~3; val_loss is lowest while mu passes 1.5.
DRIFT = dict(steps=60, batch_size=64, lr=0.1, log_every=5, progress=False)


def drift_data() -> tuple[torch.Tensor, torch.Tensor]:
    train = gaussian_data(512, seed=0) - torch.tensor([1.0, -2.0]) + 3.0
    val = gaussian_data(200, seed=1) - torch.tensor([1.0, -2.0]) + 1.5
    return train, val


def held_out_loss(model: GaussianFit, val: torch.Tensor, batch_size: int, seed: int = 0) -> float:
    """The definition: mean loss over ``val`` in order, in batches of ``batch_size``, with the
    sampling (EMA) weights and a generator seeded from ``derive_seed(seed, "validation")``."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "validation"))
    with torch.no_grad(), model.averaged():
        losses = [model.loss(x, generator=gen) for x in val.split(batch_size)]
    return float(torch.cat(losses).double().mean())


def test_val_loss_is_the_mean_loss_of_the_ema_weights_with_fixed_noise():
    x, val = gaussian_data(512), gaussian_data(100, seed=1)
    model = GaussianFit(noise_std=0.3)
    result = fit(model, x, quiet(steps=20, batch_size=64, lr=0.05, log_every=5, val_every=10,
                                 ema_decay=0.9), val_data=val)  # fmt: skip
    measured = {row["step"]: row.get("val_loss") for row in result.history}
    assert measured[5] is None and measured[15] is None
    assert measured[10] is not None and measured[20] is not None
    assert measured[20] == pytest.approx(held_out_loss(model, val, 64), abs=1e-9)
    # ... with the EMA weights: the raw weights give another number.
    raw = GaussianFit(noise_std=0.3)
    raw.load_state_dict(model.state_dict())
    assert abs(held_out_loss(raw, val, 64) - measured[20]) > 1e-4
    judged = {step: value for step, value in measured.items() if value is not None}
    best_step = min(judged, key=judged.__getitem__)
    assert result.best == {"step": best_step, "val_loss": judged[best_step]}


def test_val_data_as_dataset_or_loader_gives_the_tensors_figure():
    """A Dataset is batched like the tensor (so even the loss noise matches); a user's
    DataLoader is iterated as given (noise-free loss here: its batches differ)."""
    x, val = gaussian_data(256), gaussian_data(50, seed=1)
    options = dict(steps=10, batch_size=16, lr=0.05, log_every=5)

    def curve(model: GaussianFit, held_out) -> list[float]:
        return [
            row["val_loss"] for row in fit(model, x, quiet(**options), val_data=held_out).history
        ]

    noisy = curve(GaussianFit(noise_std=0.3), val)
    assert curve(GaussianFit(noise_std=0.3), TensorDataset(val)) == noisy
    exact = curve(GaussianFit(), val)
    loader = DataLoader(TensorDataset(val), batch_size=7)
    assert curve(GaussianFit(), loader) == pytest.approx(exact, rel=1e-6)
    with pytest.raises(ValueError, match="yielded no batch"):
        fit(GaussianFit(), x, quiet(**options), val_data=DataLoader(TensorDataset(val[:0])))


def test_validation_does_not_perturb_the_training_run():
    x, val = gaussian_data(512), gaussian_data(100, seed=1)
    options = dict(steps=30, batch_size=32, lr=0.05, log_every=5, ema_decay=0.9)
    plain, judged = GaussianFit(noise_std=0.3), GaussianFit(noise_std=0.3)
    expected = fit(plain, x, quiet(**options))
    result = fit(judged, x, quiet(**options, keep_best=False), val_data=val)
    assert_same_tensors(weights_of(judged), weights_of(plain))
    assert [r["loss"] for r in result.history] == [r["loss"] for r in expected.history]


@pytest.mark.parametrize("ema_decay", [None, 0.8])
def test_keep_best_ends_with_the_weights_of_the_lowest_val_loss(ema_decay):
    x, val = drift_data()
    last, best = GaussianFit(), GaussianFit()
    plain = fit(last, x, quiet(**DRIFT, ema_decay=ema_decay), val_data=val)
    kept = fit(best, x, quiet(**DRIFT, ema_decay=ema_decay, keep_best=True), val_data=val)
    curve = [row["val_loss"] for row in kept.history]
    assert [row["val_loss"] for row in plain.history] == curve
    low = min(range(len(curve)), key=curve.__getitem__)
    # The curve falls, then rises: its best lies strictly inside the run.
    assert 0 < low < len(curve) - 1 and curve[-1] > curve[low] + 0.05
    assert kept.best == {"step": kept.history[low]["step"], "val_loss": curve[low]}
    assert held_out_loss(best, val, 64) == pytest.approx(curve[low], abs=1e-9)
    assert held_out_loss(last, val, 64) == pytest.approx(curve[-1], abs=1e-9)
    with torch.no_grad(), best.averaged(), last.averaged():  # an earlier point of the walk
        assert float(best.mu.mean()) < float(last.mu.mean()) - 0.2


def test_keep_best_survives_an_interruption_bit_identical(tmp_path):
    x, val = drift_data()
    options = dict(**DRIFT, ema_decay=0.8, keep_best=True, checkpoint_every=10)
    reference = GaussianFit()
    expected = fit(reference, x, quiet(**options, out_dir=tmp_path / "a"), val_data=val)
    assert 10 < expected.best["step"] < 50

    crashing = GaussianFit()
    # Loss call 93 is step 53's: every 5 steps are 5 training calls and 4 held-out batches.
    crashing.fault = (93, "interrupt")
    config = quiet(**options, out_dir=tmp_path / "b")
    with pytest.raises(Interrupted):
        fit(crashing, x, config, val_data=val)
    saved = load_checkpoint(latest_checkpoint(tmp_path / "b"), GaussianFit())
    assert saved.step == 50 and saved.loop_state["best"] == expected.best
    assert set(saved.best_weights) == {"mu", "log_std"}
    resumed = GaussianFit()
    result = fit(resumed, x, config, val_data=val)
    assert result.resumed_from == 50 and result.best == expected.best
    assert_same_tensors(resumed.ema_state, reference.ema_state)
    assert_same_tensors(weights_of(resumed), weights_of(reference))


def test_flow_model_saves_its_best_weights_and_data_split_keeps_the_units(tmp_path):
    data = load_data("moons", n=400, generator=torch.Generator().manual_seed(0))
    train, val = data.split(0.25, seed=1)
    assert (len(train), len(val)) == (300, 100)
    rows = {tuple(r) for r in data.x.tolist()}
    assert {tuple(r) for r in train.x.tolist()} | {tuple(r) for r in val.x.tolist()} == rows
    assert not {tuple(r) for r in train.x.tolist()} & {tuple(r) for r in val.x.tolist()}
    assert train.normalizer.to_dict() == val.normalizer.to_dict() == data.normalizer.to_dict()

    torch.manual_seed(0)
    model = FlowModel(2, net=MLP(2, hidden=32, depth=2))
    result = model.fit(train, val_data=val, steps=60, batch_size=64, log_every=20,
                       keep_best=True, out_dir=tmp_path / "run", progress=False)  # fmt: skip
    assert [r["step"] for r in result.history] == [20, 40, 60]
    assert all(math.isfinite(r["val_loss"]) for r in result.history)
    loaded = FlowModel.load(tmp_path / "run" / "model.safetensors")
    assert_same_tensors(loaded.ema_state, model.ema_state)
    # A held-out Data in other units is refused.
    other = load_data("moons", n=100, generator=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="training data's units"):
        FlowModel(2).fit(train, val_data=other, steps=1)


def test_bad_validation_settings_and_data_are_clear_errors():
    x, val = gaussian_data(64), gaussian_data(16, seed=1)
    cases = [
        (GaussianFit(), x, None, dict(keep_best=True), "keep_best=True needs held-out data"),
        (GaussianFit(), x, None, dict(val_every=10), "val_every=10 needs held-out data"),
        (GaussianFit(), x, val, dict(log_every=4, val_every=6), r"multiple of log_every \(4\)"),
        (TwoPhase(), x, val, {}, "2 optim groups"),
        (GaussianFit(), x, val[:, :1], {}, r"val_data must have shape \(B, 2\)"),
        (GaussianFit(), x, val[:0], {}, "val_data is empty"),
        (GaussianFit(), x, (val, torch.zeros(16)), {}, "unconditional"),
        (GaussianFit(), x, [val], {}, "pair"),
    ]
    for model, data, held_out, options, message in cases:
        with pytest.raises(ValueError, match=message):
            fit(model, data, quiet(steps=2, **options), val_data=held_out)
    with pytest.raises(TypeError, match="val_data must be a tensor"):
        fit(GaussianFit(), x, quiet(steps=2), val_data="val.npy")
    bad = val.clone()
    bad[3, 1] = math.nan
    with pytest.raises(ValueError, match="val_data"):
        fit(GaussianFit(), x, quiet(steps=2), val_data=bad)
    for field, value in (("val_every", 0), ("keep_best", "yes")):
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: value})


def test_non_finite_val_loss_stops_the_run_naming_the_step():
    x, val = gaussian_data(64), gaussian_data(16, seed=1)
    model = GaussianFit()
    model.fault = (4, "nan")  # calls 1-3 are training steps, call 4 is the first validation
    with pytest.raises(TrainingDiverged, match=r"step 3 \(phase 'model on val_data'\)"):
        fit(model, x, quiet(steps=6, log_every=3), val_data=val)


def test_data_split_rejects_bad_fractions():
    data = load_data("moons", n=10)
    for fraction in (0.0, 1.0, -0.5, "half"):
        with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\)"):
            data.split(fraction)
    with pytest.raises(ValueError, match="keep some to train on"):
        load_data("moons", n=2).split(0.9)
    train, val = load_data("digits").split(0.1)
    assert train.y is not None and len(val.y) == len(val) == 180
