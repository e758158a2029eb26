"""Data normalisation that is recorded with a model and inverted on sampling.

A model is trained on ``forward(x)`` and its samples are mapped back with ``inverse``; the
:class:`Normalizer` is stored as JSON in ``model.normalization`` (``to_dict`` / ``from_dict``), so a
saved model always knows the scale of the data it was trained on.

Kinds:

- ``"standard"``: per-feature ``z = (x - mean) / std`` with ``mean, std`` of shape ``event_shape``,
  estimated over the batch dimension (vectors, point clouds, any event shape).
- ``"images"``: ``z = 2 x / max - 1`` maps the data's range ``[0, max]`` onto ``[-1, 1]``, the range
  image networks and the ``N(0, I)`` source are scaled for.
- ``"none"``: identity.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from flowdiff.utils import check_finite, check_tensor

__all__ = ["NORMALIZER_KINDS", "Normalizer"]

NORMALIZER_KINDS = ("standard", "images", "none")


class Normalizer:
    """An invertible affine map ``z = (x - shift) / scale`` on batches ``(B, *event_shape)``.

    Build one with :meth:`fit` (from data) or :meth:`from_dict` (from a saved model).

    Args:
        kind: ``"standard"``, ``"images"`` or ``"none"``.
        mean, std: ``"standard"`` only: tensors of shape ``event_shape``, ``std > 0``.
        max_value: ``"images"`` only: the top of the data range ``[0, max_value]``, ``> 0``.
    """

    def __init__(
        self,
        kind: str = "none",
        *,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        max_value: float | None = None,
    ) -> None:
        if kind not in NORMALIZER_KINDS:
            raise ValueError(f"normalizer kind must be one of {NORMALIZER_KINDS}, got {kind!r}")
        self.kind = kind
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.max_value: float | None = None
        if kind == "standard":
            if mean is None or std is None:
                raise ValueError("a 'standard' normalizer needs both mean and std")
            self.mean = torch.as_tensor(mean, dtype=torch.float32)
            self.std = torch.as_tensor(std, dtype=torch.float32)
            if self.mean.shape != self.std.shape or self.mean.dim() == 0:
                raise ValueError(
                    f"mean and std must share a non-empty event shape, got "
                    f"{tuple(self.mean.shape)} and {tuple(self.std.shape)}"
                )
            check_finite(self.mean, "mean")
            if not bool((self.std > 0).all()) or not bool(torch.isfinite(self.std).all()):
                raise ValueError("std must be positive and finite everywhere")
        elif kind == "images":
            if max_value is None or not (math.isfinite(max_value) and max_value > 0):
                raise ValueError(
                    f"an 'images' normalizer needs a positive finite max_value, got {max_value!r}"
                )
            self.max_value = float(max_value)

    # ------------------------------------------------------------------ construction
    @classmethod
    def fit(cls, x: Tensor, kind: str = "auto", *, max_value: float | None = None) -> Normalizer:
        """Estimate a normalizer from data ``x: (N, *event_shape)``.

        Args:
            kind: ``"auto"`` picks ``"images"`` when the event has at least 3 dimensions
                (``(C, H, W)``, videos) and ``"standard"`` otherwise; or one of
                :data:`NORMALIZER_KINDS`.
            max_value: ``"images"`` only: the top of the range (255 for 8-bit files); the data's
                maximum when ``None``.
        """
        check_tensor(x, "x", min_dim=2)
        check_finite(x, "x")
        if kind == "auto":
            kind = "images" if x.dim() >= 4 else "standard"
        if kind == "standard":
            mean = x.mean(dim=0)
            std = x.std(dim=0, unbiased=False)
            # A constant feature (an always-black border pixel) has std 0: only centre it.
            std = torch.where(std > 0, std, torch.ones_like(std))
            return cls("standard", mean=mean, std=std)
        if kind == "images":
            low = float(x.min())
            if low < 0:
                raise ValueError(
                    f"normalize='images' expects data in [0, max], but its minimum is {low:g}; "
                    "use normalize='standard' or 'none'"
                )
            top = float(x.max()) if max_value is None else float(max_value)
            return cls("images", max_value=top)
        if kind == "none":
            return cls("none")
        raise ValueError(f"normalize must be 'auto' or one of {NORMALIZER_KINDS}, got {kind!r}")

    # ------------------------------------------------------------------ the map
    def _check_event(self, x: Tensor, name: str) -> None:
        check_tensor(x, name, min_dim=2)
        if self.mean is not None and tuple(x.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(
                f"{name} must have shape (B, {', '.join(map(str, self.mean.shape))}) for this "
                f"normalizer, got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Data space to model space: ``(B, *event_shape) -> (B, *event_shape)``."""
        self._check_event(x, "x")
        if self.kind == "standard":
            return (x - self.mean.to(x)) / self.std.to(x)
        if self.kind == "images":
            return x * (2.0 / self.max_value) - 1.0
        return x

    def inverse(self, z: Tensor) -> Tensor:
        """Model space back to data space (the inverse of :meth:`forward`), same shape."""
        self._check_event(z, "z")
        if self.kind == "standard":
            return z * self.std.to(z) + self.mean.to(z)
        if self.kind == "images":
            return (z + 1.0) * (self.max_value / 2.0)
        return z

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-able description; :meth:`from_dict` rebuilds an identical normalizer.

        float32 -> Python float -> JSON -> float32 is exact, so the round trip is bit for bit.
        """
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "standard":
            d["mean"] = self.mean.tolist()
            d["std"] = self.std.tolist()
        elif self.kind == "images":
            d["max_value"] = self.max_value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        """Rebuild from :meth:`to_dict` output (e.g. a saved model's ``normalization``)."""
        if not isinstance(d, dict) or "kind" not in d:
            raise ValueError(f"a normalizer description must be a dict with a 'kind', got {d!r}")
        extra = set(d) - {"kind", "mean", "std", "max_value"}
        if extra:
            raise ValueError(f"unexpected key(s) {sorted(extra)} in normalizer description")
        try:
            mean = None if d.get("mean") is None else torch.tensor(d["mean"], dtype=torch.float32)
            std = None if d.get("std") is None else torch.tensor(d["std"], dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"normalizer mean/std must be nested lists of numbers: {err}") from err
        return cls(d["kind"], mean=mean, std=std, max_value=d.get("max_value"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Normalizer):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        if self.kind == "standard":
            return f"Normalizer('standard', event_shape={tuple(self.mean.shape)})"
        if self.kind == "images":
            return f"Normalizer('images', max_value={self.max_value:g})"
        return "Normalizer('none')"
