"""Uniform dequantisation: the noise law, fresh noise at every draw (also through the training
loop's batch path), reproducibility from the seed, and the discrete-likelihood bound against the
exact bin probabilities of a Gaussian."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from flowdiff.data import Dequantized, dequantize, discrete_log_likelihood_bound, load_data
from flowdiff.distributions import IsotropicGaussian

W = 0.25  # grid step


def grid_points(n: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, 3)`` points on the grid ``W * Z``."""
    return torch.randint(-8, 9, (n, 3), generator=gen).float() * W


def test_noise_is_uniform_on_the_bin(gen):
    """``v - x ~ U(-W/2, W/2)``: within the bin, mean 0 and variance W^2/12 (4.5 SE over
    60000 draws; the variance of U's square is W^4/180)."""
    x = grid_points(20_000, gen)
    noise = dequantize(x, W, generator=gen) - x
    assert float(noise.abs().max()) <= W / 2
    n = noise.numel()
    assert abs(float(noise.mean())) < 4.5 * math.sqrt(W**2 / 12 / n)
    var_se = math.sqrt(W**4 / 180 / n)
    assert abs(float(noise.pow(2).mean()) - W**2 / 12) < 4.5 * var_se
    # rounding to the grid gives the points back
    torch.testing.assert_close(torch.round((x + noise) / W) * W, x)


def test_dataset_draws_fresh_noise_every_time_and_replays_from_its_seed(gen):
    x, y = grid_points(6, gen), torch.arange(6)
    # the training loop's path: a DataLoader over batches of indices, one draw per batch
    batches = [[0, 1, 2, 3], [0, 1, 2, 3]]
    loaded = [b for b, _ in DataLoader(Dequantized(x, W, y=y, seed=3), batch_sampler=batches)]
    assert loaded[0].shape == (4, 3) and not torch.equal(loaded[0], loaded[1])
    assert float((loaded[1] - x[:4]).abs().max()) <= W / 2
    again = [b for b, _ in DataLoader(Dequantized(x, W, y=y, seed=3), batch_sampler=batches)]
    assert all(torch.equal(a, b) for a, b in zip(loaded, again))
    # single items (as the loop's first-item check reads them), unlabelled
    data = Dequantized(x, W)
    first, second = data[2], data[2]
    assert len(data) == 6 and first.shape == (3,) and not torch.equal(first, second)
    assert float((first - x[2]).abs().max()) <= W / 2
    assert int(Dequantized(x, W, y=y)[5][1]) == 5


def test_loader_workers_do_not_repeat_each_others_noise(gen):
    """Two workers each fetch one of two identical batches: each worker's copy of the dataset
    must draw its own noise (copies of one generator would give equal batches)."""
    x = grid_points(4, gen)
    torch.manual_seed(0)  # the workers' seeds derive from the main process's generator
    loader = DataLoader(Dequantized(x, W), batch_sampler=[[0, 1, 2, 3]] * 2, num_workers=2)
    first, second = list(loader)
    assert not torch.equal(first, second)
    assert float((first - x).abs().max()) <= W / 2


def test_bound_is_below_the_exact_bin_probability_and_close_to_it(gen):
    """For p = N(0, 1) in 1D the grid point x has probability P(x) = Phi(x + W/2) - Phi(x - W/2);
    the bound E_u[log p(x + u)] + log W is below it (Jensen) by about W^2 x^2 / 24."""
    normal = torch.distributions.Normal(0.0, 1.0)
    x = torch.arange(-8, 9, dtype=torch.float64).unsqueeze(1) * W  # (17, 1)
    draws = 4000
    v = dequantize(x.repeat(draws, 1), W, generator=gen)
    log_p = IsotropicGaussian(1).log_prob(v)
    bound = discrete_log_likelihood_bound(log_p, W, 1).reshape(draws, len(x))
    mean, se = bound.mean(0), bound.std(0) / math.sqrt(draws)
    exact = torch.log(normal.cdf(x[:, 0] + W / 2) - normal.cdf(x[:, 0] - W / 2))
    gap = exact - mean
    assert bool((gap > -4 * se).all())
    assert bool((gap < W**2 * x[:, 0] ** 2 / 24 + 4 * se + 1e-3).all())
    # D dimensions add D log W
    flat = torch.zeros(5)
    torch.testing.assert_close(
        discrete_log_likelihood_bound(flat, W, 64), torch.full((5,), 64 * math.log(W))
    )


def test_bad_input_is_rejected():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="bin_width must be a number in"):
        dequantize(x, 0.0)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        dequantize(torch.zeros(4, 3, dtype=torch.long), W)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        Dequantized(torch.zeros(4, 3, dtype=torch.long), W)
    with pytest.raises(ValueError, match=r"y must be a tensor of shape \(4,\), got \(3,\)"):
        Dequantized(x, W, y=torch.zeros(3))
    with pytest.raises(ValueError, match="x has 1 non-finite"):
        Dequantized(torch.tensor([[0.0, float("nan")]]), W)
    with pytest.raises(ValueError, match=r"log_prob must have shape \(B,\)"):
        discrete_log_likelihood_bound(torch.zeros(2, 2), W, 4)
    with pytest.raises(ValueError, match="dim must be an integer >= 1"):
        discrete_log_likelihood_bound(torch.zeros(2), W, 0)


# ---------------------------------------------------------------------- Data.bin_width and fit
def test_data_knows_its_grid_step(tmp_path):
    """One raw grid step (1) in model units, where the normaliser scales all entries alike."""
    assert load_data("digits").bin_width == pytest.approx(2 / 16)
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 1, 4, 4)).astype(np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)
    assert load_data(tmp_path / "pixels.npy").bin_width == pytest.approx(2 / 255)
    counts = np.random.default_rng(1).integers(0, 9, size=(50, 3)).astype(np.float64)
    np.save(tmp_path / "counts.npy", counts)
    assert load_data(tmp_path / "counts.npy", normalize="none").bin_width == 1.0
    assert load_data(tmp_path / "counts.npy").bin_width is None  # per-feature scales
    assert load_data("moons").bin_width is None  # continuous


def test_fit_dequantized_reaches_the_dequantised_optimum(tmp_path):
    """A Gaussian fitted by maximum likelihood to x + U(-1/2, 1/2) (fresh at every draw) has
    std^2 = var(x) + 1/12 (closed form), against var(x) without dequantisation; the held-out
    Data is dequantised once, with noise from its own stream of the run's seed."""
    from flowdiff.train.seeding import derive_seed
    from test_train import GaussianFit
    from test_train_validation import held_out_loss

    levels = np.random.default_rng(2).integers(0, 4, size=(4000, 2)).astype(np.float64)
    np.save(tmp_path / "levels.npy", levels)
    data = load_data(tmp_path / "levels.npy", normalize="none")
    train, val = data.split(0.1, seed=3)
    var = train.x.var(0, unbiased=False)
    options = dict(steps=600, batch_size=256, lr=0.05, warmup_steps=20, lr_schedule="cosine",
                   ema_decay=0.99, log_every=600, progress=False)  # fmt: skip
    for noisy, std_star in ((False, var.sqrt()), (True, (var + 1 / 12).sqrt())):
        model = GaussianFit()
        result = model.fit(train, val_data=val, dequantize=noisy, **options)
        with torch.no_grad(), model.averaged():
            # 1/12 moves std by 0.036 here; measured errors 0.0002 and 0.002.
            torch.testing.assert_close(model.log_std.exp(), std_star, atol=0.013, rtol=0)
    val_noise = torch.Generator().manual_seed(derive_seed(0, "dequantize", "val"))
    noisy_val = dequantize(val.x, 1.0, generator=val_noise)
    assert result.history[-1]["val_loss"] == pytest.approx(held_out_loss(model, noisy_val, 256))
    assert result.history[-1]["val_loss"] != pytest.approx(held_out_loss(model, val.x, 256))

    with pytest.raises(ValueError, match=r"needs data as a flowdiff\.data\.Data"):
        GaussianFit().fit(train.x, dequantize=True, steps=1)
    with pytest.raises(ValueError, match="bin_width=None"):
        GaussianFit().fit(load_data("moons", n=10), dequantize=True, steps=1)
