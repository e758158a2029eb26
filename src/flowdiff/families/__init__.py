"""The other generative families of the notes under the one :class:`GenerativeModel` interface.

GAN, VAE, normalizing flow (RealNVP), continuous normalizing flow trained by maximum likelihood
(CNF), discrete-time diffusion (DDPM) and latent flow matching (a flow on a VAE's latents); flow
matching and score-based diffusion are ``flowdiff.models.FlowModel`` / ``DiffusionModel``. Every
one registers its ``kind`` with ``flowdiff.models.registered_models()`` on import.
"""

from flowdiff.families.cnf import CNF
from flowdiff.families.ddpm import DDPM
from flowdiff.families.gan import GAN
from flowdiff.families.latent import LatentFlow
from flowdiff.families.realnvp import RealNVP
from flowdiff.families.vae import VAE

__all__ = ["CNF", "DDPM", "GAN", "VAE", "LatentFlow", "RealNVP"]
