"""What a flow model and a diffusion model share: a network on a Gaussian probability path.

Both are trained by regressing a network onto a conditional quantity of the path
``x_t = alpha_t x1 + beta_t x0``, ``x0 ~ N(0, I)`` (``flowdiff.objectives``), and both are sampled
by simulating the ODE or SDE of :mod:`flowdiff.models.sampling` from ``X_0 ~ p_init = N(0, I)``
to ``X_1 ~ p_data``. They differ only in what the network predicts (a velocity for
:class:`~flowdiff.models.flow.FlowModel`, a score or a noise for
:class:`~flowdiff.models.diffusion.DiffusionModel`) and in the default diffusion coefficient of
the sampler (``0`` for a flow, positive for a diffusion).
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowdiff import nets
from flowdiff.models.base import GenerativeModel
from flowdiff.models.guidance import ClassifierFreeGuidance
from flowdiff.models.sampling import DiffusionCoefficient, ModelField, check_sigma, model_dynamics
from flowdiff.objectives import drop_labels, get_objective
from flowdiff.paths import GaussianPath, Schedule
from flowdiff.solvers import Solution, simulate, time_grid
from flowdiff.utils import positive_int

__all__ = ["PathModel", "default_net_config"]

# The objective (``flowdiff.objectives``) that trains each network prediction.
_OBJECTIVE_OF = {
    "velocity": "flow_matching",
    "score": "score_matching",
    "epsilon": "noise_prediction",
}


def default_net_config(event_shape: tuple[int, ...], num_classes: int | None) -> dict[str, Any]:
    """The network a model builds when given none.

    A U-Net for images ``(C, H, W)`` with even ``H`` and ``W`` (the default U-Net halves the
    resolution once); an MLP, which flattens any event shape, for everything else: vectors,
    point clouds ``(N, 3)``, videos ``(T, C, H, W)``.
    """
    if len(event_shape) == 3 and event_shape[1] % 2 == 0 and event_shape[2] % 2 == 0:
        return nets.UNet(event_shape[0], num_classes=num_classes).config
    return nets.MLP(event_shape, num_classes=num_classes).config


class PathModel(GenerativeModel):
    """A network ``net(x, t, y=...)`` predicting ``prediction`` on a Gaussian path.

    Subclasses set ``prediction`` (in their constructor) and :meth:`default_sigma`.

    Args:
        event_shape: shape of one sample, e.g. ``(2,)``, ``(1, 8, 8)``, ``(N, 3)``.
        net: ``None`` (:func:`default_net_config`), a ``flowdiff.nets`` config dict, or a module
            ``net(x, t[, y=labels]) -> like x``. A module without a ``config`` (not built by
            ``flowdiff.nets``) works in memory, but the model cannot then be saved.
        path: the schedule ``(alpha_t, beta_t)`` of the Gaussian path: a name of
            ``flowdiff.paths.get_schedule`` (``"linear"``, ``"cosine"``, ``"vp"``, ...), a
            schedule config dict or a ``Schedule``.
        num_classes: number of labels of a class-conditional model (the network then reads the
            null label ``num_classes`` as "no label"), ``None`` for an unconditional one.
        prediction: what the network outputs (``"velocity"``, ``"score"``, ``"epsilon"``).
        time_sampler: law of the training times ``t``: ``"uniform"``, ``"logit_normal"``, or a
            config dict of ``flowdiff.objectives`` (e.g. ``{"name": "logit_normal", "std": 1}``).
        coupling: pairing of noise and data in a batch: ``"independent"`` (the notes' default),
            ``"ot"`` (exact minibatch optimal transport) or ``"sinkhorn"``.
        label_dropout: probability that a training label is replaced by the null label, so that
            one network learns ``u(x | y)`` and ``u(x | null)`` for classifier-free guidance.
    """

    prediction: str
    # Sampling defaults; the solver is picked by whether sigma makes the dynamics an SDE.
    default_steps: ClassVar[int] = 100
    default_ode_solver: ClassVar[str] = "midpoint"
    default_sde_solver: ClassVar[str] = "euler_maruyama"

    def __init__(
        self,
        event_shape: int | tuple[int, ...],
        net: nn.Module | dict[str, Any] | None = None,
        path: str | dict[str, Any] | Schedule = "linear",
        num_classes: int | None = None,
        *,
        prediction: str,
        time_sampler: str | dict[str, Any] = "uniform",
        coupling: str | dict[str, Any] = "independent",
        label_dropout: float = 0.1,
    ) -> None:
        super().__init__(event_shape, num_classes)
        if prediction not in _OBJECTIVE_OF:
            raise ValueError(
                f"prediction must be one of {', '.join(_OBJECTIVE_OF)}, got {prediction!r}"
            )
        if isinstance(label_dropout, bool) or not (
            isinstance(label_dropout, (int, float)) and 0 <= label_dropout < 1
        ):
            raise ValueError(f"label_dropout must be a number in [0, 1), got {label_dropout!r}")
        self.prediction = prediction
        self.path = GaussianPath(path)
        self.objective = get_objective(
            _OBJECTIVE_OF[prediction],
            path=self.path,
            time_sampler=time_sampler,
            coupling=coupling,
        )
        self.coupling = coupling
        self.label_dropout = float(label_dropout)
        self.net = self._build_net(net)

    # ------------------------------------------------------------------ construction
    def _build_net(self, net: nn.Module | dict[str, Any] | None) -> nn.Module:
        if net is None:
            net = default_net_config(self.event_shape, self.num_classes)
        if isinstance(net, dict):
            net = nets.build(net)
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"net must be None, a flowdiff.nets config dict or an nn.Module, got "
                f"{type(net).__name__}"
            )
        net_classes = getattr(net, "num_classes", self.num_classes)
        if net_classes != self.num_classes:
            raise ValueError(
                f"net has num_classes={net_classes} but the model num_classes={self.num_classes}"
            )
        return net

    def config(self) -> dict[str, Any]:
        net_config = getattr(self.net, "config", None)
        if not isinstance(net_config, dict):
            raise TypeError(
                f"this model's net ({type(self.net).__name__}) has no flowdiff.nets config, so "
                "the model cannot be described (saved); build the net with flowdiff.nets"
            )
        return {
            **super().config(),
            "net": net_config,
            "path": self.path.schedule.config,
            "time_sampler": self.objective.time_sampler.config,
            "coupling": self.coupling,
            "label_dropout": self.label_dropout,
        }

    @property
    def device(self) -> torch.device:
        """Device of the weights (CPU for a network without any, e.g. an analytic field)."""
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def null_label(self) -> int:
        """The label meaning "no label" (``num_classes``) of a conditional model."""
        if self.num_classes is None:
            raise ValueError("this model is unconditional (num_classes=None): it has no labels")
        return self.num_classes

    # ------------------------------------------------------------------ training
    def loss(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        phase: str = "model",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-sample regression loss ``(B,)`` on the data batch ``x: (B, *event_shape)``.

        Draws ``x0 ~ N(0, I)``, pairs it with ``x`` by the coupling, replaces a fraction
        ``label_dropout`` of the labels ``y`` by the null label (conditional models; unlabelled
        batches train the unconditional field only), and evaluates the objective.
        """
        if phase != "model":
            raise ValueError(f"phase must be 'model' (the only optim group), got {phase!r}")
        self.check_data(x)
        y = self.check_labels(y, x.shape[0])
        if y is not None:
            y = drop_labels(y, self.label_dropout, self.null_label, generator=generator)
        return self.objective.loss(self.net, x, y=y, generator=generator)

    # ------------------------------------------------------------------ sampling
    def default_sigma(self) -> DiffusionCoefficient | None:
        """Diffusion coefficient used by :meth:`sample` when ``sigma=None``."""
        return None

    def field(self, guidance: float | None = None) -> ModelField:
        """The marginal vector field ``u_t(x)`` of the network, classifier-free guided with
        weight ``guidance`` if given: call it as ``field(x, t, **cond)`` with ``cond`` from
        :meth:`conditioning` (guidance needs real labels there)."""
        if guidance is None:
            return ModelField(self.net, self.objective)
        if self.num_classes is None:
            raise ValueError(
                f"guidance={guidance!r} needs a class-conditional model (num_classes set, trained "
                "with label_dropout > 0), but this model is unconditional (num_classes=None)"
            )
        if self.label_dropout == 0:
            warnings.warn(
                "guidance on a model trained with label_dropout=0: its null label (the "
                "unconditional field) was trained only on unlabelled batches, if any",
                stacklevel=3,
            )
        return ModelField(
            ClassifierFreeGuidance(self.net, guidance, self.null_label), self.objective
        )

    def conditioning(self, y: Tensor | int | None, n: int) -> dict[str, Tensor]:
        """Keyword conditioning of the network for a batch of ``n``: ``{}`` for an
        unconditional model, else ``{"y": (n,)}`` with the null label where ``y`` is ``None``."""
        y = self.check_labels(y, n)
        if self.num_classes is None:
            return {}
        if y is None:
            y = torch.full((n,), self.null_label, dtype=torch.long)
        return {"y": y.to(self.device)}

    def sampling_interval(self, stochastic: bool, t_eps: float) -> tuple[float, float]:
        """The time span ``[t_start, t_end]`` of the sampler.

        Conversions through a vanishing coefficient are singular at the endpoints (see
        ``flowdiff.paths.affine``): a velocity from a score/noise prediction divides by
        ``alpha_t`` (0 at t=0), a score from a velocity or noise prediction divides by
        ``beta_t`` (0 at t=1). The sampler therefore starts at ``t_eps`` unless the network
        predicts the velocity, and stops at ``1 - t_eps`` unless it needs neither the score
        (an ODE) nor a converted velocity. Starting at ``t_eps`` with ``X ~ N(0, I)`` instead
        of ``p_{t_eps}`` is off by ``O(alpha_{t_eps})``; stopping at ``1 - t_eps`` leaves noise
        of scale ``beta_{1 - t_eps}``.
        """
        if not (isinstance(t_eps, float) and 0 < t_eps < 0.5):
            raise ValueError(f"t_eps must be a float in (0, 0.5), got {t_eps!r}")
        velocity = self.prediction == "velocity"
        t_start = 0.0 if velocity else t_eps
        t_end = 1.0 if velocity and not stochastic else 1.0 - t_eps
        return t_start, t_end

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        steps: int | None = None,
        solver: str | None = None,
        y: Tensor | int | None = None,
        guidance: float | None = None,
        sigma: float | Callable[[Tensor], float | Tensor] | None = None,
        generator: torch.Generator | None = None,
        return_solution: bool = False,
        use_ema: bool = True,
        denormalize: bool = True,
        grid: str = "uniform",
        t_eps: float = 1e-2,
    ) -> Tensor | Solution:
        """Draw ``n`` samples ``(n, *event_shape)`` by simulating from ``X_0 ~ N(0, I)``.

        The dynamics is ``dX = [u_t + sigma_t^2 / 2 s_t] dt + sigma_t dW`` (an ODE when
        ``sigma_t = 0``; :mod:`flowdiff.models.sampling`) on ``time_grid(steps, grid)`` over
        :meth:`sampling_interval`.

        Args:
            n: number of samples.
            steps: solver steps (NFE = steps x stages; ``default_steps`` if ``None``).
            solver: a ``flowdiff.solvers`` name; default ``default_ode_solver`` for an ODE,
                ``default_sde_solver`` for an SDE.
            y: labels ``(n,)`` or one int for all (conditional models); ``None`` samples the
                unconditional model (null label).
            guidance: classifier-free guidance weight ``w`` (needs ``y``):
                ``u~ = (1 - w) u(x | null) + w u(x | y)``.
            sigma: diffusion coefficient: a number ``>= 0`` or ``sigma(t: (n,)) -> (n,)``;
                ``None`` is :meth:`default_sigma` (0 for a flow model).
            generator: source of the initial noise and of the Brownian increments.
            return_solution: return the solver's ``Solution`` (final state ``x``, the whole
                trajectory ``xs: (steps + 1, n, *event_shape)`` at ``ts``, and ``nfe``).
            use_ema: sample with the EMA weights when the model has them.
            denormalize: map samples (and trajectory) back to data units with
                :attr:`normalization`.
            grid: ``"uniform"`` or ``"karras"`` (``flowdiff.solvers.time_grid``).
            t_eps: distance kept from a singular endpoint (:meth:`sampling_interval`).
        """
        positive_int(n, "n")
        coefficient = check_sigma(self.default_sigma() if sigma is None else sigma)
        stochastic = coefficient is not None
        solver = solver or (self.default_sde_solver if stochastic else self.default_ode_solver)
        field = self.field(guidance)
        if guidance is not None and y is None:
            raise ValueError(f"guidance={guidance!r} needs the labels y of the requested classes")
        cond = self.conditioning(y, n)
        dynamics = model_dynamics(field, coefficient, **cond)
        t_start, t_end = self.sampling_interval(stochastic, t_eps)
        ts = time_grid(self.default_steps if steps is None else steps, grid, t_start, t_end)
        x0 = self.path.p_init(self.event_shape).sample(n, generator=generator).to(self.device)
        with self._inference(use_ema):
            solution = simulate(
                dynamics,
                x0,
                ts.to(self.device),
                solver,
                save="all" if return_solution else "final",
                generator=generator,
            )
        if denormalize:
            solution.x = self.denormalize(solution.x)
            if solution.xs is not None:
                solution.xs = self.denormalize(solution.xs.flatten(0, 1)).view_as(solution.xs)
        return solution if return_solution else solution.x

    @contextlib.contextmanager
    def _inference(self, use_ema: bool) -> Iterator[None]:
        """Evaluation mode (no dropout) with the EMA weights if ``use_ema``; restored on exit."""
        was_training = self.training
        self.eval()
        try:
            with self.averaged(use_ema):
                yield
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ likelihood
    def log_prob(
        self,
        x: Tensor,
        *,
        y: Tensor | int | None = None,
        steps: int | None = None,
        solver: str = "dopri5",
        use_ema: bool = True,
        normalize: bool = True,
        t_eps: float = 1e-2,
        **options: Any,
    ) -> Tensor:
        """Exact ``log p_1(x)`` ``(B,)`` in nats of the model's ODE (the flow, or a diffusion
        model's probability-flow ODE) by the instantaneous change of variables
        (``flowdiff.models.likelihood``).

        With ``normalize`` the data ``x`` is given in data units: it is mapped to model units by
        :attr:`normalization`, and the log-determinant of that affine map is added.
        ``options`` go to ``flowdiff.models.likelihood.log_prob`` (divergence method, probes,
        generator, tolerances).
        """
        from flowdiff.models import likelihood

        self.check_data(x)
        log_det = x.new_zeros(())
        if normalize:
            x, log_det = self.normalize_with_log_det(x)
        cond = self.conditioning(y, x.shape[0])
        t_start, t_end = self.sampling_interval(False, t_eps)
        field = self.field()
        with self._inference(use_ema):
            return log_det + likelihood.log_prob(
                lambda z, t: field(z, t, **cond),
                x,
                p_init=self.path.p_init(self.event_shape),
                steps=self.default_steps if steps is None else steps,
                solver=solver,
                t0=t_start,
                t1=t_end,
                **options,
            )
