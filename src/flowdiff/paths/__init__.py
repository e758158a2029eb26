"""Probability paths: schedules, Gaussian / linear / Brownian-bridge paths, conversions between
parameterisations, couplings and the Gaussian-mixture oracle (course notes, section 3)."""

from flowdiff.paths.affine import AffinePath, GaussianPath, LinearPath
from flowdiff.paths.base import PathSample, ProbabilityPath, path_from_config, path_names
from flowdiff.paths.bridge import BrownianBridgePath
from flowdiff.paths.couplings import (
    CoupledBatch,
    Coupling,
    get_coupling,
    independent_coupling,
    ot_coupling,
)
from flowdiff.paths.oracle import GaussianMixtureOracle
from flowdiff.paths.schedules import (
    CosineSchedule,
    LinearSchedule,
    LinearVPSchedule,
    PolynomialSchedule,
    Schedule,
    ScheduleValues,
    SquareRootSchedule,
    VPSchedule,
    get_schedule,
    schedule_from_config,
    schedule_names,
)

__all__ = [
    "AffinePath",
    "BrownianBridgePath",
    "CosineSchedule",
    "CoupledBatch",
    "Coupling",
    "GaussianMixtureOracle",
    "GaussianPath",
    "LinearPath",
    "LinearSchedule",
    "LinearVPSchedule",
    "PathSample",
    "PolynomialSchedule",
    "ProbabilityPath",
    "Schedule",
    "ScheduleValues",
    "SquareRootSchedule",
    "VPSchedule",
    "get_coupling",
    "get_schedule",
    "independent_coupling",
    "ot_coupling",
    "path_from_config",
    "path_names",
    "schedule_from_config",
    "schedule_names",
]
