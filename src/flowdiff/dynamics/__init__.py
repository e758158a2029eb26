"""ODEs and SDEs (drift ``u_t(x)``, diffusion ``sigma_t``) and the course's worked examples."""

from flowdiff.dynamics.base import ODE, SDE, FunctionSDE, VectorFieldODE
from flowdiff.dynamics.examples import (
    BrownianMotion,
    LangevinDynamics,
    LinearODE,
    OrnsteinUhlenbeck,
)

__all__ = [
    "ODE",
    "SDE",
    "BrownianMotion",
    "FunctionSDE",
    "LangevinDynamics",
    "LinearODE",
    "OrnsteinUhlenbeck",
    "VectorFieldODE",
]
