"""Latent generation: a class-conditional DiT over ViTok latents and Gaussian diffusion samplers."""

from .diffusion import GaussianDiffusion, cosine_betas, guide, linear_betas, make_betas
from .dit import DIT_SIZES, DiT, DiTConfig, dit_config

__all__ = ["DIT_SIZES", "DiT", "DiTConfig", "GaussianDiffusion", "cosine_betas", "dit_config", "guide",
           "linear_betas", "make_betas"]
