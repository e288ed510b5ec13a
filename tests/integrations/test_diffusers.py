"""AutoencoderViTok: a ViTok tokenizer behind AutoencoderKL's interface, inside real diffusers pipelines.

Everything is built from configs with random weights; nothing is downloaded.
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel  # noqa: E402
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution  # noqa: E402
from diffusers.models.modeling_outputs import AutoencoderKLOutput  # noqa: E402

from vitok.integrations.diffusers import (  # noqa: E402
    AutoencoderViTok,
    MissingDiffusersError,
    spatial_to_tokens,
    tokens_to_spatial,
)
from vitok.model import ViTok  # noqa: E402
from vitok.model.latent_stats import MomentAccumulator  # noqa: E402

from conftest import tiny_config  # noqa: E402

C, P = 4, 8  # latent channels, patch size of the tiny tokenizers


def _pixels(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _with_stats(tok: ViTok) -> ViTok:
    """Statistics of the tokenizer's own latents on a few random images (shift and scale far from 0 and 1)."""
    acc = MomentAccumulator(C)
    with torch.no_grad():
        acc.update(tok.encode(_pixels(6, 3, 32, 32, seed=1)).mode() * 3.0 + 0.5)
    tok.latent_stats = acc.result(data="random")
    return tok


@pytest.fixture(scope="module")
def tok() -> ViTok:
    torch.manual_seed(0)
    return _with_stats(ViTok(tiny_config()).eval())


@pytest.fixture(scope="module")
def vae(tok) -> AutoencoderViTok:
    return AutoencoderViTok.from_vitok(tok)


def _tiny_dit(**overrides) -> DiTTransformer2DModel:
    torch.manual_seed(0)
    fields = dict(num_attention_heads=2, attention_head_dim=8, in_channels=C, out_channels=2 * C, num_layers=1,
                  sample_size=4, patch_size=2)
    return DiTTransformer2DModel(**{**fields, **overrides}).eval()


# ---- AutoencoderKL's interface, equal to vitok's own numbers -----------------------------------

@torch.no_grad()
def test_encode_decode_equal_vitok(tok, vae):
    x = _pixels(2, 3, 32, 48)  # a 4×6 grid: height and width must not be confused
    out = vae.encode(x)
    assert isinstance(out, AutoencoderKLOutput)
    dist = out.latent_dist
    assert isinstance(dist, DiagonalGaussianDistribution) and not dist.deterministic
    post = tok.encode(x)
    for name in ("mean", "logvar", "std", "var"):
        assert getattr(dist, name).shape == (2, C, 4, 6)
    assert torch.equal(dist.mode(), tokens_to_spatial(post.mode(), (4, 6)))
    assert torch.equal(dist.std, tokens_to_spatial(post.std, (4, 6)))
    assert dist.parameters.shape == (2, 2 * C, 4, 6)
    assert torch.equal(dist.kl(), post.kl())

    # sample(generator) draws vitok's noise: the same numbers, reshaped
    z = dist.sample(generator=torch.Generator().manual_seed(7))
    assert torch.equal(z, tokens_to_spatial(post.sample(generator=torch.Generator().manual_seed(7)), (4, 6)))
    assert z.shape == (2, C, 4, 6) and not torch.equal(z, dist.mode())
    per_sample = dist.sample(generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    assert per_sample.shape == (2, C, 4, 6)

    # decode(mode) is vitok's encode(mode) -> decode, exactly
    decoded = vae.decode(dist.mode())
    assert isinstance(decoded, DecoderOutput)
    assert torch.equal(decoded.sample, tok.decode(post.mode(), size=(32, 48)))
    assert decoded.sample.shape == (2, 3, 32, 48) and decoded.sample.dtype == torch.float32
    # return_dict=False returns tuples, as diffusers does; forward reconstructs through the mode
    assert torch.equal(vae.encode(x, return_dict=False)[0].mean, dist.mean)
    assert torch.equal(vae.decode(dist.mode(), return_dict=False)[0], decoded.sample)
    assert torch.equal(vae(x).sample, decoded.sample)
    assert vae(x, sample_posterior=True, generator=torch.Generator().manual_seed(0)).sample.shape == x.shape


@torch.no_grad()
def test_token_grid_maps_to_spatial_positions(tok, vae):
    x = _pixels(1, 3, 32, 48)
    tokens = tok.encode(x).mode()  # 1×24×c over a 4×6 grid, row-major
    spatial = vae.encode(x).latent_dist.mode()
    i, j = 2, 5
    assert torch.equal(spatial[0, :, i, j], tokens[0, i * 6 + j])
    # a hand-made grid: token k holds k in every channel
    k = torch.arange(24.0).view(1, 24, 1).expand(2, 24, C)
    grid = tokens_to_spatial(k, (4, 6))
    assert grid[1, 3, i, j] == i * 6 + j and grid.is_contiguous()
    back, shape = spatial_to_tokens(grid)
    assert torch.equal(back, k) and shape == (4, 6)


@torch.no_grad()
def test_slicing_gives_unsliced_results(vae):
    x = _pixels(3, 3, 32, 32, seed=3)
    full = vae.encode(x).latent_dist
    full_pixels = vae.decode(full.mode()).sample
    vae.enable_slicing()
    try:
        assert vae.use_slicing
        sliced = vae.encode(x).latent_dist
        sliced_pixels = vae.decode(full.mode()).sample
    finally:
        vae.disable_slicing()
    assert not vae.use_slicing
    assert sliced.mean.shape == full.mean.shape and sliced_pixels.shape == full_pixels.shape
    torch.testing.assert_close(sliced.mean, full.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(sliced.logvar, full.logvar, rtol=0, atol=1e-5)
    torch.testing.assert_close(sliced_pixels, full_pixels, rtol=0, atol=1e-5)


# ---- the config: normalisation fields from the tokenizer's LatentStats -------------------------

def test_config_from_latent_stats(tok, vae):
    stats = tok.latent_stats
    cfg = vae.config
    assert cfg.normalisation == "global"
    assert cfg.scaling_factor == stats.scaling_factor and cfg.shift_factor == stats.shift_factor
    assert cfg.scaling_factor != 1.0 and cfg.shift_factor != 0.0
    assert cfg.latents_mean is None and cfg.latents_std is None  # one normalisation per config
    assert cfg.latent_stats == stats.to_dict() and cfg.vitok_config == tok.config.to_dict()
    assert (cfg.latent_channels, cfg.sample_size, cfg.patch_size, cfg.in_channels, cfg.out_channels) == (C, 32, P, 3, 3)
    assert 2 ** (len(cfg.block_out_channels) - 1) == P == vae.spatial_compression_ratio  # pipelines' vae_scale_factor
    assert vae.temporal_compression_ratio == 1
    assert vae.dtype == torch.float32 and vae.device == torch.device("cpu")
    assert vae.tokenizer is tok  # wrapped, not copied

    channel = AutoencoderViTok.from_vitok(tok, normalisation="channel").config
    assert channel.latents_mean == stats.mean and channel.latents_std == stats.std
    assert channel.scaling_factor == 1.0 and channel.shift_factor == 0.0
    none = AutoencoderViTok.from_vitok(tok, normalisation="none").config
    assert (none.scaling_factor, none.shift_factor, none.latents_mean) == (1.0, 0.0, None)
    explicit = AutoencoderViTok.from_vitok(tok, scaling_factor=0.5, shift_factor=0.25).config
    assert (explicit.scaling_factor, explicit.shift_factor) == (0.5, 0.25)


def test_tokenizer_without_statistics_warns():
    torch.manual_seed(0)
    plain = ViTok(tiny_config()).eval()
    with pytest.warns(UserWarning, match="no latent statistics.*vitok stats"):
        vae = AutoencoderViTok.from_vitok(plain)
    assert (vae.config.scaling_factor, vae.config.shift_factor, vae.config.latents_mean) == (1.0, 0.0, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AutoencoderViTok.from_vitok(plain, normalisation="none")  # said on purpose: no warning
        AutoencoderViTok.from_vitok(plain, scaling_factor=0.7)


@torch.no_grad()
def test_training_script_normalisation_round_trip(tok, vae):
    """What diffusers' training scripts do, checked against vitok's own normalisation."""
    x = _pixels(2, 3, 32, 32, seed=4)
    latents = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    model_input = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    tokens, grid = spatial_to_tokens(latents)
    torch.testing.assert_close(spatial_to_tokens(model_input)[0], tok.normalise_latents(tokens, "global"))
    restored = model_input / vae.config.scaling_factor + vae.config.shift_factor  # SD3/Flux pipelines' decode
    torch.testing.assert_close(restored, latents)
    torch.testing.assert_close(vae.decode(restored).sample, vae.decode(latents).sample, rtol=0, atol=1e-4)

    # the per-channel convention (SDXL-style pipelines, when latents_mean is set)
    cfg = AutoencoderViTok.from_vitok(tok, normalisation="channel").config
    mean = torch.tensor(cfg.latents_mean).view(1, C, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, C, 1, 1)
    per_channel = (latents - mean) * cfg.scaling_factor / std
    torch.testing.assert_close(spatial_to_tokens(per_channel)[0], tok.normalise_latents(tokens, "channel"))


# ---- inside a real diffusers pipeline ----------------------------------------------------------

@torch.no_grad()
def test_dit_pipeline_end_to_end(tok, vae, monkeypatch):
    pipe = DiTPipeline(transformer=_tiny_dit(), vae=vae, scheduler=DDIMScheduler(), id2label={1: "one", 2: "two"})
    pipe.set_progress_bar_config(disable=True)
    steps, decoded = [], []
    step, decode = pipe.scheduler.step, vae.decode

    def record_step(*args, **kwargs):
        steps.append(step(*args, **kwargs))
        return steps[-1]

    def record_decode(z, *args, **kwargs):
        decoded.append((z.clone(), decode(z, *args, **kwargs)))
        return decoded[-1][1]

    monkeypatch.setattr(pipe.scheduler, "step", record_step)
    monkeypatch.setattr(vae, "decode", record_decode)
    images = pipe(class_labels=pipe.get_label_ids(["one", "two"]), guidance_scale=4.0, num_inference_steps=3,
                  output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert 0 <= images.min() and images.max() <= 1
    assert len(steps) == 3 and len(decoded) == 1

    # the pipeline decoded its final latents / config.scaling_factor through the adapter ...
    z, out = decoded[0]
    final = steps[-1].prev_sample.chunk(2)[0]  # classifier-free guidance ran both halves
    assert z.shape == (2, C, 4, 4)
    torch.testing.assert_close(z, final / vae.config.scaling_factor)
    # ... which is vitok's decode of those latents as tokens
    expected = tok.decode(spatial_to_tokens(z)[0], size=(32, 32))
    assert torch.equal(out.sample, expected)
    assert torch.equal(images, (expected / 2 + 0.5).clamp(0, 1))

    numpy_images = pipe(class_labels=[1], guidance_scale=1.0, num_inference_steps=2, output_type="np").images
    assert numpy_images.shape == (1, 32, 32, 3)


@torch.no_grad()
def test_pipeline_and_adapter_save_load(tok, vae, tmp_path):
    pipe = DiTPipeline(transformer=_tiny_dit(), vae=vae, scheduler=DDIMScheduler())
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["vae"] == ["vitok.integrations.diffusers", "AutoencoderViTok"]
    loaded = DiTPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.vae, AutoencoderViTok)
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.vae.config) == public(vae.config)
    assert loaded.vae.tokenizer.latent_stats == tok.latent_stats
    z = vae.encode(_pixels(1, 3, 32, 32)).latent_dist.mode()
    assert torch.equal(loaded.vae.decode(z).sample, vae.decode(z).sample)

    # diffusers' format with normalisation re-derived on loading
    channel = AutoencoderViTok.from_pretrained(tmp_path / "pipe", subfolder="vae", normalisation="channel")
    assert channel.config.latents_mean == tok.latent_stats.mean and channel.config.scaling_factor == 1.0

    # vitok's own folder format loads too, statistics included
    tok.save_pretrained(tmp_path / "vitok")
    from_vitok_folder = AutoencoderViTok.from_pretrained(tmp_path / "vitok")
    assert public(from_vitok_folder.config) == public(vae.config)
    assert torch.equal(from_vitok_folder.decode(z).sample, vae.decode(z).sample)
    half = AutoencoderViTok.from_pretrained(tmp_path / "vitok", torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="vitok checkpoint.*variant"):
        AutoencoderViTok.from_pretrained(tmp_path / "vitok", variant="fp16")


# ---- other tokenizers --------------------------------------------------------------------------

@torch.no_grad()
def test_v2_tokenizer_is_deterministic_and_exact():
    torch.manual_seed(0)
    tok = ViTok(tiny_config(architecture="vitok-v2")).eval()
    vae = AutoencoderViTok.from_vitok(tok, normalisation="none")
    x = _pixels(2, 3, 32, 32)
    dist = vae.encode(x).latent_dist
    assert dist.deterministic and torch.equal(dist.sample(), dist.mode())
    assert not dist.std.any() and torch.isfinite(dist.logvar).all()
    assert torch.equal(dist.kl(), torch.zeros(2))
    assert torch.equal(vae.decode(dist.mode()).sample, tok.decode(tok.encode(x).mode()))
    # v2 would pad 30×32 to whole patches and decode 32×32: the adapter refuses instead
    with pytest.raises(ValueError, match="height 30 is not a positive multiple of 8.*height 24 or 32"):
        vae.encode(_pixels(1, 3, 30, 32))


@torch.no_grad()
def test_video_tokenizer_latents_are_b_c_t_h_w():
    torch.manual_seed(0)
    tok = ViTok(tiny_config(temporal_patch=2, frames=4)).eval()
    vae = AutoencoderViTok.from_vitok(tok, normalisation="none")
    x = _pixels(1, 3, 4, 32, 16)
    dist = vae.encode(x).latent_dist
    assert dist.mean.shape == (1, C, 2, 4, 2) and vae.temporal_compression_ratio == 2
    post = tok.encode(x)
    assert torch.equal(dist.mean[0, :, 1, 3, 0], post.mean[0, (1 * 4 + 3) * 2 + 0])
    assert torch.equal(vae.decode(dist.mode()).sample, tok.decode(post.mode(), size=(4, 32, 16)))
    assert dist.kl().shape == (1,) and dist.nll(dist.mode()).shape == (1,)


# ---- errors ------------------------------------------------------------------------------------

def test_clear_errors(tok, vae):
    with pytest.raises(ValueError, match="width 36 is not a positive multiple of 8"):
        vae.encode(_pixels(1, 3, 32, 36))
    with pytest.raises(ValueError, match="expected a 4-D tensor"):
        vae.encode(_pixels(3, 32, 32))
    tokens = torch.zeros(1, 16, C)
    with pytest.raises(ValueError, match="B×L×c tokens"):
        vae.decode(tokens)
    with pytest.raises(ValueError, match="channels look last"):
        vae.decode(torch.zeros(1, 3, 5, C))
    with pytest.raises(ValueError, match="c=4"):
        vae.decode(torch.zeros(1, C + 1, 4, 4))
    with pytest.raises(ValueError, match="normalisation must be one of"):
        AutoencoderViTok.from_vitok(tok, normalisation="per-channel")
    with pytest.raises(ValueError, match="from_vitok takes a vitok.ViTok"):
        AutoencoderViTok.from_vitok(42)
    with pytest.raises(ValueError, match="unexpected arguments"):
        AutoencoderViTok.from_vitok(tok, scale=2.0)
    with pytest.raises(ValueError, match="latents_mean and latents_std go together"):
        AutoencoderViTok.from_vitok(tok, latents_mean=[0.0] * C)
    with pytest.raises(ValueError, match="latents_std must be 4 finite numbers"):
        AutoencoderViTok.from_vitok(tok, latents_mean=[0.0] * C, latents_std=[1.0] * 3)
    with pytest.raises(ValueError, match="scaling_factor must be positive"):
        AutoencoderViTok.from_vitok(tok, scaling_factor=-1.0)
    with pytest.raises(ValueError, match="latent_channels=8 contradicts"):
        AutoencoderViTok(vitok_config=tok.config.to_dict(), normalisation="none", latent_channels=8)
    with pytest.raises(ValueError, match="needs vitok_config"):
        AutoencoderViTok()


def test_gradient_checkpointing_and_training(tok):
    torch.manual_seed(0)
    vae = AutoencoderViTok.from_vitok(ViTok(tiny_config()), normalisation="none")
    vae.enable_gradient_checkpointing()
    assert vae.is_gradient_checkpointing and vae.tokenizer.decoder.grad_checkpointing
    vae.train()
    loss = vae(_pixels(1, 3, 32, 32), sample_posterior=True).sample.square().mean()
    loss.backward()
    assert vae.tokenizer.from_latent.weight.grad is not None
    vae.disable_gradient_checkpointing()
    assert not vae.is_gradient_checkpointing


def test_missing_diffusers_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now fails
    monkeypatch.delitem(sys.modules, "vitok.integrations.diffusers")
    message = r"diffusers, which is not installed: pip install 'vitok\[diffusers\]'"
    with pytest.raises(ImportError, match=message) as info:
        importlib.import_module("vitok.integrations.diffusers")
    # the re-imported module's class, not MissingDiffusersError itself: both an ImportError and a ValueError
    assert type(info.value).__name__ == MissingDiffusersError.__name__ and isinstance(info.value, ValueError)


def test_enable_tiling_tiles_with_vitoks_tiling(tok):
    from vitok.model.tiling import Tiling

    vae = AutoencoderViTok.from_vitok(tok)
    x = _pixels(1, 3, 48, 64)
    with torch.no_grad():
        plain = vae.encode(x).latent_dist.mode()
        vae.enable_tiling(tile_size=32, overlap=8)
        assert vae.use_tiling
        tiled = vae.encode(x).latent_dist.mode()
        want = tok.encode(x, tiling=Tiling(tile_size=32, overlap=8)).mode()
        torch.testing.assert_close(tiled, want.transpose(1, 2).reshape(1, -1, 6, 8), rtol=0, atol=0)
        pixels = vae.decode(tiled).sample
        torch.testing.assert_close(pixels, tok.decode(want, size=(48, 64), tiling=Tiling(tile_size=32, overlap=8)),
                                   rtol=0, atol=0)
        vae.disable_tiling()
        torch.testing.assert_close(vae.encode(x).latent_dist.mode(), plain, rtol=0, atol=0)
    assert not torch.equal(tiled, plain)
