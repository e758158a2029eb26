"""Time samplers: the distribution of t in a training loss ``E_t E_{x0, x1} l(t, x_t)``.

Conditional flow matching (course notes, Algorithm 3) draws ``t ~ U[0, 1]``. The logit-normal
law ``t = sigmoid(m + s n)``, ``n ~ N(0, 1)`` (Esser et al. 2024, "Scaling rectified flow
transformers", section 3.1) spends more steps at intermediate times, where the regression is
hardest; it never returns the endpoints exactly.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import Tensor

from flowdiff.utils import check_name, check_positive, check_real, positive_int, randn

__all__ = ["LogitNormalTime", "TimeSampler", "UniformTime", "get_time_sampler"]

_SAMPLERS: dict[str, type[TimeSampler]] = {}


class TimeSampler(abc.ABC):
    """Draws ``n`` training times in ``[0, 1]``; subclasses set ``name`` and :meth:`_draw`."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _SAMPLERS[cls.name] = cls

    @abc.abstractmethod
    def _draw(self, n: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
        """``(n,)`` times on the generator's device (CPU without one)."""

    @abc.abstractmethod
    def _params(self) -> dict[str, Any]:
        """Constructor arguments (for :attr:`config`)."""

    def __call__(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """``(n,)`` times, drawn with ``generator`` and moved to ``device``."""
        positive_int(n, "n")
        t = self._draw(n, generator, dtype or torch.get_default_dtype())
        return t.to(device) if device is not None else t

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description; ``get_time_sampler(**config)`` rebuilds the sampler."""
        return {"name": self.name, **self._params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


class UniformTime(TimeSampler):
    """``t ~ U[t_min, t_max]`` (``U[0, 1]`` by default, the course's choice)."""

    name = "uniform"

    def __init__(self, t_min: float = 0.0, t_max: float = 1.0) -> None:
        self.t_min, self.t_max = check_real(t_min, "t_min"), check_real(t_max, "t_max")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min!r}, t_max={t_max!r}")

    def _params(self) -> dict[str, Any]:
        return {"t_min": self.t_min, "t_max": self.t_max}

    def _draw(self, n: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
        device = generator.device if generator is not None else None
        u = torch.rand(n, generator=generator, device=device, dtype=dtype)
        return self.t_min + (self.t_max - self.t_min) * u


class LogitNormalTime(TimeSampler):
    """``t = sigmoid(mean + std * n)``, ``n ~ N(0, 1)``; values in the open interval (0, 1)."""

    name = "logit_normal"

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        self.mean, self.std = check_real(mean, "mean"), check_positive(std, "std")

    def _params(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}

    def _draw(self, n: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
        return torch.sigmoid(self.mean + self.std * randn((n,), generator=generator, dtype=dtype))


def get_time_sampler(name: str | TimeSampler, **kwargs: Any) -> TimeSampler:
    """A time sampler by name (``uniform``, ``logit_normal``); an instance passes through."""
    if isinstance(name, TimeSampler):
        if kwargs:
            raise TypeError(f"keyword arguments {sorted(kwargs)} given with a TimeSampler instance")
        return name
    return _SAMPLERS[check_name(name, _SAMPLERS, "time sampler")](**kwargs)
