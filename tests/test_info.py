"""FLOP and size accounting against a hand-derived formula and the paper's table."""

import re

import pytest

from conftest import tiny_config
from vitok.info import MAX_TOKENS, describe
from vitok.model import config_from_name
from vitok.model.blocks import swiglu_hidden


def analytic_flops(c):
    """2 FLOPs per multiply-add of every matmul and convolution, written out by hand."""
    L = c.num_tokens
    tubelet = 3 * c.temporal_patch * c.patch_size ** 2

    def blocks(D, depth):
        h = swiglu_hidden(D)
        per_block = 2 * L * D * 3 * D + 2 * L * D * D + 2 * 2 * L * L * D + 2 * L * D * 2 * h + 2 * L * h * D
        return depth * per_block

    encode = 2 * L * tubelet * c.encoder_width + blocks(c.encoder_width, c.encoder_depth) \
        + 2 * L * c.encoder_width * 2 * c.channels
    decode = 2 * L * c.channels * c.decoder_width + blocks(c.decoder_width, c.decoder_depth) \
        + 2 * L * c.decoder_width * tubelet
    return encode, decode


@pytest.mark.parametrize("config", [
    tiny_config(),
    tiny_config(temporal_patch=2, frames=4, image_size=16),
    config_from_name("S-B/16", channels=16, image_size=256),
    config_from_name("S-B/4x8", channels=8, image_size=64, frames=8),
], ids=["tiny", "tiny-video", "S-B/16", "S-B/4x8"])
def test_flop_counter_matches_hand_count(config):
    d = describe(config)
    encode, decode = analytic_flops(config)
    assert d["gflops_encode"] == pytest.approx(encode / 1e9, rel=1e-12)
    assert d["gflops_decode"] == pytest.approx(decode / 1e9, rel=1e-12)


def test_sb16_at_256p_lands_on_the_papers_figure():
    # The paper's Table reports 34.8 "GFLOPs" for S-B/16 at 256p, counting a multiply-add once.
    d = describe(config_from_name("S-B/16", channels=16, image_size=256))
    assert d["gflops_total"] / 2 == pytest.approx(34.8, abs=0.3)
    assert d["tokens"] == 256 and d["bottleneck"] == 4096
    assert d["compression"] == 48.0 and d["pixels_per_float"] == 16.0


def test_sb16_at_512p_and_sl16():
    assert describe(config_from_name("S-B/16", image_size=512))["gflops_total"] / 2 == pytest.approx(160.8, abs=1)
    assert describe(config_from_name("S-L/16", image_size=256))["gflops_total"] / 2 == pytest.approx(113.4, abs=1)


@pytest.mark.parametrize("argv, message", [
    (["info", "T-T/8", "--image-size", "1048576"], "--image-size 1048576 is out of range; info describes models with "
                                                   "--image-size from 1 to 16,384: pass a value in that range"),
    (["info", "T-T/8", "--image-size", "0"], "--image-size 0 is out of range"),
    (["info", "T-T/8", "--image-size", "16384"], "4,194,304 tokens per sample, above the 1,048,576 "
                                                 "\\(2\\^20\\) that info describes; pass a smaller --image-size "
                                                 "\\(at most 8192 for patch 8\\)"),
    (["info", "--channels", "-1"], "--channels -1 is out of range"),
    (["info", "T-T/4x8", "--frames", "0"], "--frames 0 is out of range"),
    (["info", "T-T/8", "--image-size", "36"], "image_size 36 is not divisible by patch_size 8; use 32 or 40"),
])
def test_info_refuses_bad_sizes_with_the_way_around(argv, message, capsys):
    from vitok.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err


def test_info_counts_flops_without_allocating_at_its_size_limit():
    # 2^20 tokens: L×L attention shapes of 2^40 elements, counted on the meta device in seconds.
    d = describe(config_from_name("T-T/8", image_size=8192))
    assert d["tokens"] == MAX_TOKENS == 1 << 20
    with pytest.raises(ValueError, match="at most 8192 for patch 8"):
        describe(config_from_name("T-T/8", image_size=8200))
