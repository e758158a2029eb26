"""Affine conditional paths ``x_t = alpha_t x1 + beta_t x0``: Gaussian and linear (any source).

**Conditional path** (course notes, section 3.1). Given ``x1`` and a schedule, the Gaussian
conditional path is ``p_t(x | x1) = N(alpha_t x1, beta_t^2 I)``, sampled as ``x_t = alpha_t x1 +
beta_t x0`` with ``x0 ~ N(0, I)``. Its conditional vector field and score are

    u_t(x | x1) = (d_alpha - d_beta alpha / beta) x1 + (d_beta / beta) x,
    grad log p_t(x | x1) = -(x - alpha x1) / beta^2.

**Parameterisations.** A network may predict the velocity ``u``, the data ``x1``, the noise
``epsilon`` (= ``x0``) or the score ``s``. Each is a linear function of the pair
``(x1_hat, eps_hat) = (E[x1 | x_t = x], E[x0 | x_t = x])``, which is pinned down by
``x = alpha x1_hat + beta eps_hat``:

    x1-prediction:  x1_hat
    epsilon:        eps_hat
    velocity:       d_alpha x1_hat + d_beta eps_hat
    score:          -eps_hat / beta                      (Tweedie; Gaussian source only)

:meth:`AffinePath.convert` recovers ``(x1_hat, eps_hat)`` from ``(x, value)`` and re-expresses
them. From a velocity this inverts ``[[alpha, beta], [d_alpha, d_beta]]``, whose determinant
``alpha d_beta - beta d_alpha`` is negative on ``(0, 1)`` for every schedule here, and at both
endpoints too except for ``polynomial`` with ``n > 1`` at t=0, where the velocity itself
vanishes; so that direction is safe at the endpoints. Recovering ``eps_hat`` from ``x1`` divides
by ``beta_t`` (0 at t=1), ``x1_hat`` from ``epsilon``/``score`` divides by ``alpha_t`` (0 at
t=0), and a score from anything divides by ``beta_t``. These are the directions in which the
information is genuinely lost at the endpoint (``x_0`` is pure noise and says nothing about
``x1``); there the denominator is replaced by ``+-guard`` whenever its magnitude is below
``guard`` (default ``1e-4``). Conversions are therefore exact wherever ``|alpha_t|, |beta_t| >=
guard`` and finite everywhere, but a value converted *through* a vanishing coefficient at an
endpoint is not meaningful.

**Score and velocity** (:class:`GaussianPath`). With ``eps_hat = -beta s`` the velocity is
``u = d_alpha x1_hat - (beta d_beta) s`` and ``x = alpha x1_hat - beta^2 s``, so these two
directions solve the system in the pair ``(x1_hat, s)`` instead, with the schedule's closed-form
``beta d_beta`` (``ScheduleValues.beta_d_beta``). Going through ``eps_hat`` would lose the score at
t=1, where ``beta = 0`` and ``d_beta`` is clamped (``sqrt``, ``vp``, ``linear_vp``): the velocity
there is ``d_alpha x - beta_d_beta(1) s``, e.g. ``x + s / 2`` for ``sqrt``. Score -> velocity
divides only by ``alpha`` (guarded at t=0, as above); velocity -> score divides by
``beta^2 d_alpha - alpha beta d_beta = -beta (alpha d_beta - beta d_alpha) >= 0``, which is
positive at t=1 for those three schedules (the score is recoverable) and 0 at t=1 for ``linear``,
``cosine`` and ``polynomial``, whose velocity at t=1 does not depend on the score at all.

``epsilon -> velocity`` at t=1 multiplies by the clamped ``d_beta`` for those three schedules: an
epsilon prediction vanishes there and no longer carries the score, so that value is finite but
not the limit ``t -> 1`` (predict the score or the velocity to evaluate a field at t=1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowdiff.distributions import IsotropicGaussian
from flowdiff.paths.base import PathSample, ProbabilityPath, Source, randn_like
from flowdiff.paths.schedules import Schedule, ScheduleValues, get_schedule, schedule_from_config
from flowdiff.utils import as_batch_time, check_positive, check_tensor, expand_like

__all__ = ["AffinePath", "GaussianPath", "LinearPath"]


class AffinePath(ProbabilityPath):
    """``x_t = alpha_t x1 + beta_t x0`` for any source distribution of ``x0``.

    Parameterisations: ``velocity``, ``x1`` and ``epsilon`` (a prediction of ``x0``, which is
    the noise only when the source is Gaussian; the score needs :class:`GaussianPath`).

    Args:
        schedule: a :class:`Schedule` or its name (see ``get_schedule``).
        source: distribution of ``x0`` for :meth:`sample_x0` (``None``: ``x0`` is always given).
        guard: smallest denominator magnitude in :meth:`convert` (see the module notes).
    """

    name = "affine"
    parameterizations = ("velocity", "x1", "epsilon")

    def __init__(
        self,
        schedule: Schedule | str | dict[str, Any] = "linear",
        *,
        source: Source | None = None,
        guard: float = 1e-4,
    ) -> None:
        super().__init__(source)
        if isinstance(schedule, dict):
            schedule = schedule_from_config(schedule)
        self.schedule = get_schedule(schedule)
        self.guard = check_positive(guard, "guard", below=1.0)

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "schedule": self.schedule.config, "guard": self.guard}

    def coefficients(self, t: float | Tensor, like: Tensor) -> tuple[Tensor, ScheduleValues]:
        """``t`` as ``(B,)`` and the schedule at ``t`` viewed as ``(B, 1, ..., 1)`` to broadcast
        against ``like`` ``(B, *shape)``."""
        check_tensor(like, "x")
        t = as_batch_time(t, like.shape[0], device=like.device, dtype=like.dtype)
        v = self.schedule(t)
        return t, ScheduleValues(
            *(expand_like(c, like) for c in (v.alpha, v.beta, v.d_alpha, v.d_beta, v.beta_d_beta))
        )

    def sample(
        self, x0: Tensor, x1: Tensor, t: float | Tensor, *, generator: torch.Generator | None = None
    ) -> PathSample:
        """``x_t = alpha_t x1 + beta_t x0`` and ``dx_t = d_alpha x1 + d_beta x0``.

        Args:
            x0, x1: ``(B, *shape)``. t: float or ``(B,)`` in ``[0, 1]``.
            generator: unused (the path is deterministic given ``x0``); accepted so that every
                path is sampled the same way.
        """
        t = self._check_pair(x0, x1, t)
        t, c = self.coefficients(t, x1)
        return PathSample(
            x_t=c.alpha * x1 + c.beta * x0, dx_t=c.d_alpha * x1 + c.d_beta * x0, t=t, x0=x0, x1=x1
        )

    def conditional_vector_field(self, x: Tensor, x1: Tensor, t: float | Tensor) -> Tensor:
        """``u_t(x | x1) = (d_alpha - d_beta alpha / beta) x1 + (d_beta / beta) x``, ``(B, *shape)``
        (course notes eq. for Gaussian conditional paths; guarded at t=1, see module notes)."""
        return self.convert(x1, x, t, source="x1", target="velocity")

    def convert(
        self, value: Tensor, x: Tensor, t: float | Tensor, *, source: str, target: str
    ) -> Tensor:
        """Re-express a prediction ``value`` at ``(x, t)`` from ``source`` to ``target``
        parameterisation, both ``(B, *shape)``; exact where ``|alpha_t|, |beta_t| >= guard``,
        finite at t=0 and t=1 (module notes)."""
        self._check_conversion(value, x, source, target)
        if source == target:
            return value
        _, c = self.coefficients(t, x)
        return self._convert(value, x, c, source, target)

    # ------------------------------------------------------------------ conversion algebra
    def _guarded(self, d: Tensor) -> Tensor:
        """``d`` with magnitudes below ``guard`` replaced by ``+-guard`` (sign kept)."""
        return torch.where(
            d.abs() < self.guard, torch.copysign(torch.full_like(d, self.guard), d), d
        )

    def _endpoints(
        self, value: Tensor, x: Tensor, c: ScheduleValues, source: str
    ) -> tuple[Tensor, Tensor]:
        """``(x1_hat, eps_hat)`` solving ``x = alpha x1_hat + beta eps_hat`` together with the
        definition of ``value`` in the ``source`` parameterisation."""
        if source == "x1":
            return value, (x - c.alpha * value) / self._guarded(c.beta)
        if source == "epsilon":
            return (x - c.beta * value) / self._guarded(c.alpha), value
        # velocity: Cramer's rule on [[alpha, beta], [d_alpha, d_beta]] (x1, eps) = (x, value)
        det = self._guarded(c.alpha * c.d_beta - c.beta * c.d_alpha)
        return (c.d_beta * x - c.beta * value) / det, (c.alpha * value - c.d_alpha * x) / det

    def _convert(
        self, value: Tensor, x: Tensor, c: ScheduleValues, source: str, target: str
    ) -> Tensor:
        if source == target:
            return value
        x1_hat, eps_hat = self._endpoints(value, x, c, source)
        if target == "x1":
            return x1_hat
        if target == "epsilon":
            return eps_hat
        return c.d_alpha * x1_hat + c.d_beta * eps_hat


class GaussianPath(AffinePath):
    """Gaussian conditional path from ``p_init = N(0, I)``: ``p_t(x | x1) = N(alpha_t x1,
    beta_t^2 I)`` (course notes, section 3.1). Adds the ``score`` parameterisation.

    Args:
        schedule: a :class:`Schedule`, its name or its config.
        guard: smallest denominator magnitude in :meth:`convert` (module notes).
    """

    name = "gaussian"
    parameterizations = ("velocity", "x1", "epsilon", "score")

    def __init__(
        self, schedule: Schedule | str | dict[str, Any] = "linear", *, guard: float = 1e-4
    ) -> None:
        super().__init__(schedule, guard=guard)

    @staticmethod
    def p_init(event_shape: int | tuple[int, ...]) -> IsotropicGaussian:
        """The source ``N(0, I)`` over ``event_shape`` (has ``sample``, ``log_prob``, ``score``)."""
        return IsotropicGaussian(event_shape)

    def sample_x0(self, like: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``x0 ~ N(0, I)`` shaped like ``like``."""
        return randn_like(like, generator)

    def conditional_score(self, x: Tensor, x1: Tensor, t: float | Tensor) -> Tensor:
        """``grad_x log p_t(x | x1) = -(x - alpha_t x1) / beta_t^2``, ``(B, *shape)``
        (guarded at t=1)."""
        return self.convert(x1, x, t, source="x1", target="score")

    def _convert(
        self, value: Tensor, x: Tensor, c: ScheduleValues, source: str, target: str
    ) -> Tensor:
        # score <-> velocity in the pair (x1_hat, s): [[alpha, -beta^2], [d_alpha, -beta d_beta]]
        # (module notes), exact at t=1 where the pair (x1_hat, eps_hat) loses the score.
        if (source, target) == ("score", "velocity"):
            x1_hat = (x + c.beta**2 * value) / self._guarded(c.alpha)
            return c.d_alpha * x1_hat - c.beta_d_beta * value
        if (source, target) == ("velocity", "score"):
            det = self._guarded(c.beta**2 * c.d_alpha - c.alpha * c.beta_d_beta)
            return (c.alpha * value - c.d_alpha * x) / det
        if source == "score":
            # Tweedie: E[x0 | x_t] = -beta_t grad log p_t(x_t), no division needed.
            value, source = -c.beta * value, "epsilon"
        if target == "score":
            eps_hat = super()._convert(value, x, c, source, "epsilon")
            return -eps_hat / self._guarded(c.beta)
        return super()._convert(value, x, c, source, target)


class LinearPath(AffinePath):
    """Straight conditional paths ``x_t = t x1 + (1 - t) x0``, ``dx_t = x1 - x0`` between any
    source and target: noise to data, data to data, or e.g. circles to a checkerboard
    (the conditional OT path of Lipman et al. 2023 / Tong et al. 2024 with ``sigma = 0``).

    Args:
        source: distribution of ``x0`` (``None``: ``x0`` is always passed explicitly).
        guard: smallest denominator magnitude in :meth:`convert`.
    """

    name = "linear"

    def __init__(self, *, source: Source | None = None, guard: float = 1e-4) -> None:
        super().__init__("linear", source=source, guard=guard)

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "guard": self.guard}
