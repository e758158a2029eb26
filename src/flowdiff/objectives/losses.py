"""Training objectives: regress a network onto the conditional quantity of a probability path.

All four objectives share one recipe (course notes, Algorithms 3 and 4):

1. draw ``x0 ~ p_init`` (unless given) and pair it with the data ``x1`` (optional coupling);
2. draw ``t`` from the time sampler, and ``x_t`` from the conditional path;
3. evaluate ``net(x_t, t, **cond)`` and return the per-sample loss
   ``lambda(t) * mean_event (net - target)^2`` of shape ``(B,)``.

They differ in the *target*, i.e. in what the network predicts:

========================  ==============  ==============================================
objective                  prediction      target (conditional, given x0, x1)
========================  ==============  ==============================================
``FlowMatching``           ``velocity``    ``dx_t = d_alpha x1 + d_beta x0`` (CFM)
``ScoreMatching``          ``score``       ``-x0 / beta_t = grad log p_t(x_t | x1)`` (DSM)
``NoisePrediction``        ``epsilon``     ``x0`` (DDPM's epsilon)
``DataPrediction``         ``x1``          ``x1``
========================  ==============  ==============================================

Each minimiser is the posterior mean of its target given ``x_t``, i.e. the *marginal* quantity
(the marginal field, score, ...), which is why the losses train a sampler. :meth:`velocity` and
:meth:`score` convert the network output for the samplers via ``path.convert``.

Weightings ``lambda(t)`` (any path with a schedule), or any function ``t (B,) -> (B,)``:

- ``"none"``: 1.
- ``"beta_squared"``: ``beta_t^2``, Song et al. (2021)'s ``lambda ~ 1 / E||grad log p_t(x |
  x1)||^2``. With it, denoising score matching equals noise prediction with ``eps = -beta s``.
- ``"likelihood"``: ``g_t^2`` (:meth:`flowdiff.paths.Schedule.diffusion_squared`), the squared
  diffusion of the path's forward SDE (Song, Durkan, Murray & Ermon 2021, "Maximum likelihood
  training of score-based diffusion models"). For a score network, ``1/2 E_t[D loss]`` with
  ``t ~ U[0, 1]`` and ``D`` the event size then bounds ``KL(p_data || p_model) + const``: if the
  net is the exact score path of a density ``q`` pushed along the same path, the excess over the
  true score's loss is exactly ``KL(p_1 || q_1) - KL(p_0 || q_0)``. It is unbounded at t=0 when
  ``alpha_0 = 0`` (``2 (1 - t) / t`` for the linear schedule): pair it with a time sampler that
  keeps away from 0 (or with ``vp``, whose ``alpha_0 > 0``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowdiff.objectives.time_samplers import TimeSampler, get_time_sampler
from flowdiff.paths import (
    AffinePath,
    GaussianPath,
    PathSample,
    ProbabilityPath,
    get_coupling,
    path_from_config,
)
from flowdiff.paths.base import Source
from flowdiff.paths.couplings import Coupling
from flowdiff.utils import check_finite, check_name, check_tensor

__all__ = [
    "DataPrediction",
    "FlowMatching",
    "NoisePrediction",
    "Objective",
    "ScoreMatching",
    "get_objective",
    "objective_from_config",
    "objective_names",
]

_OBJECTIVES: dict[str, type[Objective]] = {}
_WEIGHTINGS = ("none", "beta_squared", "likelihood")
Weighting = Callable[[Tensor], Tensor]


class Objective(abc.ABC):
    """Base class of the regression objectives (see the module notes).

    Args:
        path: a probability path, or a schedule name for a :class:`GaussianPath`
            (default: the linear / CondOT Gaussian path).
        time_sampler: a :class:`TimeSampler`, its name, or its config dict.
        coupling: ``None`` (pairs as given), a coupling name (``independent``, ``ot``,
            ``sinkhorn``), a config dict such as ``{"name": "sinkhorn", "reg": 0.1}``, or a
            callable ``(x0, x1, y, *, generator) -> (x0, x1, y)``.
        weighting: ``"none"``, ``"beta_squared"``, ``"likelihood"`` (module notes) or a function
            ``t (B,) -> (B,)``.
    """

    name: ClassVar[str] = ""
    prediction: ClassVar[str] = ""
    default_weighting: ClassVar[str] = "none"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _OBJECTIVES[cls.name] = cls

    def __init__(
        self,
        path: ProbabilityPath | str | None = None,
        *,
        time_sampler: TimeSampler | str | dict[str, Any] = "uniform",
        coupling: str | dict[str, Any] | Coupling | None = None,
        weighting: str | Weighting | None = None,
    ) -> None:
        if path is None or isinstance(path, str):
            path = GaussianPath(path or "linear")
        if not isinstance(path, ProbabilityPath):
            raise TypeError(f"path must be a ProbabilityPath or a schedule name, got {path!r}")
        if self.prediction not in path.parameterizations:
            raise ValueError(
                f"{type(self).__name__} predicts {self.prediction!r}, which {path!r} cannot "
                f"convert (it supports {', '.join(path.parameterizations)})"
            )
        self.path = path
        if isinstance(time_sampler, dict):
            if "name" not in time_sampler:
                raise ValueError(
                    f"time_sampler config needs a 'name' key, got keys {sorted(time_sampler)}"
                )
            self.time_sampler = get_time_sampler(**time_sampler)
        else:
            self.time_sampler = get_time_sampler(time_sampler)
        self._coupling_config, self.coupling = _resolve_coupling(coupling)
        self.weighting = self.default_weighting if weighting is None else weighting
        if isinstance(self.weighting, str):
            check_name(self.weighting, _WEIGHTINGS, "weighting")
            if self.weighting != "none" and not isinstance(path, AffinePath):
                raise ValueError(
                    f"weighting {self.weighting!r} needs a path with a schedule, got {path!r}"
                )
        elif not callable(self.weighting):
            raise TypeError(f"weighting must be a name or a function of t, got {weighting!r}")

    # ------------------------------------------------------------------ the recipe
    @abc.abstractmethod
    def target(self, sample: PathSample) -> Tensor:
        """The regression target in the ``prediction`` parameterisation, ``(B, *shape)``."""

    def weight(self, t: Tensor) -> Tensor:
        """``lambda(t)`` for ``t (B,)``, shape ``(B,)``."""
        if self.weighting == "none":
            return torch.ones_like(t)
        if self.weighting == "beta_squared":
            return self.path.schedule(t).beta ** 2  # type: ignore[attr-defined]
        if self.weighting == "likelihood":
            return self.path.schedule.diffusion_squared(t)  # type: ignore[attr-defined]
        weight = self.weighting(t)  # type: ignore[operator]
        if not isinstance(weight, Tensor) or weight.shape != t.shape:
            raise ValueError(f"weighting(t) must return a {tuple(t.shape)} tensor, got {weight!r}")
        return weight

    def loss(
        self,
        net: Callable[..., Tensor] | nn.Module,
        x1: Tensor,
        *,
        y: Tensor | None = None,
        x0: Tensor | None = None,
        t: float | Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-sample loss ``lambda(t) * mean_event (net(x_t, t[, y]) - target)^2``, ``(B,)``.

        Args:
            net: ``net(x (B, *shape), t (B,), **cond) -> (B, *shape)``; ``y`` is passed as
                ``y=`` when given.
            x1: data batch ``(B, *shape)``.
            y: labels ``(B,)`` for a conditional net (they follow their ``x1`` through the
                coupling).
            x0: source batch ``(B, *shape)``; drawn from the path's source when ``None``.
            t: float or ``(B,)`` times; drawn from the time sampler when ``None``.
            generator: every random draw (x0, coupling, t, path noise) goes through it.
        """
        check_tensor(x1, "x1", min_dim=2)
        check_finite(x1, "x1")
        if x0 is None:
            x0 = self.path.sample_x0(x1, generator=generator)
        else:
            check_tensor(x0, "x0", min_dim=2)
            check_finite(x0, "x0")
        if self.coupling is not None:
            x0, x1, y = self.coupling(x0, x1, y, generator=generator)
        if t is None:
            t = self.time_sampler(
                x1.shape[0], generator=generator, device=x1.device, dtype=x1.dtype
            )
        sample = self.path.sample(x0, x1, t, generator=generator)
        output = net(sample.x_t, sample.t) if y is None else net(sample.x_t, sample.t, y=y)
        if not isinstance(output, Tensor) or output.shape != sample.x_t.shape:
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"net(x, t) must return the shape of x {tuple(sample.x_t.shape)}, got {got}"
            )
        squared = (output - self.target(sample)) ** 2
        return self.weight(sample.t) * squared.flatten(1).mean(1)

    # ------------------------------------------------------------------ sampling side
    def velocity(self, output: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """The network output at ``(x, t)`` converted to a velocity ``u_t(x)``, ``(B, *shape)``."""
        return self.path.convert(output, x, t, source=self.prediction, target="velocity")

    def score(self, output: Tensor, x: Tensor, t: float | Tensor) -> Tensor:
        """The network output at ``(x, t)`` converted to a score ``grad log p_t(x)`` (Gaussian
        paths only), ``(B, *shape)``."""
        return self.path.convert(output, x, t, source=self.prediction, target="score")

    # ------------------------------------------------------------------ description
    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description; :func:`objective_from_config` rebuilds the objective.

        Raises ``ValueError`` if a custom (callable) coupling or weighting was given.
        """
        if callable(self.weighting) or (
            self.coupling is not None and self._coupling_config is None
        ):
            raise ValueError(
                f"{type(self).__name__} with a custom coupling or weighting "
                "function has no JSON description"
            )
        return {
            "name": self.name,
            "path": self.path.config,
            "time_sampler": self.time_sampler.config,
            "coupling": self._coupling_config,
            "weighting": self.weighting,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.path!r}, time_sampler={self.time_sampler!r}, "
            f"coupling={self._coupling_config or self.coupling!r}, "
            f"weighting={self.weighting!r})"
        )


def _resolve_coupling(
    coupling: str | dict[str, Any] | Coupling | None,
) -> tuple[dict[str, Any] | None, Coupling | None]:
    """``(config or None, callable or None)`` of a coupling argument."""
    if coupling is None:
        return None, None
    if isinstance(coupling, str):
        coupling = {"name": coupling}
    if isinstance(coupling, dict):
        if "name" not in coupling:
            raise ValueError(f"coupling config needs a 'name' key, got keys {sorted(coupling)}")
        options = {k: v for k, v in coupling.items() if k != "name"}
        return dict(coupling), get_coupling(coupling["name"], **options)
    if callable(coupling):
        return None, coupling
    raise TypeError(f"coupling must be a name, a config dict or a callable, got {coupling!r}")


class FlowMatching(Objective):
    """Conditional flow matching (Lipman et al. 2023; course notes, Algorithm 3): regress
    ``u_theta(x_t, t)`` onto the conditional velocity ``dx_t``. Works with every path."""

    name = "flow_matching"
    prediction = "velocity"

    def target(self, sample: PathSample) -> Tensor:
        return sample.dx_t


class ScoreMatching(Objective):
    """Denoising score matching (Vincent 2011; course notes, Algorithm 4): regress
    ``s_theta(x_t, t)`` onto ``grad log p_t(x_t | x1) = -x0 / beta_t``.

    The target is computed from ``x0`` directly (not from ``x_t - alpha_t x1``, which cancels
    near t=1). Its magnitude grows like ``1 / beta_t``; the default weighting ``beta_squared``
    keeps the loss bounded (use ``"none"`` with a time sampler that stays away from t=1).
    """

    name = "score_matching"
    prediction = "score"
    default_weighting = "beta_squared"

    def target(self, sample: PathSample) -> Tensor:
        return self.path.convert(sample.x0, sample.x_t, sample.t, source="epsilon", target="score")


class NoisePrediction(Objective):
    """Noise prediction (Ho et al. 2020): regress ``eps_theta(x_t, t)`` onto ``x0``."""

    name = "noise_prediction"
    prediction = "epsilon"

    def target(self, sample: PathSample) -> Tensor:
        return sample.x0


class DataPrediction(Objective):
    """Data prediction / denoiser: regress ``x1_theta(x_t, t)`` onto ``x1``."""

    name = "data_prediction"
    prediction = "x1"

    def target(self, sample: PathSample) -> Tensor:
        return sample.x1


def objective_names() -> list[str]:
    """Every registered objective name."""
    return sorted(_OBJECTIVES)


def get_objective(name: str, **kwargs: Any) -> Objective:
    """An objective by name: ``flow_matching``, ``score_matching``, ``noise_prediction``,
    ``data_prediction``; ``kwargs`` go to its constructor."""
    return _OBJECTIVES[check_name(name, _OBJECTIVES, "objective")](**kwargs)


def objective_from_config(config: dict[str, Any], *, source: Source | None = None) -> Objective:
    """Rebuild an objective from its :attr:`Objective.config` (``source``: see
    ``path_from_config``)."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    missing = {"name", "path", "time_sampler", "coupling", "weighting"} - set(config)
    if missing:
        raise ValueError(f"objective config is missing keys {sorted(missing)}")
    return get_objective(
        config["name"],
        path=path_from_config(config["path"], source=source),
        time_sampler=config["time_sampler"],
        coupling=config["coupling"],
        weighting=config["weighting"],
    )
