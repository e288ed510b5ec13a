"""Shared fixtures: tiny configurations that run in milliseconds on a CPU."""

import pytest
import torch

from vitok.model import ViTok, ViTokConfig


def tiny_config(**overrides) -> ViTokConfig:
    """A two-block-per-side tokenizer small enough for CPU tests."""
    fields = dict(encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=48, decoder_depth=2,
                  decoder_heads=4, patch_size=8, channels=4, image_size=32)
    fields.update(overrides)
    return ViTokConfig(**fields)


@pytest.fixture
def tiny_image_model() -> ViTok:
    torch.manual_seed(0)
    return ViTok(tiny_config()).eval()


@pytest.fixture
def tiny_video_model() -> ViTok:
    torch.manual_seed(0)
    return ViTok(tiny_config(temporal_patch=2, frames=4)).eval()
