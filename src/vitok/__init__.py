"""vitok: Transformer visual tokenizers (ViTok) for images and video."""

from .model import PAPER_VARIANTS, DiagonalGaussian, ViTok, ViTokConfig

__version__ = "0.1.0"

__all__ = ["DiagonalGaussian", "PAPER_VARIANTS", "ViTok", "ViTokConfig", "__version__"]
