"""Evaluation metrics for reconstructed images and video."""

from .frechet import FeatureStats, frechet_distance, inception_score
from .image import psnr, ssim, to_uint8

__all__ = ["FeatureStats", "frechet_distance", "inception_score", "psnr", "ssim", "to_uint8"]
