"""Noise schedules: ``alpha_t``, ``beta_t`` and their time derivatives as pure functions of t.

A Gaussian probability path (course notes, section 3) interpolates noise and data as
``x_t = alpha_t * x1 + beta_t * x0`` with ``alpha_0 = beta_1 = 0`` and ``alpha_1 = beta_0 = 1``
(t=0 noise, t=1 data). A :class:`Schedule` is called on a time tensor of any shape and returns a
:class:`ScheduleValues` of the same shape, so paths, samplers and likelihoods all read one
source of truth.

Samplers that work in signal-to-noise ratio (DDIM-style or Karras grids) use
:meth:`Schedule.log_snr` ``lambda_t = log(alpha_t^2 / beta_t^2)`` and its inverse
:meth:`Schedule.t_from_log_snr`, closed-form for every schedule here.

Endpoint behaviour: for the schedules whose ``beta_t`` has a vertical tangent at t=1 (``sqrt``,
``vp``, ``linear_vp``: ``beta_t ~ c * sqrt(1 - t)``), ``d_beta -> -inf``; there the vanishing
quantity under the square root is clamped at the dtype's machine epsilon, so ``d_beta`` is finite
(about ``-3e7`` in float64, ``-1.5e3`` in float32) and samplers never see an ``inf``. The clamped
value is not the limit, so nothing that has a finite limit may be formed from it: the product
``beta_t d_beta_t = 1/2 d(beta_t^2)/dt``, through which a score enters a velocity
(``u = d_alpha x1_hat - beta d_beta s``), tends to ``-c^2 / 2`` (``-1/2`` for ``sqrt``, ``-1`` for
``linear_vp``, ``-beta_min / 2`` for ``vp``), while ``beta_1 * d_beta_1`` would be ``0``. Each
schedule therefore also returns :attr:`ScheduleValues.beta_d_beta` in closed form, exact at both
endpoints. The only other unbounded derivative is ``d_alpha = -d_beta`` of ``polynomial`` with
``n < 1`` at t=0 (clamped the same way; there the velocity itself is infinite).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from flowdiff.utils import check_name, check_positive

__all__ = [
    "CosineSchedule",
    "LinearSchedule",
    "LinearVPSchedule",
    "PolynomialSchedule",
    "Schedule",
    "ScheduleValues",
    "SquareRootSchedule",
    "VPSchedule",
    "check_time",
    "get_schedule",
    "schedule_from_config",
    "schedule_names",
]

_SCHEDULES: dict[str, type[Schedule]] = {}
# Other names the literature uses for the same schedule.
_ALIASES = {"cond_ot": "linear", "ot": "linear", "square_root": "sqrt"}


@dataclass(frozen=True)
class ScheduleValues:
    """``alpha_t, beta_t``, ``d alpha_t / dt, d beta_t / dt`` and ``beta_d_beta = beta_t d beta_t /
    dt = 1/2 d(beta_t^2)/dt``, each shaped like ``t``.

    ``beta_d_beta`` is computed in closed form, not as the product: it stays exact at t=1 where
    ``beta_t = 0`` and ``d_beta`` is clamped (module notes). Use it wherever a velocity is formed
    from a score.
    """

    alpha: Tensor
    beta: Tensor
    d_alpha: Tensor
    d_beta: Tensor
    beta_d_beta: Tensor


def check_time(t: float | Tensor, name: str = "t") -> Tensor:
    """Return ``t`` as a floating tensor after checking every entry lies in ``[0, 1]``.

    NaN fails the comparison, so one reduction also rejects non-finite times.
    """
    if not isinstance(t, Tensor):
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise TypeError(f"{name} must be a float or a tensor, got {type(t).__name__}")
        t = torch.tensor(float(t), dtype=torch.get_default_dtype())
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if not bool(((t >= 0) & (t <= 1)).all()):
        lo, hi = float(t.min()), float(t.max())
        raise ValueError(
            f"{name} must lie in [0, 1] (0 = noise, 1 = data), got values in "
            f"[{lo:g}, {hi:g}]" + (" including NaN" if bool(t.isnan().any()) else "")
        )
    return t


def _away_from_zero(u: Tensor) -> Tensor:
    """``u`` clamped at machine epsilon: keeps ``1 / sqrt(u)`` and ``u ** (n - 1)`` finite at 0."""
    return u.clamp_min(torch.finfo(u.dtype).eps)


class Schedule(abc.ABC):
    """Base class: subclasses set ``name``, store their parameters, implement :meth:`_evaluate`
    (the formulas) and :meth:`_t_from_log_snr` (its closed-form inverse), then call
    ``super().__init__()``, which validates the endpoints.

    Args:
        endpoint_tol: largest accepted ``|alpha_0|, |beta_0 - 1|, |alpha_1 - 1|, |beta_1|``
            (checked in float64 at construction).
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _SCHEDULES[cls.name] = cls

    def __init__(self, *, endpoint_tol: float = 1e-6) -> None:
        if not (isinstance(endpoint_tol, (int, float)) and 0 <= endpoint_tol < 0.5):
            raise ValueError(f"endpoint_tol must be a number in [0, 0.5), got {endpoint_tol!r}")
        self.endpoint_tol = float(endpoint_tol)
        ends = self(torch.tensor([0.0, 1.0], dtype=torch.float64))
        errors = {
            "alpha_0": float(ends.alpha[0]),
            "beta_0 - 1": float(ends.beta[0]) - 1.0,
            "alpha_1 - 1": float(ends.alpha[1]) - 1.0,
            "beta_1": float(ends.beta[1]),
        }
        bad = {k: v for k, v in errors.items() if not abs(v) <= self.endpoint_tol}
        if bad:
            found = ", ".join(f"{k} = {v:.3g}" for k, v in bad.items())
            raise ValueError(
                f"{self!r} breaks the path endpoints alpha_0 = beta_1 = 0, alpha_1 = beta_0 = 1: "
                f"{found} (tolerance {self.endpoint_tol:g})"
            )

    # ------------------------------------------------------------------ formulas
    @abc.abstractmethod
    def _evaluate(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(alpha, beta, d_alpha, d_beta)`` at a checked ``t``."""

    def _beta_d_beta(self, t: Tensor, values: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        """``beta_t d_beta_t = 1/2 d(beta_t^2)/dt`` from ``t`` and :meth:`_evaluate`'s values; the
        product is exact wherever ``d_beta`` is bounded. Schedules whose ``d_beta`` is clamped at
        t=1 override it with the closed form."""
        _, beta, _, d_beta = values
        return beta * d_beta

    @abc.abstractmethod
    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """Closed-form inverse of :meth:`log_snr` (may leave ``[0, 1]`` for unreachable input)."""

    def _params(self) -> dict[str, Any]:
        """Constructor arguments that define the schedule (for :attr:`config`)."""
        return {}

    # ------------------------------------------------------------------ public API
    def __call__(self, t: float | Tensor) -> ScheduleValues:
        """Evaluate the schedule at ``t`` (any shape, values in ``[0, 1]``)."""
        t = check_time(t)
        values = self._evaluate(t)
        return ScheduleValues(*values, self._beta_d_beta(t, values))

    def diffusion_squared(self, t: float | Tensor) -> Tensor:
        """``g_t^2 = 2 beta^2 (d_alpha / alpha - d_beta / beta) = beta^2 d lambda / dt``, shaped
        like ``t`` (``lambda`` the :meth:`log_snr`); computed as ``2 (d_alpha beta^2 / alpha -
        beta_d_beta)``, which is exact at t=1.

        ``g_t`` is the diffusion coefficient of the forward SDE ``dX = f X ds + g dW`` run from
        data to noise (diffusion time ``s = 1 - t``, ``f = d log alpha / ds``) whose marginals
        given ``x1`` are this path's ``N(alpha_t x1, beta_t^2 I)`` (the forward SDE of Song et al.
        2021; for ``vp`` it is their ``beta(s) = beta_min + s (beta_max - beta_min)``). It
        is the likelihood weighting of denoising score matching (Song, Durkan, Murray & Ermon
        2021, "Maximum likelihood training of score-based diffusion models", Theorem 1).

        It is unbounded at t=0 when ``alpha_0 = 0`` (e.g. ``2 (1 - t) / t`` for ``linear``):
        ``alpha_t`` is clamped at machine epsilon there, so the value is finite but huge; use a
        time sampler that stays away from 0 with it.
        """
        v = self(t)
        safe_alpha = v.alpha.clamp_min(torch.finfo(v.alpha.dtype).eps)
        return 2 * (v.d_alpha * v.beta**2 / safe_alpha - v.beta_d_beta)

    def log_snr(self, t: float | Tensor) -> Tensor:
        """``lambda_t = log(alpha_t^2 / beta_t^2)``, increasing from -inf (t=0) to +inf (t=1)."""
        v = self(t)
        return 2 * (torch.log(v.alpha) - torch.log(v.beta))

    def t_from_log_snr(self, log_snr: float | Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`; values beyond the schedule's range map to 0 or 1."""
        if not isinstance(log_snr, Tensor):
            log_snr = torch.tensor(float(log_snr), dtype=torch.get_default_dtype())
        if not log_snr.is_floating_point() or bool(log_snr.isnan().any()):
            raise ValueError(f"log_snr must be a floating tensor without NaN, got {log_snr}")
        return self._t_from_log_snr(log_snr).clamp(0.0, 1.0)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description; :func:`schedule_from_config` rebuilds the schedule."""
        return {"name": self.name, **self._params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.config == other.config

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.config.items())))


class LinearSchedule(Schedule):
    """CondOT / rectified flow: ``alpha_t = t``, ``beta_t = 1 - t`` (straight conditional paths)."""

    name = "linear"

    def _evaluate(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return t, 1 - t, torch.ones_like(t), -torch.ones_like(t)

    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # t / (1 - t) = exp(lambda / 2)
        return torch.sigmoid(log_snr / 2)


class SquareRootSchedule(Schedule):
    """The course's square-root schedule: ``alpha_t = t``, ``beta_t = sqrt(1 - t)``."""

    name = "sqrt"

    def _evaluate(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        beta = torch.sqrt(1 - t)
        return t, beta, torch.ones_like(t), -0.5 / torch.sqrt(_away_from_zero(1 - t))

    def _beta_d_beta(self, t: Tensor, values: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        return torch.full_like(t, -0.5)  # beta^2 = 1 - t

    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # t^2 / (1 - t) = e^lambda; the positive root of t^2 + e^l t - e^l, written without the
        # cancellation of (-e^l + sqrt(e^2l + 4 e^l)) / 2.
        return 2 / (1 + torch.sqrt(1 + 4 * torch.exp(-log_snr)))


class CosineSchedule(Schedule):
    """``alpha_t = sin(pi t / 2)``, ``beta_t = cos(pi t / 2)``: variance preserving.

    ``beta_t`` is computed as ``sin(pi (1 - t) / 2)`` so that ``beta_1`` is exactly 0 in floating
    point (``cos(pi / 2)`` is ``6e-17``, or ``-4e-8`` in float32).
    """

    name = "cosine"

    def _evaluate(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        half_pi = math.pi / 2
        alpha, beta = torch.sin(half_pi * t), torch.sin(half_pi * (1 - t))
        return alpha, beta, half_pi * beta, -half_pi * alpha

    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # tan(pi t / 2) = exp(lambda / 2)
        return torch.atan(torch.exp(log_snr / 2)) * (2 / math.pi)


class VPSchedule(Schedule):
    """Variance-preserving schedule of Song et al. (2021), re-timed so that t=0 is noise.

    With ``s = 1 - t`` (the paper's diffusion time), ``beta(s) = beta_min + s (beta_max -
    beta_min)`` and ``T(s) = int_0^s beta = beta_min s + (beta_max - beta_min) s^2 / 2``:
    ``alpha_t = exp(-T(1 - t) / 2)``, ``beta_t = sqrt(1 - alpha_t^2)``.

    ``alpha_0 = exp(-T(1) / 2)`` is only close to 0 (``6.6e-3`` for the default 0.1 / 20), hence
    the default ``endpoint_tol=1e-2``; a ``beta_max`` too small to reach the noise at t=0 is
    rejected at construction.
    """

    name = "vp"

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, *, endpoint_tol: float = 1e-2
    ) -> None:
        self.beta_min = check_positive(beta_min, "beta_min")
        self.beta_max = check_positive(beta_max, "beta_max")
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min={beta_min}, got {beta_max!r}")
        super().__init__(endpoint_tol=endpoint_tol)

    def _params(self) -> dict[str, Any]:
        return {
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "endpoint_tol": self.endpoint_tol,
        }

    def _integral(self, s: Tensor | float) -> Tensor | float:
        """``T(s) = int_0^s beta(u) du`` in diffusion time ``s = 1 - t``."""
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2

    def _evaluate(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        s = 1 - t
        integral = self._integral(s)
        alpha = torch.exp(-0.5 * integral)
        # expm1 keeps beta accurate near t=1, where 1 - alpha^2 cancels.
        beta_sq = -torch.expm1(-integral)
        d_alpha = 0.5 * (self.beta_min + (self.beta_max - self.beta_min) * s) * alpha
        # beta^2 = 1 - alpha^2  =>  d_beta = -alpha d_alpha / beta.
        d_beta = -alpha * d_alpha / torch.sqrt(_away_from_zero(beta_sq))
        return alpha, torch.sqrt(beta_sq), d_alpha, d_beta

    def _beta_d_beta(self, t: Tensor, values: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        alpha, _, d_alpha, _ = values
        return -alpha * d_alpha  # beta^2 = 1 - alpha^2; -beta_min / 2 at t=1

    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # alpha^2 = sigmoid(lambda)  =>  T(s) = softplus(-lambda); solve the quadratic
        # a s^2 + b s - c = 0 in its cancellation-free form s = 2c / (b + sqrt(b^2 + 4ac)).
        # Clamping c beyond T(1) (unreachable: t < 0) avoids inf / inf for lambda = -inf.
        c = torch.nn.functional.softplus(-log_snr).clamp_max(2 * self._integral(1.0))
        a, b = 0.5 * (self.beta_max - self.beta_min), self.beta_min
        return 1 - 2 * c / (b + torch.sqrt(b * b + 4 * a * c))


class LinearVPSchedule(Schedule):
    """``alpha_t = t``, ``beta_t = sqrt(1 - t^2)``: linear signal, variance preserving."""

    name = "linear_vp"

    def _evaluate(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        one_minus_sq = (1 - t) * (1 + t)  # 1 - t^2 without cancellation near t=1
        d_beta = -t / torch.sqrt(_away_from_zero(one_minus_sq))
        return t, torch.sqrt(one_minus_sq), torch.ones_like(t), d_beta

    def _beta_d_beta(self, t: Tensor, values: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        return -t  # beta^2 = 1 - t^2

    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # t^2 / (1 - t^2) = e^lambda  =>  t^2 = sigmoid(lambda)
        return torch.sqrt(torch.sigmoid(log_snr))


class PolynomialSchedule(Schedule):
    """``alpha_t = t^n``, ``beta_t = 1 - t^n`` (``n = 1`` is the linear schedule).

    For ``n < 1``, ``d_alpha`` is unbounded at t=0 and is evaluated with t clamped at machine
    epsilon (see the module notes).
    """

    name = "polynomial"

    def __init__(self, n: float = 2.0) -> None:
        self.n = check_positive(n, "n")
        super().__init__()

    def _params(self) -> dict[str, Any]:
        return {"n": self.n}

    def _evaluate(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        alpha = t**self.n
        base = t if self.n >= 1 else _away_from_zero(t)
        d_alpha = self.n * base ** (self.n - 1)
        return alpha, 1 - alpha, d_alpha, -d_alpha

    def _t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # t^n / (1 - t^n) = exp(lambda / 2)
        return torch.sigmoid(log_snr / 2) ** (1 / self.n)


def schedule_names() -> list[str]:
    """Every registered schedule name (aliases excluded)."""
    return sorted(_SCHEDULES)


def get_schedule(name: str | Schedule, **kwargs: Any) -> Schedule:
    """Build a schedule by name (``linear``/``cond_ot``, ``sqrt``, ``cosine``, ``vp``,
    ``linear_vp``, ``polynomial``); a :class:`Schedule` instance is returned as is."""
    if isinstance(name, Schedule):
        if kwargs:
            raise TypeError(f"keyword arguments {sorted(kwargs)} given with a Schedule instance")
        return name
    name = _ALIASES.get(name, name) if isinstance(name, str) else name
    check_name(name, [*_SCHEDULES, *_ALIASES], "schedule")
    return _SCHEDULES[name](**kwargs)


def schedule_from_config(config: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from its :attr:`Schedule.config`."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    if "name" not in config:
        raise ValueError(f"schedule config needs a 'name' key, got keys {sorted(config)}")
    params = {k: v for k, v in config.items() if k != "name"}
    return get_schedule(config["name"], **params)
