"""Flow model: a velocity network trained by conditional flow matching, sampled as an ODE.

Course notes, sections 2-3: a network ``u_t^theta(x)`` regresses the conditional velocity
``d/dt x_t = d_alpha x1 + d_beta x0`` of a Gaussian path (Algorithm 3, conditional flow
matching); its minimiser is the marginal field ``u_t(x)``, whose ODE ``dX_t = u_t(X_t) dt`` from
``X_0 ~ N(0, I)`` gives ``X_1 ~ p_data``. With a diffusion coefficient ``sigma_t > 0`` the same
network also samples the SDE ``dX = [u_t + sigma_t^2 / 2 grad log p_t] dt + sigma_t dW``, the
score read from the velocity through the path (``FlowModel.sample(sigma=...)``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from flowdiff.models.path_model import PathModel
from flowdiff.paths import Schedule

__all__ = ["FlowModel"]


class FlowModel(PathModel):
    """Flow matching model (velocity parameterisation); sampled as an ODE by default.

    Args:
        event_shape: shape of one sample, e.g. ``(2,)``, ``(1, 8, 8)``, ``(N, 3)``.
        net: ``None`` (MLP, or U-Net for images), a ``flowdiff.nets`` config dict or a module.
        path: schedule of the Gaussian path (default ``"linear"``: ``x_t = t x1 + (1 - t) x0``).
        num_classes: labels of a class-conditional model, or ``None``.
        time_sampler: law of the training times (``"uniform"``, ``"logit_normal"`` or a config).
        coupling: ``"independent"``, ``"ot"`` (minibatch OT-CFM) or ``"sinkhorn"``.
        label_dropout: probability of the null label in training (classifier-free guidance).

    See :class:`~flowdiff.models.path_model.PathModel` for ``fit``, ``sample``, ``log_prob``.
    """

    kind = "flow"

    def __init__(
        self,
        event_shape: int | tuple[int, ...],
        net: nn.Module | dict[str, Any] | None = None,
        path: str | dict[str, Any] | Schedule = "linear",
        num_classes: int | None = None,
        *,
        time_sampler: str | dict[str, Any] = "uniform",
        coupling: str | dict[str, Any] = "independent",
        label_dropout: float = 0.1,
    ) -> None:
        super().__init__(
            event_shape,
            net,
            path,
            num_classes,
            prediction="velocity",
            time_sampler=time_sampler,
            coupling=coupling,
            label_dropout=label_dropout,
        )
