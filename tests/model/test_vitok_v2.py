"""The v2 architecture and its converter against the ViTok authors' reference implementation.

The reference numbers (fixtures/vitok_v2, see its README) come from running github
Na-VAE/vitok-release on a tiny random model: its latents, decoded patches and final images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from vitok import ViTok, ViTokConfig
from vitok.model import vitok_v2
from vitok.model.blocks import apply_rope, rope_angles, rope_tables
from vitok.model.distributions import DeterministicLatent

FIXTURE = Path(__file__).parent / "fixtures" / "vitok_v2"
# float32 rounding: the reference and vitok order some sums differently (fused qkv rows permuted,
# RoPE angles from float64 here, float32 there); measured max |diff| 1.2e-6 on z, 6.6e-7 on patches.
ATOL = 1e-5


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> ViTok:
    out = tmp_path_factory.mktemp("v2") / "tiny"
    vitok_v2.convert(FIXTURE, out, image_size=64)
    return ViTok.from_pretrained(out)


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "expected.safetensors"))


def load_input(i: int) -> torch.Tensor:
    """input_i.png as 1×3×H×W in [-1, 1], the way vitok reads 8-bit images."""
    pixels = np.asarray(Image.open(FIXTURE / f"input_{i}.png").convert("RGB")).copy()
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def patches_of(pixels: torch.Tensor, p: int) -> torch.Tensor:
    """1×3×H×W (H, W multiples of p) -> L×3pp in the reference's (c, y, x) order, rows of the grid first."""
    return F.unfold(pixels, p, stride=p)[0].T


@pytest.mark.parametrize("i", [0, 1])
def test_matches_the_reference_latents_patches_and_images(converted, expected, i):
    x = load_input(i)
    H, W = x.shape[-2:]
    p = converted.config.patch_size
    grid = (math.ceil(H / p), math.ceil(W / p))
    n = grid[0] * grid[1]
    valid = expected["patch_mask"][i].bool()
    assert int(valid.sum()) == n and bool(valid[:n].all())  # the reference packs valid patches first
    # vitok's token order is the reference's row-major (row_idx, col_idx) order
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    assert torch.equal(expected["row_idx"][i, :n], rows.flatten())
    assert torch.equal(expected["col_idx"][i, :n], cols.flatten())
    # same input values: zeros (mid-grey) pad the image to whole patches at the bottom and right
    padded = F.pad(x, (0, grid[1] * p - W, 0, grid[0] * p - H))
    assert torch.equal(patches_of(padded, p), expected["patches"][i, :n])

    with torch.no_grad():
        latent = converted.encode(x)
        assert isinstance(latent, DeterministicLatent) and latent.deterministic
        z = latent.mode()
        assert z.shape == (1, n, converted.config.channels)
        torch.testing.assert_close(z[0], expected["z"][i, :n], rtol=0, atol=ATOL)
        # decoded patches, from the reference's own z so the decoder is checked on its own
        whole = converted.decode(expected["z"][i:i + 1, :n], size=(grid[0] * p, grid[1] * p))
        torch.testing.assert_close(patches_of(whole, p), expected["out_patches"][i, :n], rtol=0, atol=ATOL)
        # the final image: decode crops to the input size; 0..255 as the reference post-processes
        image = converted.decode(z, size=(H, W))
    assert image.shape == (1, 3, H, W)
    levels = ((image[0].clamp(-1, 1) + 1) * 127.5).round()
    diff = (levels - expected[f"recon_{i}"]).abs()
    # Measured: identical. One level is allowed where float noise meets a rounding tie.
    assert float(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3


def test_forward_reconstructs_at_the_input_size(converted):
    x = load_input(1)  # 48×80
    with torch.no_grad():
        x_hat, latent = converted(x, noise=torch.randn(1, 60, 8))
        alone = converted.decode(converted.encode(x).mode(), size=(48, 80))
    assert x_hat.shape == x.shape
    assert torch.equal(x_hat, alone)  # deterministic: noise changes nothing
    assert latent.deterministic


def test_any_size_is_padded_to_whole_patches_and_cropped_back(converted):
    x = load_input(0)[..., :50, :61]  # neither side a multiple of 8
    with torch.no_grad():
        z = converted.encode(x).mode()
        assert z.shape[1] == 7 * 8
        out = converted.decode(z, size=(50, 61))
        whole = converted.decode(z, size=(56, 64))
    assert out.shape == (1, 3, 50, 61)
    assert torch.equal(out, whole[..., :50, :61])


def test_deterministic_latent_answers_like_a_posterior_and_refuses_kl():
    z = torch.randn(2, 4, 3)
    latent = DeterministicLatent(z)
    assert latent.sample() is z and latent.mode() is z
    assert torch.equal(latent.std, torch.zeros_like(z))
    with pytest.raises(ValueError, match="no KL term.*kl_weight=0"):
        latent.kl()


def test_rope_permutation_turns_interleaved_pairs_into_vitok_pairs():
    """Attention logits with the reference's interleaved RoPE (float64, written here) equal vitok's
    split-pair RoPE on channels permuted by interleaved_to_split."""
    torch.manual_seed(0)
    h, w, d = 3, 5, 16
    q, k = torch.randn(2, h * w, d, dtype=torch.float64)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")

    def interleaved(x: torch.Tensor) -> torch.Tensor:
        axis = d // 2
        inv = 1.0 / 10000.0 ** (torch.arange(0, axis, 2, dtype=torch.float64) / axis)
        ang = torch.cat([rows.flatten()[:, None] * inv, cols.flatten()[:, None] * inv], dim=-1)
        a, b = x[:, 0::2], x[:, 1::2]
        out = torch.empty_like(x)
        out[:, 0::2] = a * ang.cos() - b * ang.sin()
        out[:, 1::2] = a * ang.sin() + b * ang.cos()
        return out

    perm = vitok_v2.interleaved_to_split(d)
    tables = tuple(t.double() for t in rope_tables(rope_angles((h, w), d)))
    ours = apply_rope(q[:, perm][None, None], tables)[0, 0] @ apply_rope(k[:, perm][None, None], tables)[0, 0].T
    theirs = interleaved(q) @ interleaved(k).T
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)  # float32 angle tables


def _reference_state(entry: dict, device: str = "meta") -> dict[str, torch.Tensor]:
    """Every tensor of a released checkpoint, from released_checkpoints.json (which lists block 0 of
    each stack): block 0's names and shapes repeated over the constructor's depths."""
    kw = entry["constructor"]
    state = {}
    for name, shape in entry["tensors"].items():
        if "_blocks.0." in name:
            part = name.split("_blocks.")[0]
            for i in range(kw[f"{part}_depth"]):
                state[name.replace("_blocks.0.", f"_blocks.{i}.")] = torch.empty(shape, device=device)
        else:
            state[name] = torch.empty(shape, device=device)
    return state


RELEASED_JSON = json.loads((FIXTURE / "released_checkpoints.json").read_text())


@pytest.mark.parametrize("name", sorted(RELEASED_JSON))
def test_every_released_checkpoint_converts_tensor_for_tensor(name):
    entry = RELEASED_JSON[name]
    state = _reference_state(entry)
    assert sum(v.numel() for v in state.values()) == entry["params"]  # the json's count: nothing left out
    config = vitok_v2.config_of_reference(state)
    assert config == vitok_v2.RELEASED[name].config()
    assert vitok_v2.RELEASED[name].repo == entry["hub_repo"]
    converted = vitok_v2.convert_state(state, config)
    with torch.device("meta"):
        model = ViTok(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == shapes == ViTok.state_shapes(config)
    assert config.num_params == model.num_params()["total"] == entry["params"]
    kw = entry["constructor"]
    assert (config.patch_size, config.channels) == (kw["spatial_stride"], kw["channels_per_token"])


def test_converted_fixture_maps_every_reference_tensor():
    state = vitok_v2.read_reference(FIXTURE)
    keys = json.loads((FIXTURE / "fixture.json").read_text())
    assert sorted(state) == sorted(keys["keys_encoder"] + keys["keys_decoder"])
    config = vitok_v2.config_of_reference(state)
    out = vitok_v2.convert_state(state, config)
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in state.values())


def test_conversion_refuses_what_it_cannot_reproduce(tmp_path):
    state = vitok_v2.read_reference(FIXTURE)
    with pytest.raises(ValueError, match="cannot map.*cls_token.*register tokens"):
        vitok_v2.config_of_reference({**state, "cls_token": torch.zeros(1, 1, 64)})
    encoder_only = {k: v for k, v in state.items() if not k.startswith(("decoder", "to_pixels"))}
    with pytest.raises(ValueError, match="lack.*decoder_embed"):
        vitok_v2.config_of_reference(encoder_only)
    wider = dict(state)
    wider["encoder_blocks.0.ffn.fc1.weight"] = torch.zeros(2 * 192, 64)
    with pytest.raises(ValueError, match="MLP is 192 wide.*176"):
        vitok_v2.config_of_reference(wider)
    (tmp_path / "enc").mkdir()
    save_file(encoder_only, str(tmp_path / "enc" / "encoder.safetensors"))
    with pytest.raises(ValueError, match="no v2 weights.*decoder.safetensors"):
        vitok_v2.read_reference(tmp_path / "enc")


def test_layer_scale_absent_means_gamma_one(converted):
    state = vitok_v2.read_reference(FIXTURE)
    plain = {k: v for k, v in state.items() if "layer_scale" not in k}
    config = vitok_v2.config_of_reference(plain)
    out = vitok_v2.convert_state(plain, config)
    assert torch.equal(out["decoder.blocks.2.layer_scale"], torch.ones(96))


def test_v2_state_shapes_match_a_built_model_and_count():
    config = ViTokConfig(encoder_width=64, encoder_depth=2, encoder_heads=4, decoder_width=96, decoder_depth=3,
                         decoder_heads=4, patch_size=8, channels=8, image_size=64, qk_norm=True,
                         architecture="vitok-v2")
    model = ViTok(config)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == ViTok.state_shapes(config)
    assert model.num_params()["total"] == config.num_params
    # a fresh v2 model starts each block near the identity, as the authors' init does
    assert float(model.decoder.blocks[0].layer_scale.detach().max()) == pytest.approx(1e-4)


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="architecture.*vitok-v3.*vitok-v2"):
        ViTokConfig(architecture="vitok-v3")


def test_checkpoints_written_before_the_architecture_field_still_load(tmp_path):
    model = ViTok(ViTokConfig(encoder_width=64, encoder_depth=1, encoder_heads=2, decoder_width=64, decoder_depth=1,
                              decoder_heads=2, patch_size=8, channels=4, image_size=32))
    model.save_pretrained(tmp_path)
    document = json.loads((tmp_path / "config.json").read_text())
    del document["config"]["architecture"]
    (tmp_path / "config.json").write_text(json.dumps(document))
    loaded = ViTok.from_pretrained(tmp_path)
    assert loaded.config.architecture == "vitok"
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_a_v1_config_over_v2_weights_names_the_architecture(tmp_path):
    vitok_v2.convert(FIXTURE, tmp_path, image_size=64)
    document = json.loads((tmp_path / "config.json").read_text())
    document["config"]["architecture"] = "vitok"
    (tmp_path / "config.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="architecture is vitok in config.json but vitok-v2 in the weights"):
        ViTok.from_pretrained(tmp_path)
