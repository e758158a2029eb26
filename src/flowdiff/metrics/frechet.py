"""Frechet distance between Gaussians fitted to two sets of features (Heusel et al., 2017).

``d^2 = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^(1/2) S_b S_a^(1/2))^(1/2))``, which is also the
squared 2-Wasserstein distance between ``N(mu_a, S_a)`` and ``N(mu_b, S_b)`` (the Bures
formula; Dowson & Landau, 1982). FID is this distance in the feature space of Inception-v3; the
library computes it in the feature space of a small classifier it trains itself
(:mod:`flowdiff.metrics.classifier`), and with Inception only where the user has its weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from flowdiff.metrics.samples import as_sample_matrix, paired_sample_matrices
from flowdiff.utils import check_finite, check_tensor

__all__ = [
    "check_inception_fid",
    "frechet_distance",
    "gaussian_frechet_distance",
    "inception_frechet_distance",
]


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition.

    Eigenvalues that rounding made slightly negative are clipped to 0, which keeps the root real
    where ``scipy.linalg.sqrtm`` of a singular covariance returns complex noise.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def gaussian_frechet_distance(
    mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor
) -> float:
    """Squared Frechet (= 2-Wasserstein) distance between ``N(mean_a, cov_a)`` and
    ``N(mean_b, cov_b)``, in float64.

    The trace of ``(S_a S_b)^(1/2)`` is computed as ``tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))``,
    the same number (similar matrices) but the root of a symmetric PSD matrix, hence stable.

    Args:
        mean_a, mean_b: ``(F,)``.
        cov_a, cov_b: ``(F, F)`` symmetric positive semi-definite.

    Returns:
        ``d^2`` (squared, as FID is reported), a Python float ``>= 0``.
    """
    for name, value in (("mean_a", mean_a), ("cov_a", cov_a), ("mean_b", mean_b), ("cov_b", cov_b)):
        check_tensor(value, name)
        check_finite(value, name)
    dim = mean_a.shape[0]
    for name, value, shape in (
        ("mean_a", mean_a, (dim,)),
        ("mean_b", mean_b, (dim,)),
        ("cov_a", cov_a, (dim, dim)),
        ("cov_b", cov_b, (dim, dim)),
    ):
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} to match mean_a, got {tuple(value.shape)}"
            )
    mean_a, mean_b = mean_a.double(), mean_b.double().to(mean_a.device)
    # Symmetrise: a covariance from a float32 pipeline is symmetric only up to rounding.
    cov_a = 0.5 * (cov_a + cov_a.T).double()
    cov_b = 0.5 * (cov_b + cov_b.T).double().to(cov_a.device)
    root_a = _psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    value = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2.0 * cross
    return max(float(value), 0.0)


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Squared Frechet distance between Gaussians fitted to two feature sets (FID's formula).

    Means and unbiased covariances (``1/(N-1)``) of ``feats_a: (N, F)`` and ``feats_b: (M, F)``
    in float64, then :func:`gaussian_frechet_distance`.

    Sample-size caveat: the plug-in estimate is biased upwards by ``O(F / N)`` (Chong & Forsyth,
    2020), so figures are comparable only at equal ``N``; use ``N`` well above ``F`` and report
    the floor (real vs real at the same ``N``, :func:`flowdiff.metrics.floor`).

    Args:
        feats_a: ``(N, *shape)`` features (flattened to ``(N, F)``), ``N >= 2``.
        feats_b: ``(M, *shape)`` features, same ``shape``, ``M >= 2``.
    """
    a, b = paired_sample_matrices(feats_a, feats_b, min_samples=2, names=("feats_a", "feats_b"))
    return gaussian_frechet_distance(
        a.mean(0),
        torch.cov(a.T).reshape(a.shape[1], -1),
        b.mean(0),
        torch.cov(b.T).reshape(b.shape[1], -1),
    )


def check_inception_fid(weights_path: str | os.PathLike) -> Path:
    """The Inception weights file, once it is known to exist and torchmetrics' FID to import.

    Lets a caller (``flowdiff evaluate --inception-weights``) fail before any sampling.
    Nothing is downloaded.

    Raises:
        FileNotFoundError: no file at ``weights_path``.
        ImportError: ``torchmetrics`` (with ``torch-fidelity``) is not installed.
    """
    path = _weights_file(weights_path)
    _fid_metric_class()
    return path


def _weights_file(weights_path: str | os.PathLike) -> Path:
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights file at {path} (nothing is downloaded)")
    return path


def _fid_metric_class() -> type:
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as err:
        raise ImportError(
            "Inception FID needs the optional packages torchmetrics and torch-fidelity "
            "(pip install torchmetrics torch-fidelity)"
        ) from err
    return FrechetInceptionDistance


def inception_frechet_distance(
    real: Tensor, fake: Tensor, weights_path: str | os.PathLike, *, batch_size: int = 64
) -> float:
    """FID with Inception-v3 through ``torchmetrics``, for users who have the weights as a file.

    Nothing is downloaded: ``weights_path`` is the FID Inception checkpoint that torchmetrics /
    torch-fidelity read (``feature_extractor_weights_path``); both packages are optional and
    imported only here. Grey images are repeated to 3 channels; torchmetrics resizes to 299 px.

    Sample-size caveat: FID is biased by ``O(2048 / N)``; use ``N >= 10,000`` and equal sizes,
    and report the floor (real vs real at the same ``N``).

    Args:
        real: ``(N, C, H, W)`` images with values in ``[0, 1]``, ``C`` in ``{1, 3}``.
        fake: ``(M, C, H, W)`` images, same layout.
        weights_path: Inception weights file.
        batch_size: images per feature-extraction batch.
    """
    path = _weights_file(weights_path)
    for name, images in (("real", real), ("fake", fake)):
        as_sample_matrix(images, name, min_samples=2)
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"{name} must have shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
        if float(images.min()) < 0.0 or float(images.max()) > 1.0:
            raise ValueError(
                f"{name} must hold values in [0, 1] for FID, got "
                f"{float(images.min()):.3g}..{float(images.max()):.3g}"
            )
    metric = _fid_metric_class()(
        feature=2048, normalize=True, feature_extractor_weights_path=str(path)
    )
    for images, is_real in ((real, True), (fake, False)):
        for batch in images.split(batch_size):
            metric.update(batch.float().expand(-1, 3, -1, -1), real=is_real)
    return float(metric.compute())
