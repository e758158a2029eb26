"""What every probability path shares: the sample it returns, argument checks, the source draw.

A path (course notes, section 3) turns a pair ``(x0, x1)`` -- ``x0`` from the source ``p_init``,
``x1`` from the data -- and a time ``t`` into a point ``x_t`` of a conditional path together with
its time derivative ``dx_t``, the regression target of conditional flow matching. Paths know
nothing about networks; objectives (``flowdiff.objectives``) build losses on top of them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from flowdiff.utils import as_batch_time, check_name, check_tensor, randn

__all__ = ["PathSample", "ProbabilityPath", "Source", "path_from_config", "path_names"]

_PATHS: dict[str, type[ProbabilityPath]] = {}


class Source(Protocol):
    """A distribution of ``x0`` (for instance ``flowdiff.distributions``' densities)."""

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor: ...


@dataclass(frozen=True)
class PathSample:
    """One draw from a conditional path.

    Attributes:
        x_t: ``(B, *shape)`` point on the path at time ``t``.
        dx_t: ``(B, *shape)`` its time derivative along the conditional path (the conditional
            vector field ``u_t(x_t | z)``, target of flow matching).
        t: ``(B,)`` times.
        x0: ``(B, *shape)`` source endpoint.
        x1: ``(B, *shape)`` data endpoint.
    """

    x_t: Tensor
    dx_t: Tensor
    t: Tensor
    x0: Tensor
    x1: Tensor


def randn_like(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal shaped like ``like``, drawn on the generator's device then moved."""
    device = None if generator is not None else like.device
    z = randn(like.shape, generator=generator, device=device, dtype=like.dtype)
    return z.to(like.device)


class ProbabilityPath(abc.ABC):
    """Base class of conditional probability paths.

    Subclasses set ``name`` (registry key of :func:`path_from_config`) and
    ``parameterizations`` (the network outputs :meth:`convert` understands).

    Args:
        source: distribution of ``x0`` used by :meth:`sample_x0` when the caller gives none;
            an object with ``sample(n, generator=...) -> (n, *shape)``.
    """

    name: ClassVar[str] = ""
    parameterizations: ClassVar[tuple[str, ...]] = ("velocity",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _PATHS[cls.name] = cls

    def __init__(self, source: Source | None = None) -> None:
        if source is not None and not callable(getattr(source, "sample", None)):
            raise TypeError(
                f"source must have a sample(n, generator=...) method, got {type(source).__name__}"
            )
        self.source = source

    @abc.abstractmethod
    def sample(
        self, x0: Tensor, x1: Tensor, t: float | Tensor, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """Draw ``x_t`` on the conditional path between ``x0`` and ``x1``, shapes ``(B, *shape)``;
        ``generator`` is used by stochastic paths only."""

    @property
    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able description (the source distribution is data, not part of it)."""

    def sample_x0(self, like: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x0 ~ source``, one per row of ``like`` ``(B, *shape)``, on ``like``'s device."""
        if self.source is None:
            raise ValueError(f"{self!r} has no source distribution: pass x0 explicitly")
        x0 = self.source.sample(like.shape[0], generator=generator).to(like)
        if x0.shape != like.shape:
            raise ValueError(
                f"source samples have shape {tuple(x0.shape)}, expected {tuple(like.shape)}"
            )
        return x0

    def convert(
        self, value: Tensor, x: Tensor, t: float | Tensor, *, source: str, target: str
    ) -> Tensor:
        """Change the parameterisation of a prediction at ``(x, t)``; see subclasses."""
        self._check_conversion(value, x, source, target)
        return value

    # ------------------------------------------------------------------ checks
    def _check_conversion(self, value: Tensor, x: Tensor, source: str, target: str) -> None:
        check_name(source, self.parameterizations, f"source parameterisation for {self.name}")
        check_name(target, self.parameterizations, f"target parameterisation for {self.name}")
        check_tensor(value, "value")
        check_tensor(x, "x")
        if value.shape != x.shape:
            raise ValueError(
                f"value must have the shape of x {tuple(x.shape)}, got {tuple(value.shape)}"
            )

    @staticmethod
    def _check_pair(x0: Tensor, x1: Tensor, t: float | Tensor) -> Tensor:
        """Check ``x0``/``x1`` agree and return ``t`` as ``(B,)`` in their dtype and device."""
        check_tensor(x0, "x0")
        check_tensor(x1, "x1")
        if x0.shape != x1.shape:
            raise ValueError(
                f"x0 and x1 must have the same shape, got x0 {tuple(x0.shape)} "
                f"and x1 {tuple(x1.shape)}"
            )
        return as_batch_time(t, x1.shape[0], device=x1.device, dtype=x1.dtype)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "name")
        return f"{type(self).__name__}({args})"


def path_names() -> list[str]:
    """Every registered path name."""
    return sorted(_PATHS)


def path_from_config(config: dict[str, Any], *, source: Source | None = None) -> ProbabilityPath:
    """Rebuild a path from its ``config``; ``source`` re-attaches a non-Gaussian source."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    if "name" not in config:
        raise ValueError(f"path config needs a 'name' key, got keys {sorted(config)}")
    cls = _PATHS[check_name(config["name"], _PATHS, "path")]
    params = {k: v for k, v in config.items() if k != "name"}
    if source is not None:
        params["source"] = source
    return cls(**params)
