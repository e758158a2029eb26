"""Continuous normalizing flow trained by maximum likelihood (FFJORD, Grathwohl et al., 2019).

The model is a vector field ``u_t^theta(x)`` (a ``flowdiff.nets.MLP``); its flow carries
``p_init = N(0, I)`` at t=0 to ``p_1^theta`` at t=1, whose exact log density is given by the
instantaneous change of variables (``flowdiff.models.likelihood``, eq. 1)::

    log p_1^theta(x) = log p_init(X_0) - int_0^1 div u_t^theta(X_t) dt,   X_1 = x.

Training maximises the notes' ``sum_n log p_theta(x_n)`` directly: the per-sample loss is
``-log p_1^theta(x_n)``, back-propagated through the (fixed-step, by default RK4) solve of the
augmented ODE, with Hutchinson's divergence estimate (one Rademacher probe per sample, drawn once
per solve) by default: it keeps the cost of a step at a few network passes whatever the
dimension, and its estimate of ``log p`` is unbiased. Flow matching (``FlowModel``) fits the
same kind of field without simulating anything; this family is the simulation-based baseline
it replaced.

Evaluation (``log_prob``, ``sample``) defaults to the adaptive ``dopri5`` solver and the exact
divergence: the density of a trained model is the continuous flow's, not that of the coarse
training discretisation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from flowdiff import nets
from flowdiff.distributions import IsotropicGaussian
from flowdiff.dynamics import VectorFieldODE
from flowdiff.models import likelihood
from flowdiff.models.base import GenerativeModel
from flowdiff.solvers import available_solvers, simulate, time_grid
from flowdiff.utils import check_name, positive_int

__all__ = ["CNF"]


class CNF(GenerativeModel):
    """Continuous normalizing flow trained by maximum likelihood (kind ``"cnf"``).

    The field is ``u_t(x) = MLP([vec(x), t])`` reshaped to ``x``'s shape: time enters as one
    more input coordinate (FFJORD's concatenation), so the field is as smooth in ``t`` as in
    ``x``. (The sinusoidal embedding of ``flowdiff.nets`` reads ``t`` with frequencies up to 1000
    rad per unit, which makes a randomly initialised field oscillate in time; a few-step
    training solve then differentiates a badly discretised flow, and the adaptive evaluation
    solve needs far more steps.)

    Args:
        event_shape: shape of one sample, e.g. ``(2,)``.
        num_classes: labels of a class-conditional model (``y=None`` is then the null label),
            or ``None``.
        hidden, depth: width and number of hidden layers of the MLP.
        activation: a smooth activation (``tanh``, ``softplus``, ``silu``, ``gelu``): the loss
            differentiates the divergence, itself a derivative of the net, w.r.t. the weights,
            and a ReLU net's divergence is piecewise constant in ``x``.
        method: divergence used in training, ``"hutchinson"`` (default) or ``"exact"``
            (``D`` vector-Jacobian products per evaluation: worth it only for tiny ``D``).
        probes: Hutchinson probes per sample in training.
        noise: Hutchinson probe law in training, ``"rademacher"`` or ``"gaussian"``.
        solver: solver of the differentiable training solve (any ODE solver name; a fixed-step
            one fixes the cost of a training step in advance).
        steps: its number of uniform steps over ``[0, 1]``.
    """

    kind = "cnf"

    def __init__(
        self,
        event_shape: int | tuple[int, ...],
        num_classes: int | None = None,
        *,
        hidden: int = 64,
        depth: int = 3,
        activation: str = "tanh",
        method: str = "hutchinson",
        probes: int = 1,
        noise: str = "rademacher",
        solver: str = "rk4",
        steps: int = 8,
    ) -> None:
        super().__init__(event_shape, num_classes)
        if activation == "relu":
            raise ValueError(
                "activation='relu' gives a divergence that is piecewise constant in x; "
                f"use one of {', '.join(a for a in nets.ACTIVATIONS if a != 'relu')}"
            )
        # time-free MLP on [vec(x), t]: the time is an input coordinate, not an embedding
        self.net = nets.MLP(
            math.prod(self.event_shape) + 1,
            hidden=hidden,
            depth=depth,
            time_dim=0,
            num_classes=num_classes,
            activation=activation,
            out_shape=self.event_shape,
        )
        self.method = check_name(method, likelihood.DIVERGENCE_METHODS, "method")
        self.probes = positive_int(probes, "probes")
        self.noise = check_name(noise, likelihood.PROBE_NOISES, "noise")
        self.solver = check_name(solver, available_solvers(), "solver")
        self.steps = positive_int(steps, "steps")
        self.p_init = IsotropicGaussian(self.event_shape)

    def config(self) -> dict[str, Any]:
        net = self.net.config
        return {
            **super().config(),
            "hidden": net["hidden"],
            "depth": net["depth"],
            "activation": net["activation"],
            "method": self.method,
            "probes": self.probes,
            "noise": self.noise,
            "solver": self.solver,
            "steps": self.steps,
        }

    # ------------------------------------------------------------------ the vector field
    def velocity(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """``u_t(x)``: ``x (B, *event_shape)``, ``t (B,)``, labels ``y (B,)`` or ``None`` (the
        null label of a conditional model) -> ``(B, *event_shape)``."""
        inputs = torch.cat([x.flatten(1), t.to(x).reshape(-1, 1)], dim=1)
        return self.net(inputs, y=y)

    def field(self, y: Tensor | None = None) -> likelihood.VectorField:
        """:meth:`velocity` with the labels bound: ``field(x, t) -> like x``."""
        return lambda x, t: self.velocity(x, t, y)

    # ------------------------------------------------------------------ training
    def loss(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        phase: str = "model",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Maximum likelihood: ``-log p_1^theta(x)`` per sample, ``(B,)``, differentiable.

        The solve uses the training ``solver``/``steps`` and divergence ``method`` (probes
        drawn from ``generator``).
        """
        check_name(phase, ["model"], "phase")
        self.check_data(x)
        y = self.check_labels(y, x.shape[0])
        return -likelihood.log_prob(
            self.field(y),
            x,
            p_init=self.p_init,
            solver=self.solver,
            steps=self.steps,
            method=self.method,
            probes=self.probes,
            noise=self.noise,
            generator=generator,
            grad=True,
        )

    # ------------------------------------------------------------------ evaluation
    def log_prob(
        self,
        x: Tensor,
        *,
        y: Tensor | int | None = None,
        solver: str = "dopri5",
        method: str = "exact",
        use_ema: bool = True,
        normalize: bool = True,
        **options: Any,
    ) -> Tensor:
        """Exact ``log p_1^theta(x)`` in nats, ``(B,)``, for ``x: (B, *event_shape)``.

        ``normalize``: ``x`` is in data units (mapped by :attr:`normalization`, whose
        log-determinant is added).

        ``options`` go to :func:`flowdiff.models.likelihood.log_prob` (``steps`` of a fixed-step
        solver, ``rtol``/``atol``, ``probes``/``noise``/``generator`` for ``"hutchinson"``,
        ``grad=True`` to differentiate w.r.t. ``x`` or the weights).
        """
        x, log_det = self.normalize_with_log_det(x) if normalize else (x, 0.0)
        self.check_data(x)
        y = self.check_labels(y, x.shape[0])
        with self.averaged(use_ema):
            return log_det + likelihood.log_prob(
                self.field(y), x, p_init=self.p_init, solver=solver, method=method, **options
            )

    def sample(
        self,
        n: int,
        *,
        y: Tensor | int | None = None,
        generator: torch.Generator | None = None,
        solver: str = "dopri5",
        steps: int = 100,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        return_log_prob: bool = False,
        method: str = "exact",
        probes: int = 1,
        noise: str = "rademacher",
        use_ema: bool = True,
        denormalize: bool = True,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` samples ``(n, *event_shape)`` by integrating the flow from ``N(0, I)``.

        Args:
            n: number of samples.
            y: labels ``(n,)`` or one int (conditional models); ``None`` is the null label.
            generator: source of the initial noise (and of Hutchinson probes).
            solver, steps, rtol, atol: the ODE solve (``steps`` for a fixed-step solver).
            return_log_prob: also return ``log p_1^theta`` of the samples ``(n,)``, from the
                same solve (:func:`~flowdiff.models.likelihood.sample_with_log_prob`) with the
                divergence ``method`` (``"hutchinson"``: ``probes`` probes per sample of law
                ``noise``, drawn from ``generator`` after the initial noise).
            use_ema: use the EMA weights when the model has them.
            denormalize: map the samples back to data units (:meth:`denormalize`); with
                ``return_log_prob`` the log density is then that of data units too.
        """
        positive_int(n, "n")
        y = self.check_labels(y, n)
        field = self.field(y)
        weight = next(self.parameters())
        x0 = self.p_init.sample(n, generator=generator, device=weight.device, dtype=weight.dtype)
        with self.averaged(use_ema):
            if return_log_prob:
                x, log_p = likelihood.sample_with_log_prob(
                    field,
                    x0,
                    p_init=self.p_init,
                    solver=solver,
                    steps=steps,
                    rtol=rtol,
                    atol=atol,
                    method=method,
                    probes=probes,
                    noise=noise,
                    generator=generator,
                )
            else:
                ts = time_grid(steps, dtype=x0.dtype)
                x = simulate(VectorFieldODE(field), x0, ts, solver, rtol=rtol, atol=atol).x
        if not denormalize:
            return (x, log_p) if return_log_prob else x
        data = self.denormalize(x)
        if return_log_prob:
            return data, log_p + self.normalize_with_log_det(data)[1]
        return data
