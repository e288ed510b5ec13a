"""Evaluation metrics for reconstructed images and video."""

from .image import psnr, ssim, to_uint8

__all__ = ["psnr", "ssim", "to_uint8"]
