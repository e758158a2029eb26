"""2D toy samplers: shapes, determinism, and each set's geometry against its stated closed form.

Every statistical check draws a few thousand points at a fixed seed; tolerances are at least four
standard errors wide (stated next to each), so they hold for any seed, not just this one.
"""

import math

import pytest
import torch

from flowdiff.data import sample_toy, toy_mixture, toy_names, toy_num_classes

N = 8000


def draw(name: str, n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    return sample_toy(name, n, torch.Generator().manual_seed(seed), return_labels=True)


def distance_to_curve(x: torch.Tensor, curve: torch.Tensor) -> torch.Tensor:
    """Distance from each point ``(n, 2)`` to a densely sampled curve ``(m, 2)``: ``(n,)``."""
    return torch.cdist(x.double(), curve.double()).min(dim=1).values


def test_names() -> None:
    expected = {"8gaussians", "gmm", "moons", "circles", "checkerboard", "spirals"}
    expected |= {"swissroll", "pinwheel", "rings", "scurve"}
    assert set(toy_names()) == expected


@pytest.mark.parametrize("name", toy_names())
def test_shape_labels_and_determinism(name: str) -> None:
    x, y = draw(name, 500, seed=7)
    assert x.shape == (500, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    k = toy_num_classes(name)
    if k is None:
        assert y is None
    else:
        assert y.shape == (500,) and y.dtype == torch.long
        assert set(y.tolist()) == set(range(k))  # 500 points hit every class of <= 8
    x2, y2 = draw(name, 500, seed=7)
    assert torch.equal(x, x2) and (y is None or torch.equal(y, y2))
    assert not torch.equal(x, draw(name, 500, seed=8)[0])
    # Every set is scaled to about [-4, 4]^2: nothing beyond 4 + 4 noise stds of any set.
    assert x.abs().max() < 6.0
    # Without return_labels only the points come back, the same ones.
    assert torch.equal(sample_toy(name, 500, torch.Generator().manual_seed(7)), x)


def test_8gaussians_modes() -> None:
    x, y = draw("8gaussians", 16000)
    for k in range(8):
        pts = x[y == k]
        angle = 2 * math.pi * k / 8
        centre = 4.0 * torch.tensor([math.cos(angle), math.sin(angle)])
        # ~2000 points per mode: SE of the mean 0.011, of the std 0.008.
        assert torch.allclose(pts.mean(0), centre, atol=0.05)
        assert torch.allclose(pts.std(0), torch.full((2,), 0.5), atol=0.04)


def test_gmm_moments_and_weights() -> None:
    x, y = draw("gmm", 20000)
    mixture = toy_mixture("gmm")
    # Closed-form mixture moments (within + between component covariance); SE ~ 0.015.
    assert torch.allclose(x.mean(0), mixture.mean().float(), atol=0.07)
    assert torch.allclose(x.T.cov(), mixture.covariance().float(), atol=0.12)
    freq = torch.bincount(y, minlength=3).float() / len(y)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.02)  # SE 0.0035


def test_moons_are_half_circles() -> None:
    x, y = draw("moons")
    # sklearn's moons: unit half circles centred at (0, 0) (upper) and (1, 0.5) (lower),
    # shifted by -(0.5, 0.25) and scaled by 2.5; the noise std becomes 0.125.
    centres = {0: torch.tensor([-1.25, -0.625]), 1: torch.tensor([1.25, 0.625])}
    for label, centre in centres.items():
        rel = x[y == label] - centre
        assert abs(rel.norm(dim=1).mean() - 2.5) < 0.02  # SE 0.0025
        side = rel[:, 1] if label == 0 else -rel[:, 1]
        assert (side > -0.4).float().mean() > 0.99  # on its half, up to 3 noise stds


def test_circles_radii() -> None:
    x, y = draw("circles")
    r = x.norm(dim=1)
    assert abs(r[y == 0].mean() - 3.5) < 0.02  # outer, noise std 0.07: SE 0.0015
    assert abs(r[y == 1].mean() - 1.75) < 0.02
    assert abs(r[y == 0].std() - 0.07) < 0.01


def test_checkerboard_support() -> None:
    x, _ = draw("checkerboard")
    assert (x.abs() <= 4).all()
    col = torch.floor((x[:, 0] + 4) / 2).long()
    row = torch.floor((x[:, 1] + 4) / 2).long()
    assert ((col + row) % 2 == 0).all()  # no point in an empty square
    freq = torch.bincount(4 * row + col, minlength=16).float() / len(x)
    filled = freq[(torch.arange(16) // 4 + torch.arange(16) % 4) % 2 == 0]
    assert torch.allclose(filled, torch.full((8,), 1 / 8), atol=0.02)  # SE 0.0037


def test_spirals_on_their_curves() -> None:
    x, y = draw("spirals")
    theta = torch.linspace(0, 3 * math.pi, 4000)
    r = 4 * theta / (3 * math.pi)
    spiral = torch.stack([r * theta.cos(), r * theta.sin()], dim=1)
    to_first, to_second = distance_to_curve(x, spiral), distance_to_curve(x, -spiral)
    own = torch.where(y == 0, to_first, to_second)
    other = torch.where(y == 0, to_second, to_first)
    # Noise std 0.1: the normal offset is |N(0, 0.1^2)|, median 0.067, 99th percentile 0.26.
    assert own.median() < 0.09 and own.quantile(0.99) < 0.35
    assert (own < other).float().mean() > 0.97  # the arms meet only at the centre


def test_swissroll_on_its_curve() -> None:
    x, _ = draw("swissroll")
    t = torch.linspace(1.5 * math.pi, 4.5 * math.pi, 4000)
    roll = torch.stack([t * t.cos(), t * t.sin()], dim=1) / 3.5
    d = distance_to_curve(x, roll)
    assert d.quantile(0.99) < 0.5  # noise std 0.5 / 3.5 = 0.14; 99% of |N| below 0.37


def test_scurve_on_its_curve() -> None:
    x, _ = draw("scurve")
    t = torch.linspace(-1.5 * math.pi, 1.5 * math.pi, 4000)
    curve = 2 * torch.stack([t.sin(), t.sign() * (t.cos() - 1)], dim=1)
    assert distance_to_curve(x, curve).quantile(0.99) < 0.35  # noise std 0.1


def test_pinwheel_arms_bend_by_the_stated_twist() -> None:
    x, y = draw("pinwheel")
    rho = x.norm(dim=1) / 2  # ~ the radial coordinate (the tangential one is 6x smaller)
    predicted = 2 * math.pi * y / 5 + 0.25 * rho.exp()
    residual = torch.remainder(torch.atan2(x[:, 1], x[:, 0]) - predicted + math.pi, 2 * math.pi)
    residual = residual - math.pi
    # residual ~ atan(tau / rho) with tau ~ N(0, 0.05^2), rho ~ 1: a std of about 0.05.
    assert residual.abs().median() < 0.06 and residual.abs().quantile(0.99) < 0.3
    assert abs(rho.mean() - 1.0) < 0.02 and abs(rho.std() - 0.3) < 0.02


def test_rings_radii_and_mass() -> None:
    x, y = draw("rings")
    freq = torch.bincount(y, minlength=4).float() / len(y)
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.02)  # SE <= 0.0055
    r = x.norm(dim=1)
    for k in range(4):
        assert abs(r[y == k].mean() - (k + 1)) < 0.02  # noise std 0.08: SE 0.003


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="did you mean 'moons'"):
        sample_toy("moon", 10)
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        sample_toy("rings", 0)
    with pytest.raises(ValueError, match=r"n must be a positive int, got 2\.5"):
        sample_toy("rings", 2.5)
    with pytest.raises(TypeError, match="toy set must be a string"):
        sample_toy(3, 10)
    with pytest.raises(ValueError, match="not a Gaussian mixture"):
        toy_mixture("moons")
