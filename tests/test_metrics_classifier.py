"""The library's own feature classifier on scikit-learn's 8x8 digits: accuracy, classifier
Frechet distance (floor vs noise vs missing classes), caching, save/load, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits

import flowdiff.metrics.classifier as classifier_module
from flowdiff.metrics import (
    FeatureClassifier,
    classifier_accuracy,
    classifier_frechet_distance,
    floor,
    load_or_train_classifier,
    train_classifier,
)

STEPS = 150  # ~97% held-out accuracy on digits, a few seconds on one core


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1000], order[1000:]
    return {"x": x[train], "y": y[train], "x_test": x[test], "y_test": y[test]}


@pytest.fixture(scope="module")
def classifier(digits: dict[str, torch.Tensor]) -> FeatureClassifier:
    return train_classifier(
        digits["x"], digits["y"], steps=STEPS, generator=torch.Generator().manual_seed(1)
    )


def test_classifier_generalises_on_digits(
    classifier: FeatureClassifier, digits: dict[str, torch.Tensor]
) -> None:
    # 797 held-out digits: chance is 10%; the classifier must exceed 90%.
    assert classifier_accuracy(classifier, digits["x_test"], digits["y_test"]) > 0.9
    assert classifier.features(digits["x_test"][:5]).shape == (5, 64)
    assert classifier.predict(digits["x_test"][:5]).dtype == torch.int64


def test_classifier_frechet_distance_floor_noise_and_mode_dropping(
    classifier: FeatureClassifier, digits: dict[str, torch.Tensor]
) -> None:
    real = digits["x_test"]

    def distance(a: torch.Tensor, b: torch.Tensor) -> float:
        return classifier_frechet_distance(classifier, a, b)

    # The floor at N = 398: two disjoint halves of the 797 held-out digits. Over 30 splits it
    # ranged over 9..41 (mean 20, std 7): 64-d covariances from 398 samples are noisy, so
    # average 5 splits.
    splits = [floor(distance, real, generator=torch.Generator().manual_seed(s)) for s in range(5)]
    base = sum(splits) / len(splits)
    # Real vs real: training digits against held-out digits, same size.
    real_vs_real = distance(digits["x"][:398], real[:398])
    noise = 16 * torch.rand((398, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    real_vs_noise = distance(real[:398], noise)
    # Only classes 0..4, resampled to the same size: a generator that dropped half the modes.
    half_classes = real[digits["y_test"] < 5]
    pick = torch.randint(0, len(half_classes), (398,), generator=torch.Generator().manual_seed(4))
    real_vs_dropped = distance(real[:398], half_classes[pick])
    # Measured at these seeds: floor ~20, real vs real ~15, noise ~1000, dropped modes ~400.
    assert base / 3 < real_vs_real < 3 * base
    assert real_vs_noise > 20 * base
    assert real_vs_dropped > 5 * base


def test_training_is_reproducible_and_leaves_global_rng_alone(
    digits: dict[str, torch.Tensor],
) -> None:
    state = torch.get_rng_state()
    one = train_classifier(
        digits["x"], digits["y"], steps=3, generator=torch.Generator().manual_seed(5)
    )
    two = train_classifier(
        digits["x"], digits["y"], steps=3, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(torch.get_rng_state(), state)
    for (name, p), q in zip(one.state_dict().items(), two.state_dict().values()):
        assert torch.equal(p, q), name
    other = train_classifier(
        digits["x"], digits["y"], steps=3, generator=torch.Generator().manual_seed(6)
    )
    assert not torch.equal(one.head.weight, other.head.weight)


def test_save_load_round_trip(
    classifier: FeatureClassifier, digits: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = classifier.save(tmp_path / "clf.safetensors")
    loaded = FeatureClassifier.load(path)
    assert loaded.config == classifier.config
    assert loaded.train_settings == classifier.train_settings
    assert torch.equal(loaded.features(digits["x_test"]), classifier.features(digits["x_test"]))
    assert [p.name for p in tmp_path.iterdir()] == ["clf.safetensors"]  # no temporary left
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        FeatureClassifier.load(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="no saved classifier"):
        FeatureClassifier.load(tmp_path / "missing.safetensors")


def test_load_or_train_caches_and_refuses_a_mismatched_cache(
    digits: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = digits["x"][:200], digits["y"][:200]
    path = tmp_path / "cache" / "digits.safetensors"
    first = load_or_train_classifier(
        path, x, y, steps=5, generator=torch.Generator().manual_seed(0)
    )
    assert path.is_file()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    second = load_or_train_classifier(path, x, y, steps=5)
    assert torch.equal(second.features(x), first.features(x))
    with pytest.raises(ValueError, match="trained on other data"):
        load_or_train_classifier(path, x + 1.0, y, steps=5)
    with pytest.raises(ValueError, match=r"\{'steps': 50\} was requested"):
        load_or_train_classifier(path, x, y, steps=50)


def test_classifier_bad_input(
    classifier: FeatureClassifier, digits: dict[str, torch.Tensor]
) -> None:
    x, y = digits["x_test"][:10], digits["y_test"][:10]
    with pytest.raises(
        ValueError, match=r"shape \(B, 1, 8, 8\) for this classifier, got \(10, 64\)"
    ):
        classifier.features(x.reshape(10, 64))
    with pytest.raises(ValueError, match=r"labels must have shape \(10,\)"):
        classifier_accuracy(classifier, x, y[:5])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        classifier_accuracy(classifier, x, y + 10)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        classifier_accuracy(classifier, x, y.float())
    with pytest.raises(ValueError, match="non-finite"):
        classifier_frechet_distance(classifier, x, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match=r"x must be images of shape \(N, C, H, W\)"):
        train_classifier(x[:, 0], y)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        train_classifier(x, y, steps=0)
    with pytest.raises(ValueError, match="image_size"):
        FeatureClassifier(image_size=(2, 8))


def test_classifier_on_28px_mnist_format_files(tmp_path: Path, digits) -> None:
    """The MNIST-format path: 28x28 images (the digits upsampled) written as IDX files by the
    test, read through ``load_data`` and classified far above chance (10%; 0.89 measured: the
    narrow net below trades a few points for time; misread or misaligned labels give ~0.1)."""
    from flowdiff.data import load_data
    from test_data_files import write_idx

    def upsampled(x: torch.Tensor) -> torch.Tensor:
        big = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear")
        return (big * 255 / 16).round().clamp(0, 255)

    write_idx(tmp_path / "t10k-images-idx3-ubyte", upsampled(digits["x"])[:, 0].byte().numpy(),
              compress=False)  # fmt: skip
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", digits["y"].byte().numpy(), compress=False)
    data = load_data(tmp_path / "t10k-images-idx3-ubyte")
    assert data.event_shape == (1, 28, 28) and torch.equal(data.y, digits["y"])
    # a narrower net and fewer steps than on 8x8: 28x28 convolutions cost 12x more per image
    net = train_classifier(
        data.raw(), data.y, steps=150, width=16, generator=torch.Generator().manual_seed(1)
    )
    assert net.image_size == (28, 28)
    assert classifier_accuracy(net, upsampled(digits["x_test"]), digits["y_test"]) > 0.8
