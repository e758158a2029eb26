"""Sample metrics against closed forms: Bures W2, shifted sets, RBF MMD between Gaussians,
scipy's energy distance, Frechet distance between Gaussians, bits per dim of known densities."""

from __future__ import annotations

import math
import os
import sys
import types
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from flowdiff.metrics import (
    DEFAULT_BANDWIDTHS,
    bits_per_dim,
    check_inception_fid,
    energy_distance,
    floor,
    frechet_distance,
    gaussian_frechet_distance,
    get_metric,
    inception_frechet_distance,
    median_heuristic,
    mmd,
    nll,
    sliced_wasserstein,
    wasserstein2,
)


def _gaussian(n: int, mean: torch.Tensor, cov: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    z = torch.randn((n, mean.shape[0]), generator=gen, dtype=torch.float64)
    return mean.double() + z @ torch.linalg.cholesky(cov.double()).T


MEAN_A = torch.tensor([0.0, 0.0])
MEAN_B = torch.tensor([1.5, -0.5])
COV_A = torch.tensor([[1.0, 0.6], [0.6, 0.8]])
COV_B = torch.tensor([[0.5, -0.2], [-0.2, 1.5]])  # does not commute with COV_A


# ---------------------------------------------------------------------------- Wasserstein
def test_w2_of_a_translated_set_is_the_translation(gen: torch.Generator) -> None:
    # For any point set, W2(x, x + s) = |s|: the identity matching is optimal because
    # E|X - Y - s|^2 = E|X - Y|^2 + |s|^2 for any coupling of two equal-mean sets.
    x = torch.randn(150, 2, 3, generator=gen, dtype=torch.float64)  # events of shape (2, 3)
    shift = torch.tensor([[0.3, -1.2, 0.5], [2.0, 0.0, -0.7]], dtype=torch.float64)
    y = (x + shift)[torch.randperm(150, generator=gen)]
    assert wasserstein2(x, y) == pytest.approx(float(shift.norm()), rel=1e-9)
    assert wasserstein2(x, x[torch.randperm(150, generator=gen)]) == pytest.approx(0.0, abs=1e-7)


def test_w2_and_sliced_agree_in_one_dimension_with_unequal_sizes(gen: torch.Generator) -> None:
    # In 1-d both are exact (quantile matching vs the transport LP): two independent codes.
    x = torch.randn(60, generator=gen, dtype=torch.float64)
    y = 0.5 + 2.0 * torch.rand(45, generator=gen, dtype=torch.float64)
    w2 = wasserstein2(x, y)
    assert sliced_wasserstein(x[:, None], y[:, None], n_projections=3) == pytest.approx(
        w2, rel=1e-9
    )
    # Equal sizes: the sorted matching by hand.
    x2, y2 = x[:45].sort().values, y.sort().values
    exact = float((x2 - y2).square().mean().sqrt())
    assert wasserstein2(x[:45], y) == pytest.approx(exact, rel=1e-9)


def test_w2_between_gaussian_samples_matches_bures_formula(gen: torch.Generator) -> None:
    truth = math.sqrt(gaussian_frechet_distance(MEAN_A, COV_A, MEAN_B, COV_B))  # 1.758
    x = _gaussian(1000, MEAN_A, COV_A, gen)
    y = _gaussian(1000, MEAN_B, COV_B, gen)
    # Over seeds 0..5 the N=1000 estimate fell within 2.5% of the formula (biased upwards).
    assert wasserstein2(x, y) == pytest.approx(truth, rel=0.06)


# ---------------------------------------------------------------------------- sliced W
def test_sliced_w2_of_a_shift_is_the_mean_projected_shift(gen: torch.Generator) -> None:
    # Each projection is shifted by theta.s, so SW2^2 = E (theta.s)^2 = |s|^2 / D.
    x = torch.randn(100, 3, generator=gen)
    shift = torch.tensor([1.0, -2.0, 0.5])
    sw = sliced_wasserstein(x, x + shift, n_projections=20_000, generator=gen)
    # Monte Carlo over directions: relative std of the mean of (theta.s)^2 ~ 0.9 / sqrt(20000).
    assert sw**2 == pytest.approx(float(shift.square().sum()) / 3, rel=0.03)
    # p = 1 in one dimension: W1 of a shift is the shift.
    assert sliced_wasserstein(x[:, :1], x[:, :1] + 0.7, p=1) == pytest.approx(0.7, rel=1e-6)
    seeded = [sliced_wasserstein(x, x + shift, generator=torch.Generator().manual_seed(3))]
    seeded.append(sliced_wasserstein(x, x + shift, generator=torch.Generator().manual_seed(3)))
    assert seeded[0] == seeded[1]


# ---------------------------------------------------------------------------- MMD
def _rbf_mmd2_between_gaussians(delta: float, dim: int, var: float) -> float:
    """MMD^2 between N(0, var I) and N(delta e_1, var I) for the default RBF mixture.

    E exp(-|Z|^2 / (2h^2)) for Z ~ N(m, v I) in D dims is (h^2/(h^2+v))^(D/2)
    exp(-|m|^2 / (2(h^2+v))); X - X' and X - Y are N(0 or m, 2 var I).
    """

    def expected_kernel(m2: float) -> float:
        v = 2 * var
        return sum(
            (h * h / (h * h + v)) ** (dim / 2) * math.exp(-m2 / (2 * (h * h + v)))
            for h in DEFAULT_BANDWIDTHS
        ) / len(DEFAULT_BANDWIDTHS)

    return 2 * expected_kernel(0.0) - 2 * expected_kernel(delta**2)


def test_mmd_matches_closed_form_between_shifted_gaussians(gen: torch.Generator) -> None:
    x = torch.randn(2000, 2, generator=gen)
    base = torch.randn(2000, 2, generator=gen)
    estimates = []
    for delta in (0.0, 1.0, 2.0):
        y = base + torch.tensor([delta, 0.0])
        estimates.append(mmd(x, y, unbiased=True))
        truth = _rbf_mmd2_between_gaussians(delta, 2, 1.0)
        # Standard deviation of the U-statistic at N=2000: ~3e-4 at delta=0, ~7% at delta=1.
        assert estimates[-1] == pytest.approx(truth, rel=0.2, abs=1.5e-3), delta
    assert estimates == sorted(estimates)  # monotone in the shift


@pytest.mark.parametrize("dim", [2, 10])
def test_median_heuristic_of_gaussian_samples(gen: torch.Generator, dim: int) -> None:
    # For N(0, s^2 I_D): ||x - x'||^2 / (2 s^2) ~ chi2(D), median distance s sqrt(2 m_D).
    s = 0.7
    x = s * torch.randn(2000, dim, generator=gen, dtype=torch.float64)
    truth = s * math.sqrt(2 * scipy.stats.chi2.median(dim))
    assert median_heuristic(x) == pytest.approx(truth, rel=0.02)
    assert median_heuristic(3 * x) == pytest.approx(3 * median_heuristic(x), rel=1e-12)
    # Only the first max_samples rows count.
    first = torch.pdist(x[:10]).median()
    assert median_heuristic(x, max_samples=10) == pytest.approx(float(first), rel=1e-12)
    with pytest.raises(ValueError, match="max_samples must be an integer >= 2"):
        median_heuristic(x, max_samples=1)
    with pytest.raises(ValueError, match="at least 2 sample"):
        median_heuristic(x[:1])


def test_mmd_of_identical_sets(gen: torch.Generator) -> None:
    x = torch.randn(500, 4, generator=gen)
    assert mmd(x, x) == pytest.approx(0.0, abs=1e-12)  # V-statistic: exactly 0
    # U-statistic: 2 (S - n) / (n (n-1)) - 2 S / n^2 for the kernel sum S; |.| <= 2 / n.
    assert abs(mmd(x, x, unbiased=True)) < 2 / 500
    # The biased estimate exceeds the unbiased one by the diagonal terms: positive bias.
    y = torch.randn(500, 4, generator=gen)
    assert mmd(x, y) > mmd(x, y, unbiased=True)


# ---------------------------------------------------------------------------- energy distance
def test_energy_distance_matches_scipy_in_one_dimension(gen: torch.Generator) -> None:
    x = torch.randn(70, generator=gen, dtype=torch.float64)
    y = 0.3 + 1.5 * torch.randn(40, generator=gen, dtype=torch.float64)
    expected = scipy.stats.energy_distance(x.numpy(), y.numpy())
    assert energy_distance(x, y) == pytest.approx(expected, rel=1e-9)


def test_energy_distance_symmetric_zero_on_identical_positive_otherwise(
    gen: torch.Generator,
) -> None:
    x = torch.randn(300, 3, 2, generator=gen)
    y = torch.randn(250, 3, 2, generator=gen) + 0.2
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x), rel=1e-12)
    assert energy_distance(x, x) == 0.0
    assert energy_distance(x, y) > energy_distance(x[:150], x[150:]) > 0.0


# ---------------------------------------------------------------------------- Frechet
def test_gaussian_frechet_distance_closed_forms() -> None:
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2.
    value = gaussian_frechet_distance(
        torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-1.0]), torch.tensor([[0.25]])
    )
    assert value == pytest.approx(4.0 + 1.5**2, rel=1e-12)
    # Commuting (diagonal) covariances: sum (sqrt a_i - sqrt b_i)^2.
    a, b = torch.tensor([1.0, 2.0, 9.0]), torch.tensor([4.0, 2.0, 1.0])
    value = gaussian_frechet_distance(torch.zeros(3), a.diag(), torch.ones(3), b.diag())
    assert value == pytest.approx(3.0 + float((a.sqrt() - b.sqrt()).square().sum()), rel=1e-12)
    # Non-commuting: the textbook formula with scipy's general matrix square root.
    ca, cb = COV_A.double().numpy(), COV_B.double().numpy()
    cross = scipy.linalg.sqrtm(ca @ cb).real
    expected = float(np.sum((MEAN_A - MEAN_B).numpy() ** 2) + np.trace(ca + cb - 2 * cross))
    assert gaussian_frechet_distance(MEAN_A, COV_A, MEAN_B, COV_B) == pytest.approx(expected)
    # Singular covariances stay real and exact: identical rank-1 Gaussians are at distance 0.
    v = torch.tensor([[1.0], [2.0], [-1.0]])
    assert gaussian_frechet_distance(torch.zeros(3), v @ v.T, torch.zeros(3), v @ v.T) < 1e-9


def test_frechet_distance_of_features(gen: torch.Generator) -> None:
    feats = torch.randn(400, 6, generator=gen, dtype=torch.float64)
    shift = torch.linspace(-1, 1, 6, dtype=torch.float64)
    # Equal sample covariances: only the mean term remains.
    assert frechet_distance(feats, feats + shift) == pytest.approx(float(shift @ shift), rel=1e-8)
    # Large Gaussian samples: the plug-in estimate approaches the closed form.
    x, y = _gaussian(20_000, MEAN_A, COV_A, gen), _gaussian(20_000, MEAN_B, COV_B, gen)
    truth = gaussian_frechet_distance(MEAN_A, COV_A, MEAN_B, COV_B)
    assert frechet_distance(x, y) == pytest.approx(truth, rel=0.03)


# ---------------------------------------------------------------------------- likelihood
def test_nll_and_bits_per_dim_of_known_densities(gen: torch.Generator) -> None:
    # Standard normal on its own samples: E[-log p] = (D/2) log(2 pi e).
    x = torch.randn(20_000, 3, generator=gen, dtype=torch.float64)
    log_prob = -0.5 * x.square().sum(1) - 1.5 * math.log(2 * math.pi)
    entropy = 1.5 * math.log(2 * math.pi * math.e)
    assert nll(log_prob) == pytest.approx(entropy, rel=0.01)
    assert bits_per_dim(log_prob, 3) == pytest.approx(entropy / (3 * math.log(2)), rel=0.01)
    # A uniform density on [0, 1)^D for 8-bit pixels scaled by 1/256 costs exactly 8 bits/dim,
    # and the same density over [-1, 1)^D (value 2^-D) with data_scale 2/256 as well.
    zeros = torch.zeros(10, dtype=torch.float64)
    assert bits_per_dim(zeros, (1, 8, 8), data_scale=1 / 256) == pytest.approx(8.0, rel=1e-12)
    halves = torch.full((10,), -64 * math.log(2.0), dtype=torch.float64)
    assert bits_per_dim(halves, (1, 8, 8), data_scale=2 / 256) == pytest.approx(8.0, rel=1e-12)


def test_likelihood_of_a_graph_is_read_without_warning() -> None:
    # A log_prob straight from a network (RealNVP's) requires grad: read as values, no warning.
    weight = torch.tensor(2.0, requires_grad=True)
    log_prob = weight * torch.tensor([-1.0, -3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nll(log_prob) == pytest.approx(4.0)
        assert bits_per_dim(log_prob, 2) == pytest.approx(4.0 / (2 * math.log(2)))


def test_likelihood_bad_input() -> None:
    with pytest.raises(ValueError, match=r"log_prob must have shape \(B,\), got \(4, 1\)"):
        nll(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="non-finite"):
        nll(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="at least one value"):
        nll(torch.zeros(0))
    with pytest.raises(ValueError, match="data_scale must be a positive"):
        bits_per_dim(torch.zeros(3), 2, data_scale=0.0)
    with pytest.raises(ValueError, match="event_shape"):
        bits_per_dim(torch.zeros(3), (2, 0))


# ---------------------------------------------------------------------------- floor
def test_floor_is_the_metric_between_two_data_samples(gen: torch.Generator) -> None:
    a = torch.randn(400, 2, generator=gen)
    b = torch.randn(400, 2, generator=gen)
    assert floor("energy_distance", a, b) == energy_distance(a, b)
    assert floor(mmd, a, b, bandwidths=(0.5,)) == mmd(a, b, bandwidths=(0.5,))
    # Without a second sample, two disjoint random halves of the first.
    half = floor("wasserstein2", a, generator=torch.Generator().manual_seed(1))
    order = torch.randperm(400, generator=torch.Generator().manual_seed(1))
    assert half == wasserstein2(a[order[:200]], a[order[200:]])
    # The floor shrinks with the sample size (sqrt(N) for the energy distance).
    assert floor("energy_distance", a, b) < floor("energy_distance", a[:50], b[:50])


def test_metric_bad_input(gen: torch.Generator) -> None:
    x = torch.randn(10, 2, generator=gen)
    for metric in (wasserstein2, sliced_wasserstein, mmd, energy_distance, frechet_distance):
        with pytest.raises(ValueError, match=r"same event shape, got \(10, 2\) and \(10, 3\)"):
            metric(x, torch.randn(10, 3, generator=gen))
        with pytest.raises(ValueError, match="non-finite"):
            metric(x, torch.full((10, 2), float("nan")))
        with pytest.raises(ValueError, match="at least"):
            metric(x, torch.zeros(0, 2))
        with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
            metric(x, x.numpy())
    with pytest.raises(ValueError, match="at least 2 sample"):
        mmd(x, x[:1], unbiased=True)
    with pytest.raises(ValueError, match="bandwidths must be positive"):
        mmd(x, x, bandwidths=(1.0, -1.0))
    with pytest.raises(ValueError, match="n_projections must be an integer >= 1"):
        sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(ValueError, match=r"mean_b must have shape \(2,\)"):
        gaussian_frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(2))
    with pytest.raises(ValueError, match=r"unknown metric 'wasserstein'.*did you mean"):
        get_metric("wasserstein")
    with pytest.raises(ValueError, match=r"same shape \(same sample size\)"):
        floor("mmd", x, x[:5])
    with pytest.raises(TypeError, match="metric must be a name or a callable"):
        floor(3, x, x)  # type: ignore[arg-type]


def test_inception_fid_needs_a_weights_file_and_valid_images(tmp_path, gen) -> None:
    images = torch.rand(4, 1, 8, 8, generator=gen)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        inception_frechet_distance(images, images, tmp_path / "missing.pth")
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        inception_frechet_distance(images * 255, images, weights)
    with pytest.raises(ValueError, match=r"shape \(N, 1 or 3, H, W\)"):
        inception_frechet_distance(images[:, 0], images, weights)
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install torchmetrics torch-fidelity"):
            inception_frechet_distance(images, images, weights)
        with pytest.raises(ImportError, match="pip install torchmetrics torch-fidelity"):
            check_inception_fid(weights)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        check_inception_fid(tmp_path / "missing.pth")


def test_inception_fid_passes_images_to_torchmetrics(tmp_path, gen, monkeypatch) -> None:
    """The torchmetrics path, with a stand-in FrechetInceptionDistance (the package is optional):
    the weights file goes to its constructor, grey images go as 3 channels in batches, real and
    fake are flagged, and the result is its compute()."""
    calls: dict[str, list] = {"init": [], "update": []}

    class FakeFID:
        def __init__(self, **kwargs: object) -> None:
            calls["init"].append(kwargs)

        def update(self, images: torch.Tensor, real: bool) -> None:
            calls["update"].append((tuple(images.shape), real))

        def compute(self) -> torch.Tensor:
            return torch.tensor(12.5)

    fid_module = types.ModuleType("torchmetrics.image.fid")
    fid_module.FrechetInceptionDistance = FakeFID
    for name, module in (
        ("torchmetrics", types.ModuleType("torchmetrics")),
        ("torchmetrics.image", types.ModuleType("torchmetrics.image")),
        ("torchmetrics.image.fid", fid_module),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    assert check_inception_fid(weights) == weights
    real, fake = torch.rand(5, 1, 8, 8, generator=gen), torch.rand(3, 1, 8, 8, generator=gen)
    assert inception_frechet_distance(real, fake, weights, batch_size=2) == 12.5
    assert calls["init"] == [
        {"feature": 2048, "normalize": True, "feature_extractor_weights_path": str(weights)}
    ]
    assert calls["update"] == [
        ((2, 3, 8, 8), True),
        ((2, 3, 8, 8), True),
        ((1, 3, 8, 8), True),
        ((2, 3, 8, 8), False),
        ((1, 3, 8, 8), False),
    ]


def test_inception_fid_through_torchmetrics(gen) -> None:
    """The real thing, where torchmetrics is installed and FLOWDIFF_INCEPTION_WEIGHTS names the
    FID Inception weights (nothing is downloaded): noise is far from real-vs-real."""
    pytest.importorskip("torchmetrics")
    weights = os.environ.get("FLOWDIFF_INCEPTION_WEIGHTS")
    if not weights or not os.path.isfile(weights):
        pytest.skip("set FLOWDIFF_INCEPTION_WEIGHTS to the FID Inception weights file")
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().images[:400, None], dtype=torch.float32) / 16
    noise = torch.rand(200, 1, 8, 8, generator=gen)
    same = inception_frechet_distance(digits[:200], digits[200:], weights)
    assert inception_frechet_distance(digits[:200], noise, weights) > 5 * same
