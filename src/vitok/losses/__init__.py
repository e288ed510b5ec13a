"""Training losses: reconstruction and KL (stage 1), LPIPS, and the discriminator and GAN terms (stage 2)."""

from .discriminator import Discriminator, blur_down, blur_kernel, minibatch_std
from .gan import LeCam, discriminator_loss, generator_loss, gradient_penalty, r1_penalty
from .perceptual import PerceptualLoss, load_perceptual_loss
from .reconstruction import kl_loss, reconstruction_loss

__all__ = [
    "Discriminator",
    "LeCam",
    "PerceptualLoss",
    "blur_down",
    "blur_kernel",
    "discriminator_loss",
    "generator_loss",
    "gradient_penalty",
    "kl_loss",
    "load_perceptual_loss",
    "minibatch_std",
    "r1_penalty",
    "reconstruction_loss",
]
