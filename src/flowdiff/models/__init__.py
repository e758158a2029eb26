"""User-facing generative models sharing one interface (:class:`GenerativeModel`)."""

from flowdiff.models.base import GenerativeModel, load_model, model_class, registered_models

__all__ = ["GenerativeModel", "load_model", "model_class", "registered_models"]
