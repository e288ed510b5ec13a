"""vitok: Transformer visual tokenizers (ViTok) for images and video."""

from .model import PAPER_VARIANTS, DeterministicLatent, DiagonalGaussian, ViTok, ViTokConfig
from .model.latent_stats import LatentStats
from .model.tiling import Tiling

__version__ = "0.1.0"

__all__ = ["DeterministicLatent", "DiagonalGaussian", "LatentStats", "PAPER_VARIANTS", "Tiling", "ViTok", "ViTokConfig",
           "__version__"]
