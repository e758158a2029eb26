"""One entry point for data: ``load_data(name_or_path)`` -> :class:`Data`.

A name picks a built-in set (the 2D toys of :mod:`flowdiff.data.toys`, or scikit-learn's 8x8
``"digits"``); anything else is a path read by :mod:`flowdiff.data.files`. The data comes back
normalised, with the :class:`Normalizer` that undoes it, ready for ``model.fit(data.x, data.y)``
and ``model.normalization = data.normalizer.to_dict()``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowdiff.data.files import RawData, read_file
from flowdiff.data.normalize import Normalizer
from flowdiff.data.toys import sample_toy, toy_names, toy_num_classes
from flowdiff.utils import check_finite, closest_name_hint

__all__ = ["DEFAULT_TOY_SIZE", "Data", "dataset_names", "load_data"]

DEFAULT_TOY_SIZE = 10_000  # points drawn from a toy sampler when load_data gets no n
DIGITS_MAX = 16.0  # scikit-learn's digits are 8x8 grey levels 0..16


@dataclass(frozen=True, eq=False)
class Data:
    """A loaded data set.

    Attributes:
        name: the built-in name, or the path it was read from.
        x: ``(N, *event_shape)`` float32, *normalised* (what the model trains on).
        y: ``(N,)`` long labels in ``[0, num_classes)``, or ``None``.
        num_classes: number of labels, ``None`` when unlabelled.
        normalizer: maps data space to ``x`` (``forward``) and back (``inverse``).
        class_names: label names (image subfolders), ``None`` when labels are plain integers.
        bin_width: for data on a grid (integer values: grey levels, pixels, counts) whose
            normaliser scales every entry alike, the grid step in the units of ``x`` (e.g.
            ``2 / 16`` for the digits): the width of the uniform noise that dequantises it
            (``flowdiff.data.Dequantized``). ``None`` for continuous data.
    """

    name: str
    x: Tensor
    y: Tensor | None
    num_classes: int | None
    normalizer: Normalizer
    class_names: tuple[str, ...] | None = None
    bin_width: float | None = None

    def __post_init__(self) -> None:
        if self.x.dim() < 2 or self.x.dtype != torch.float32:
            raise ValueError(f"Data.x must be (N, *event_shape) float32, got {tuple(self.x.shape)}")
        if self.y is not None:
            if self.y.shape != (len(self.x),) or self.y.dtype != torch.long:
                raise ValueError(
                    f"Data.y must be ({len(self.x)},) long, got "
                    f"{tuple(self.y.shape)} {self.y.dtype}"
                )
            if self.num_classes is None or bool(
                ((self.y < 0) | (self.y >= self.num_classes)).any()
            ):
                raise ValueError(f"Data.y must lie in [0, num_classes={self.num_classes})")

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)

    def raw(self) -> Tensor:
        """The data in its original units, ``normalizer.inverse(x)``: ``(N, *event_shape)``."""
        return self.normalizer.inverse(self.x)

    def split(self, fraction: float, *, seed: int = 0) -> tuple[Data, Data]:
        """``(train, held_out)``: a random ``fraction`` of the samples (at least one) held out,
        e.g. as ``fit(train, val_data=held_out)``. Both keep this normaliser (fitted on all of
        the data), so they are in the same units.

        Raises:
            ValueError: ``fraction`` outside ``(0, 1)``, or too few samples to leave both
                parts non-empty.
        """
        if not (isinstance(fraction, (int, float)) and 0.0 < fraction < 1.0):
            raise ValueError(f"fraction must be a number in (0, 1), got {fraction!r}")
        n_held = max(1, round(fraction * len(self)))
        if n_held >= len(self):
            raise ValueError(
                f"cannot hold out {fraction:g} of {len(self)} samples and keep some to train on"
            )
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))

        def part(index: Tensor) -> Data:
            y = None if self.y is None else self.y[index]
            return dataclasses.replace(self, x=self.x[index], y=y)

        return part(order[n_held:]), part(order[:n_held])


def dataset_names() -> list[str]:
    """Every built-in name :func:`load_data` accepts."""
    return sorted([*toy_names(), "digits"])


def _digits() -> RawData:
    from sklearn.datasets import load_digits  # shipped with scikit-learn: no download

    x, y = load_digits(return_X_y=True)
    return RawData(x.reshape(-1, 1, 8, 8), y, value_max=DIGITS_MAX)


def _looks_like_path(source: str | os.PathLike) -> bool:
    if isinstance(source, os.PathLike):
        return True
    return "/" in source or os.sep in source or bool(Path(source).suffix) or Path(source).exists()


def _unknown_name(source: str) -> ValueError:
    names = dataset_names()
    hint = closest_name_hint(source, names)
    return ValueError(
        f"unknown dataset {source!r}{hint} (built-in names: {', '.join(names)}; or give a path to "
        ".npy/.npz/.pt/.csv, an '*-images-idx3-ubyte[.gz]' file or an image folder)"
    )


def _labels(y: np.ndarray, n: int, source: str) -> Tensor:
    if y.shape != (n,):
        raise ValueError(f"labels in {source} must have shape ({n},), got {y.shape}")
    if y.size and (not np.all(np.isfinite(y)) or not np.all(y == np.round(y)) or y.min() < 0):
        raise ValueError(f"labels in {source} must be non-negative integers")
    return torch.from_numpy(y.astype(np.int64))


def load_data(
    name_or_path: str | os.PathLike,
    *,
    n: int | None = None,
    generator: torch.Generator | None = None,
    normalize: str = "auto",
) -> Data:
    """Load a built-in data set or a file, normalised.

    Args:
        name_or_path: a name from :func:`dataset_names` (names win over a same-named folder;
            write ``./digits`` for the folder), or a path: ``.npy``; ``.npz`` (data array named
            ``x``/``data``/``arr_0``, labels ``y``/``labels``); ``.pt`` (a tensor or a dict of
            tensors with those names); ``.csv`` (numeric, a ``label``/``y`` header column holds
            labels); MNIST-format ``*-images-idx3-ubyte[.gz]`` (the matching ``labels-idx1`` file
            is picked up); or a folder of PNG/JPG images (labels from subfolder names). A 1-D
            array ``(N,)`` is read as ``N`` scalars ``(N, 1)``; otherwise any ``(N, *shape)``.
        n: a toy set draws ``n`` points (default :data:`DEFAULT_TOY_SIZE`); a fixed set keeps a
            random subset of ``n`` of its samples drawn with ``generator`` (all, in file order,
            when ``None``).
        generator: CPU ``torch.Generator`` for toy samples and subsets.
        normalize: ``"auto"`` (``"images"`` for ``(N, C, H, W)`` and longer event shapes,
            ``"standard"`` otherwise), ``"standard"``, ``"images"`` or ``"none"``; see
            :class:`Normalizer`.

    Returns:
        :class:`Data` with ``x (N, *event_shape)`` float32 normalised and ``y (N,)`` long or None.

    Raises:
        ValueError: unknown name (closest one suggested), unreadable or malformed file, NaN/inf
            in the data, bad labels, bad ``n``.
        FileNotFoundError: a path that does not exist.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or a path, got {type(name_or_path).__name__}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")

    num_classes: int | None = None
    if isinstance(name_or_path, str) and name_or_path in toy_names():
        name = name_or_path
        x, y = sample_toy(name, n or DEFAULT_TOY_SIZE, generator, return_labels=True)
        raw = RawData(x.numpy(), None if y is None else y.numpy())
        num_classes = toy_num_classes(name)
        n = None  # already drawn n points
    elif name_or_path == "digits":
        name, raw, num_classes = "digits", _digits(), 10
    elif _looks_like_path(name_or_path):
        name = str(name_or_path)
        raw = read_file(name_or_path)
    else:
        raise _unknown_name(name_or_path)

    array = raw.x.reshape(-1, 1) if raw.x.ndim == 1 else raw.x
    if array.ndim < 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must hold (N, *shape) data with N >= 1, got shape {array.shape}")
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    check_finite(x, f"data from {name}")
    y = None if raw.y is None else _labels(raw.y, len(x), name)
    if y is not None and num_classes is None:
        num_classes = len(raw.class_names) if raw.class_names else int(y.max()) + 1

    if n is not None:
        if n > len(x):
            raise ValueError(f"n={n} is larger than the {len(x)} samples in {name}")
        keep = torch.randperm(len(x), generator=generator)[:n]
        x, y = x[keep], None if y is None else y[keep]

    normalizer = Normalizer.fit(x, normalize, max_value=raw.value_max)
    bin_width = None
    # One grid step of the raw data (1) in model units, where the map scales all entries alike.
    if normalizer.kind != "standard" and bool(torch.equal(x, x.round())):
        unit = torch.ones((1, *x.shape[1:]))
        bin_width = float((normalizer.forward(unit) - normalizer.forward(0 * unit)).flatten()[0])
    return Data(name, normalizer.forward(x), y, num_classes, normalizer, raw.class_names, bin_width)
