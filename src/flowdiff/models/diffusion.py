"""Diffusion model: a score (or noise) network on a Gaussian path, sampled as an SDE.

Course notes, section 4: a network regresses the conditional score
``grad log p_t(x_t | x1) = -x0 / beta_t`` (denoising score matching, Algorithm 4) or, equivalently
up to the factor ``-beta_t``, the noise ``x0`` (noise prediction, Ho et al. 2020); the minimiser
is the marginal score ``s_t(x) = grad log p_t(x)``. With the marginal velocity read from the
same output (``u_t = d_alpha E[x1 | x] + d_beta E[x0 | x]``, ``flowdiff.paths``), every SDE

    dX_t = [u_t(X_t) + sigma_t^2 / 2 * s_t(X_t)] dt + sigma_t dW_t,   X_0 ~ N(0, I)

has ``X_1 ~ p_data``; ``sigma = 0`` is the probability-flow ODE.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from flowdiff.models.path_model import PathModel
from flowdiff.models.preconditioning import NoisePreconditioner
from flowdiff.models.sampling import DiffusionCoefficient
from flowdiff.paths import Schedule

__all__ = ["DiffusionModel"]


class DiffusionModel(PathModel):
    """Score-based diffusion model (score or epsilon parameterisation), sampled as an SDE.

    Args:
        event_shape: shape of one sample, e.g. ``(2,)``, ``(1, 8, 8)``, ``(N, 3)``.
        net: ``None`` (MLP, or U-Net for images), a ``flowdiff.nets`` config dict or a module.
        path: schedule of the Gaussian path (default ``"linear"``).
        num_classes: labels of a class-conditional model, or ``None``.
        prediction: ``"epsilon"`` (noise prediction, the default: a target of unit scale at
            every t) or ``"score"`` (denoising score matching, weighted by ``beta_t^2``).
        data_std: the data scale ``s`` of the noise network's preconditioning
            (:mod:`flowdiff.models.preconditioning`); ``"auto"`` is 0.5 for a noise network
            (the value EDM uses) and ``None`` for a score network. ``None`` uses the raw network
            (right for a network that is already an exact noise predictor). 0.5 also for
            standardised data of unit variance: with ``s`` equal to the data's variance, the
            skip term is the best *linear* guess, so a freshly initialised (nearly linear)
            network sees a residual uncorrelated with everything it can express and may sit
            on that plateau for thousands of steps (8 Gaussians: loss flat at 0.50 for 4000
            steps with ``s = 1``, 0.41 and W2 3x lower with ``s = 0.5``).
        time_sampler: law of the training times (``"uniform"``, ``"logit_normal"`` or a config).
        coupling: ``"independent"``, ``"ot"`` or ``"sinkhorn"``.
        label_dropout: probability of the null label in training (classifier-free guidance).

    Sampling (:meth:`sample`) defaults to the SDE with ``sigma_t = beta_t`` (see
    :meth:`default_sigma`); ``sigma=0`` samples the probability-flow ODE.
    """

    kind = "diffusion"

    def __init__(
        self,
        event_shape: int | tuple[int, ...],
        net: nn.Module | dict[str, Any] | None = None,
        path: str | dict[str, Any] | Schedule = "linear",
        num_classes: int | None = None,
        *,
        prediction: str = "epsilon",
        time_sampler: str | dict[str, Any] = "uniform",
        coupling: str | dict[str, Any] = "independent",
        label_dropout: float = 0.1,
        data_std: float | str | None = "auto",
    ) -> None:
        if prediction not in ("epsilon", "score"):
            raise ValueError(
                f"prediction must be 'epsilon' or 'score' for a DiffusionModel, got "
                f"{prediction!r} (a velocity network is a FlowModel)"
            )
        if data_std == "auto":
            data_std = 0.5 if prediction == "epsilon" else None
        elif data_std is not None and prediction != "epsilon":
            raise ValueError(
                f"data_std={data_std!r} preconditions a noise network; a score network "
                "(prediction='score') takes data_std=None"
            )
        super().__init__(
            event_shape,
            net,
            path,
            num_classes,
            prediction=prediction,
            time_sampler=time_sampler,
            coupling=coupling,
            label_dropout=label_dropout,
        )
        self.data_std = data_std
        if data_std is not None:
            self.net = NoisePreconditioner(self.net, self.path.schedule, data_std)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "prediction": self.prediction, "data_std": self.data_std}

    def default_sigma(self) -> DiffusionCoefficient | None:
        """``sigma_t = beta_t``: the noise level of the path itself.

        It vanishes at t=1, so the score term ``sigma_t^2 / 2 * s_t = -beta_t E[x0 | x] / 2``
        stays bounded where ``s_t`` itself blows up, and the last steps add no noise that
        nothing is left to remove.
        """

        def beta(t: Tensor) -> Tensor:
            return self.path.schedule(t).beta

        return beta
