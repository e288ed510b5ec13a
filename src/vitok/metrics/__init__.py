"""Evaluation metrics for reconstructed images and video."""

from .frechet import FeatureStats, frechet_distance, inception_score
from .image import psnr, ssim, to_uint8
from .sharpness import dataset_sharpness, high_frequency_energy, sharpness_ratio
from .structure import MS_SSIM_MIN_SIZE, gmsd, ms_ssim
from .swd import PatchSWD

__all__ = [
    "MS_SSIM_MIN_SIZE",
    "FeatureStats",
    "PatchSWD",
    "dataset_sharpness",
    "frechet_distance",
    "gmsd",
    "high_frequency_energy",
    "inception_score",
    "ms_ssim",
    "psnr",
    "sharpness_ratio",
    "ssim",
    "to_uint8",
]
