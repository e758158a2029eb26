"""Training objectives (flow matching, score matching, noise / data prediction), time samplers
and classifier-free-guidance label dropout."""

from flowdiff.objectives.labels import drop_labels
from flowdiff.objectives.losses import (
    DataPrediction,
    FlowMatching,
    NoisePrediction,
    Objective,
    ScoreMatching,
    get_objective,
    objective_from_config,
    objective_names,
)
from flowdiff.objectives.time_samplers import (
    LogitNormalTime,
    TimeSampler,
    UniformTime,
    get_time_sampler,
)

__all__ = [
    "DataPrediction",
    "FlowMatching",
    "LogitNormalTime",
    "NoisePrediction",
    "Objective",
    "ScoreMatching",
    "TimeSampler",
    "UniformTime",
    "drop_labels",
    "get_objective",
    "get_time_sampler",
    "objective_from_config",
    "objective_names",
]
