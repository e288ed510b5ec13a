"""Name parsing, the size table and config validation."""

import pytest
import torch

from vitok.model import PAPER_VARIANTS, SIZES, ViTok, ViTokConfig, config_from_name, parse_name


def test_paper_sizes():
    assert SIZES == {"T": (192, 4, 3), "S": (768, 6, 12), "B": (768, 12, 12), "L": (1152, 24, 16), "H": (1296, 32, 16)}


@pytest.mark.parametrize("name", PAPER_VARIANTS)
def test_every_paper_variant_parses(name):
    config = config_from_name(name, channels=8, image_size=128)
    assert config.name == name
    enc, dec = name.split("/")[0].split("-")
    assert (config.encoder_width, config.encoder_depth, config.encoder_heads) == SIZES[enc]
    assert (config.decoder_width, config.decoder_depth, config.decoder_heads) == SIZES[dec]


def test_image_and_video_names():
    image = config_from_name("S-B/16", channels=16, image_size=256)
    assert (image.patch_size, image.temporal_patch, image.is_video) == (16, 1, False)
    assert image.grid == (16, 16) and image.num_tokens == 256
    video = config_from_name("S-B/4x8", channels=16, image_size=128)
    assert (video.patch_size, video.temporal_patch, video.frames, video.is_video) == (8, 4, 16, True)
    assert video.grid == (4, 16, 16) and video.num_tokens == 1024
    assert config_from_name("L-H/2x32", frames=8).decoder_width == 1296


def test_sb16_parameter_count_is_near_the_papers():
    # The paper reports 129.0M for S-B/16 (its code adds biases and LayerNorm shifts we do not use).
    with torch.device("meta"):
        model = ViTok.from_name("S-B/16", channels=16, image_size=256)
    total = model.num_params()["total"]
    assert abs(total - 129.0e6) / 129.0e6 < 0.01


@pytest.mark.parametrize("name, message", [
    ("S-B", "cannot parse"),
    ("SB/16", "cannot parse"),
    ("S-X/16", "unknown size 'X'"),
    ("Q-B/16", "unknown size 'Q'"),
    ("S-B/16/2", "cannot parse"),
])
def test_bad_names_are_rejected(name, message):
    with pytest.raises(ValueError, match=message):
        parse_name(name)


@pytest.mark.parametrize("overrides, message", [
    (dict(image_size=250), "not divisible by patch_size 16; use 240 or 256"),
    (dict(frames=6, temporal_patch=4), "not divisible by temporal_patch 4; use 4 or 8"),
    (dict(encoder_heads=7), "not divisible by encoder_heads"),
    (dict(channels=0), "'channels' must be >= 1"),
    (dict(channels=16.0), "'channels' must be an integer"),
    (dict(logvar_min=5.0, logvar_max=1.0), "logvar_min"),
])
def test_impossible_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        config_from_name("S-B/16", **overrides)


def test_unknown_config_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown ViTok config keys \\['chanels'\\]"):
        config_from_name("S-B/16", chanels=16)
    with pytest.raises(ValueError, match="unknown ViTok config keys"):
        ViTokConfig.from_dict({"patch": 16})


def test_config_dict_round_trip():
    config = config_from_name("S-B/4x8", channels=8, image_size=64)
    assert ViTokConfig.from_dict(config.to_dict()) == config
