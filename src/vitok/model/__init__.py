"""The ViTok model: blocks, configuration, posterior and the tokenizer itself."""

from .distributions import DeterministicLatent, DiagonalGaussian
from .tokenizer import ViTok
from .variants import PAPER_VARIANTS, SIZES, ViTokConfig, config_from_name, parse_name

__all__ = ["DeterministicLatent", "DiagonalGaussian", "PAPER_VARIANTS", "SIZES", "ViTok", "ViTokConfig", "config_from_name", "parse_name"]
