"""Sample-quality and likelihood metrics, as functions on tensors ``(N, *shape)``.

Every sample metric is an estimate whose value at a finite sample size is not zero even for a
perfect model: report it next to its :func:`floor` (the same metric between two independent
data samples of the same size).
"""

from flowdiff.metrics.classifier import (
    FeatureClassifier,
    classifier_accuracy,
    classifier_frechet_distance,
    load_or_train_classifier,
    train_classifier,
)
from flowdiff.metrics.distances import (
    DEFAULT_BANDWIDTHS,
    energy_distance,
    floor,
    get_metric,
    median_heuristic,
    mmd,
    sliced_wasserstein,
    wasserstein2,
)
from flowdiff.metrics.frechet import (
    check_inception_fid,
    frechet_distance,
    gaussian_frechet_distance,
    inception_frechet_distance,
)
from flowdiff.metrics.likelihood import bits_per_dim, nll

__all__ = [
    "DEFAULT_BANDWIDTHS",
    "FeatureClassifier",
    "bits_per_dim",
    "check_inception_fid",
    "classifier_accuracy",
    "classifier_frechet_distance",
    "energy_distance",
    "floor",
    "frechet_distance",
    "gaussian_frechet_distance",
    "get_metric",
    "inception_frechet_distance",
    "load_or_train_classifier",
    "median_heuristic",
    "mmd",
    "nll",
    "sliced_wasserstein",
    "train_classifier",
    "wasserstein2",
]
