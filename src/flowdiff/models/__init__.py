"""User-facing generative models sharing one interface (:class:`GenerativeModel`)."""

from flowdiff.models.base import GenerativeModel, load_model, model_class, registered_models
from flowdiff.models.diffusion import DiffusionModel
from flowdiff.models.flow import FlowModel
from flowdiff.models.guidance import ClassifierFreeGuidance
from flowdiff.models.path_model import PathModel
from flowdiff.models.sampling import ModelField, model_dynamics

__all__ = [
    "ClassifierFreeGuidance",
    "DiffusionModel",
    "FlowModel",
    "GenerativeModel",
    "ModelField",
    "PathModel",
    "load_model",
    "model_class",
    "model_dynamics",
    "registered_models",
]
