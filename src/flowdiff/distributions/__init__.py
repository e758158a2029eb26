"""Densities with ``sample``, ``log_prob`` and ``score``: ``p_init`` and analytic ``p_data``."""

from flowdiff.distributions.gaussian import Gaussian, IsotropicGaussian
from flowdiff.distributions.mixture import GaussianMixture

__all__ = ["Gaussian", "GaussianMixture", "IsotropicGaussian"]
