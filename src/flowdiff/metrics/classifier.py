"""A small image classifier the library trains itself, for sample-quality metrics.

No pretrained weights are ever downloaded: :func:`train_classifier` fits a small CNN on the real
data (8x8 digits in seconds, 28x28 MNIST-format files in minutes on a CPU), and
:func:`load_or_train_classifier` caches it at a path the user chooses (one safetensors file with
a JSON header; loading never unpickles). Its penultimate activations are the feature space of
:func:`classifier_frechet_distance` (FID's formula, with this network in place of Inception), and
its predictions give :func:`classifier_accuracy` of class-conditional samples.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowdiff.io import atomic_write
from flowdiff.metrics.frechet import frechet_distance
from flowdiff.utils import check_finite, check_tensor, positive_int, shape_tuple

__all__ = [
    "FeatureClassifier",
    "classifier_accuracy",
    "classifier_frechet_distance",
    "load_or_train_classifier",
    "train_classifier",
]

_FORMAT = "flowdiff.classifier/1"


class FeatureClassifier(nn.Module):
    """CNN classifier for images ``(B, C, H, W)``; its last hidden layer is the feature map.

    ``standardise -> conv3x3(C->w) -> conv3x3 stride 2 (w->2w) -> conv3x3 stride 2 (2w->2w)
    -> adaptive average pool to 2x2 -> linear (8w -> feature_dim) = features -> linear
    (feature_dim -> num_classes) = logits``, SiLU after every hidden layer. Inputs are
    standardised per channel with the mean and std of the training images (stored buffers), so
    real data and samples must be given in the same units as the training images.

    Args:
        in_channels: image channels ``C``.
        image_size: ``(H, W)`` of the images it accepts (at least 4 px each).
        num_classes: number of classes.
        width: channels ``w`` of the first convolution.
        feature_dim: size of the feature vector.
    """

    input_mean: Tensor
    input_std: Tensor

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int | Sequence[int] = (8, 8),
        num_classes: int = 10,
        width: int = 32,
        feature_dim: int = 64,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("width", width),
            ("feature_dim", feature_dim),
        ):
            positive_int(value, name)
        positive_int(num_classes, "num_classes", minimum=2)
        size = shape_tuple(
            (image_size, image_size) if isinstance(image_size, int) else image_size, "image_size"
        )
        if len(size) != 2 or min(size) < 4:
            raise ValueError(f"image_size must be (H, W) with H, W >= 4, got {image_size!r}")
        self.image_size = size
        self.num_classes = num_classes
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            # 2x2 rather than 1x1: where a stroke sits tells a 6 from a 9.
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * width, feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("input_mean", torch.zeros(in_channels))
        self.register_buffer("input_std", torch.ones(in_channels))
        self.config = {
            "in_channels": in_channels,
            "image_size": list(size),
            "num_classes": num_classes,
            "width": width,
            "feature_dim": feature_dim,
        }
        # Filled by train_classifier / load: what the weights were fitted on and how.
        self.train_settings: dict[str, Any] = {}
        self.data_sha256: str | None = None

    def _check_images(self, x: Tensor, name: str = "x") -> Tensor:
        check_tensor(x, name)
        expected = (self.config["in_channels"], *self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{name} must have shape (B, {', '.join(map(str, expected))}) for this "
                f"classifier, got {tuple(x.shape)}"
            )
        return check_finite(x, name)

    def features(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> penultimate activations ``(B, feature_dim)``."""
        self._check_images(x)
        mean, std = self.input_mean[:, None, None], self.input_std[:, None, None]
        return self.trunk((x.to(mean.dtype) - mean) / std)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> class logits ``(B, num_classes)``."""
        return self.head(self.features(x))

    @torch.no_grad()
    def predict(self, x: Tensor, *, batch_size: int = 1024) -> Tensor:
        """Most likely class ``(B,)`` (int64), in eval mode, ``batch_size`` images at a time."""
        return _batched(lambda batch: self(batch).argmax(dim=1), self, x, batch_size)

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike) -> Path:
        """Weights as safetensors with a JSON header (config, training settings, data hash);
        written atomically."""
        from safetensors.torch import save_file

        header = {
            "format": _FORMAT,
            "config": self.config,
            "train_settings": self.train_settings,
            "data_sha256": self.data_sha256,
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        path = Path(path)
        with atomic_write(path) as tmp:
            save_file(tensors, str(tmp), metadata={"flowdiff": json.dumps(header)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureClassifier:
        """Rebuild a classifier written by :meth:`save` (on the CPU, in eval mode)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no saved classifier at {p}")
        try:
            with safe_open(str(p), framework="pt") as fh:
                meta = fh.metadata() or {}
            tensors = load_file(str(p))
        except Exception as err:  # safetensors raises its own error types on corrupt files
            raise ValueError(f"{p} is not a readable safetensors file: {err}") from err
        header = json.loads(meta.get("flowdiff", "{}"))
        if header.get("format") != _FORMAT:
            raise ValueError(
                f"{p} is not a flowdiff classifier (format {header.get('format')!r}, "
                f"expected {_FORMAT!r})"
            )
        classifier = cls(**header["config"])
        classifier.load_state_dict(tensors)
        classifier.train_settings = header["train_settings"]
        classifier.data_sha256 = header["data_sha256"]
        return classifier.eval()


def _batched(
    fn: Callable[[Tensor], Tensor], classifier: FeatureClassifier, x: Tensor, batch_size: int
) -> Tensor:
    """``fn`` applied ``batch_size`` rows at a time in eval mode, concatenated."""
    check_tensor(x, "x")
    positive_int(batch_size, "batch_size")
    was_training = classifier.training
    classifier.eval()
    try:
        device = classifier.input_mean.device
        return torch.cat([fn(batch.to(device)) for batch in x.split(batch_size)])
    finally:
        classifier.train(was_training)


def _check_labels(y: Tensor, n: int, num_classes: int | None, name: str = "y") -> Tensor:
    if not isinstance(y, Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        kind = f"dtype {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
        raise TypeError(f"{name} must be an integer tensor of labels, got {kind}")
    if tuple(y.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the images, got {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes)):
        upper = "inf" if num_classes is None else num_classes
        raise ValueError(f"{name} must lie in [0, {upper}), got {int(y.min())}..{int(y.max())}")
    return y.long()


def train_classifier(
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int | None = None,
    steps: int = 500,
    batch_size: int = 128,
    lr: float = 3e-3,
    width: int = 32,
    feature_dim: int = 64,
    generator: torch.Generator | None = None,
) -> FeatureClassifier:
    """Fit a :class:`FeatureClassifier` on labelled images by cross-entropy.

    Adam with a cosine learning-rate decay over ``steps`` minibatches drawn with replacement.
    The initial weights and the batches come from ``generator`` (the global RNG is left as it
    was), so a fixed seed gives the same classifier. On scikit-learn's 8x8 digits 500 steps take
    a few seconds and reach about 97% held-out accuracy.

    Args:
        x: ``(N, C, H, W)`` images, in the units the samples will later be given in.
        y: ``(N,)`` integer labels in ``[0, num_classes)``.
        num_classes: default ``max(y) + 1``.
        steps, batch_size, lr: optimisation settings.
        width, feature_dim: network size (see :class:`FeatureClassifier`).
        generator: source of randomness.

    Returns:
        the trained classifier, in eval mode, on ``x``'s device.
    """
    check_tensor(x, "x")
    if x.dim() != 4 or x.shape[0] < 2:
        raise ValueError(
            f"x must be images of shape (N, C, H, W) with N >= 2, got {tuple(x.shape)}"
        )
    check_finite(x, "x")
    y = _check_labels(y, x.shape[0], num_classes)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    positive_int(steps, "steps")
    positive_int(batch_size, "batch_size")
    if not (isinstance(lr, float) and lr > 0):
        raise ValueError(f"lr must be a positive float, got {lr!r}")

    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = FeatureClassifier(
            x.shape[1], tuple(x.shape[2:]), num_classes, width=width, feature_dim=feature_dim
        ).to(x.device)
    with torch.no_grad():
        classifier.input_mean.copy_(x.mean(dim=(0, 2, 3)))
        # A constant channel would divide by 0; its scale is irrelevant, so use 1.
        std = x.std(dim=(0, 2, 3))
        classifier.input_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    classifier.train()
    for _ in range(steps):
        index = torch.randint(0, x.shape[0], (batch_size,), generator=generator).to(x.device)
        loss = F.cross_entropy(classifier(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    classifier.train_settings = {"steps": steps, "batch_size": batch_size, "lr": lr}
    return classifier.eval()


def _data_sha256(x: Tensor, y: Tensor) -> str:
    """Fingerprint of a labelled data set (shapes, float32 values, labels)."""
    digest = hashlib.sha256(repr((tuple(x.shape), tuple(y.shape))).encode())
    digest.update(x.detach().cpu().float().contiguous().numpy().tobytes())
    digest.update(y.detach().cpu().long().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_or_train_classifier(
    path: str | os.PathLike, x: Tensor, y: Tensor, **train_options: Any
) -> FeatureClassifier:
    """Load the classifier cached at ``path``, or train it on ``(x, y)`` and save it there.

    The cache records a hash of the training data and the training settings; a cached file
    fitted on other data or with other settings raises ``ValueError`` instead of being silently
    reused or overwritten (delete it, or choose another path).

    Args:
        path: cache file chosen by the user, e.g. ``~/.cache/flowdiff/digits.safetensors``.
        x, y: the real labelled images, as for :func:`train_classifier`.
        **train_options: keyword arguments of :func:`train_classifier`.

    Returns:
        the classifier, in eval mode, on ``x``'s device.
    """
    x_checked = check_tensor(x, "x")
    y_checked = _check_labels(y, x_checked.shape[0], train_options.get("num_classes"))
    fingerprint = _data_sha256(x_checked, y_checked)
    path = Path(path).expanduser()
    if path.is_file():
        classifier = FeatureClassifier.load(path)
        if classifier.data_sha256 != fingerprint:
            raise ValueError(
                f"the classifier cached at {path} was trained on other data (hash mismatch); "
                "delete it or choose another path"
            )
        requested = {k: train_options[k] for k in classifier.train_settings if k in train_options}
        differing = {k: v for k, v in requested.items() if classifier.train_settings[k] != v}
        if differing:
            raise ValueError(
                f"the classifier cached at {path} was trained with "
                f"{classifier.train_settings}, but {differing} was requested; delete it or "
                "choose another path"
            )
        return classifier.to(x.device)
    classifier = train_classifier(x, y, **train_options)
    classifier.data_sha256 = fingerprint
    classifier.save(path)
    return classifier


@torch.no_grad()
def classifier_frechet_distance(
    classifier: FeatureClassifier, real: Tensor, fake: Tensor, *, batch_size: int = 1024
) -> float:
    """Squared Frechet distance between the classifier features of ``real`` and ``fake`` images
    (FID's formula in the feature space of :class:`FeatureClassifier`).

    Sample-size caveat: biased upwards by ``O(feature_dim / N)``; compare only at equal sizes and
    report the floor, real vs real at the same size (:func:`flowdiff.metrics.floor`).

    Args:
        classifier: a trained :class:`FeatureClassifier`.
        real: ``(N, C, H, W)`` real images, ``N >= 2``.
        fake: ``(M, C, H, W)`` generated images, same units as ``real``.
    """
    feats_real = _batched(classifier.features, classifier, real, batch_size)
    feats_fake = _batched(classifier.features, classifier, fake, batch_size)
    return frechet_distance(feats_real, feats_fake)


def classifier_accuracy(
    classifier: FeatureClassifier, samples: Tensor, labels: Tensor, *, batch_size: int = 1024
) -> float:
    """Fraction of ``samples: (N, C, H, W)`` that the classifier assigns to ``labels: (N,)``,
    e.g. the class requested from a conditional model.

    Sample-size caveat: a proportion, standard error ``sqrt(a (1 - a) / N)``; also bounded by
    the classifier's own held-out accuracy on real data, which should be reported with it.
    """
    check_tensor(samples, "samples")
    labels = _check_labels(labels, samples.shape[0], classifier.num_classes, name="labels")
    if samples.shape[0] == 0:
        raise ValueError(f"samples must hold at least one image, got shape {tuple(samples.shape)}")
    predicted = classifier.predict(samples, batch_size=batch_size)
    return float((predicted.cpu() == labels.cpu()).double().mean())
