"""vitok: Transformer visual tokenizers (ViTok) for images and video."""

from .model import PAPER_VARIANTS, DeterministicLatent, DiagonalGaussian, ViTok, ViTokConfig

__version__ = "0.1.0"

__all__ = ["DeterministicLatent", "DiagonalGaussian", "PAPER_VARIANTS", "ViTok", "ViTokConfig", "__version__"]
