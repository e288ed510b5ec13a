"""The tokenizer end to end: shapes, any resolution, input errors, save/load, precision paths."""

import json

import pytest
import torch

from conftest import tiny_config
from vitok.model import ViTok


def pixels(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("H, W", [(32, 32), (16, 16), (48, 64), (64, 24)])
def test_image_shapes_at_any_multiple_of_the_patch(tiny_image_model, H, W):
    x = pixels(2, 3, H, W)
    post = tiny_image_model.encode(x)
    L = (H // 8) * (W // 8)
    assert post.mean.shape == post.logvar.shape == (2, L, 4)
    z = post.sample()
    assert z.shape == (2, L, 4)
    assert tiny_image_model.decode(z, size=(H, W)).shape == (2, 3, H, W)
    x_hat, _ = tiny_image_model(x)
    assert x_hat.shape == x.shape


@pytest.mark.parametrize("T, H, W", [(4, 32, 32), (8, 16, 32), (2, 24, 24)])
def test_video_shapes(tiny_video_model, T, H, W):
    x = pixels(1, 3, T, H, W)
    post = tiny_video_model.encode(x)
    L = (T // 2) * (H // 8) * (W // 8)
    assert post.mean.shape == (1, L, 4)
    assert tiny_video_model.decode(post.mode(), size=(T, H, W)).shape == x.shape
    assert tiny_video_model(x)[0].shape == x.shape


def test_decode_infers_nominal_and_square_grids(tiny_image_model):
    z32 = tiny_image_model.encode(pixels(1, 3, 32, 32)).mode()
    z64 = tiny_image_model.encode(pixels(1, 3, 64, 64)).mode()
    assert tiny_image_model.decode(z32).shape == (1, 3, 32, 32)
    assert tiny_image_model.decode(z64).shape == (1, 3, 64, 64)
    z_rect = tiny_image_model.encode(pixels(1, 3, 32, 64)).mode()
    with pytest.raises(ValueError, match="pass size=\\(H, W\\)"):
        tiny_image_model.decode(z_rect)


def test_forward_without_sampling_equals_decode_of_mode(tiny_image_model):
    x = pixels(2, 3, 32, 48)
    x_hat, post = tiny_image_model(x, sample=False)
    torch.testing.assert_close(x_hat, tiny_image_model.decode(post.mode(), size=(32, 48)), rtol=0, atol=0)


def test_batch_elements_are_independent(tiny_image_model):
    x = pixels(3, 3, 32, 32)
    full, _ = tiny_image_model(x, sample=False)
    single, _ = tiny_image_model(x[1:2], sample=False)
    torch.testing.assert_close(full[1:2], single, rtol=1e-5, atol=1e-5)


def test_logvar_is_clamped():
    torch.manual_seed(0)
    model = ViTok(tiny_config(logvar_min=-1.0, logvar_max=1.0))
    with torch.no_grad():
        model.to_moments.bias.fill_(50.0)
    post = model.encode(pixels(1, 3, 32, 32))
    assert post.logvar.max() <= 1.0 and post.logvar.min() >= -1.0


BAD_IMAGE_INPUTS = [
    (lambda: pixels(3, 32, 32), "add the batch dimension"),
    (lambda: pixels(1, 1, 32, 32), "grayscale input: repeat it to RGB"),
    (lambda: pixels(1, 4, 32, 32), "RGBA input: drop alpha"),
    (lambda: pixels(1, 32, 32, 3), "channels look last: permute"),
    (lambda: pixels(1, 3, 30, 32), "height 30 is not a positive multiple of 8 \\(use 24 or 32\\)"),
    (lambda: pixels(1, 3, 32, 36), "width 36 .* \\(use 32 or 40\\)"),
    (lambda: pixels(1, 3, 4, 32), "height 4 .* \\(use 8\\)"),
    (lambda: (pixels(1, 3, 32, 32) * 127.5 + 127.5).to(torch.uint8), "dtype torch.uint8.*x.float\\(\\) / 127.5 - 1"),
    (lambda: pixels(1, 3, 32, 32) * 127.5 + 127.5, "looks like \\[0, 255\\] pixels"),
    (lambda: pixels(1, 3, 32, 32) * 1.8, "expected \\[-1, 1\\]"),
    (lambda: pixels(1, 3, 32, 32) * 4.0, "expected \\[-1, 1\\]"),  # standardised, not 8-bit
    (lambda: pixels(1, 3, 32, 32).index_fill_(2, torch.tensor([3]), float("nan")), "NaN or infinite"),
    (lambda: pixels(1, 3, 32, 32).index_fill_(2, torch.tensor([3]), float("inf")), "NaN or infinite"),
    (lambda: pixels(0, 3, 32, 32), "empty batch"),
    (lambda: pixels(1, 3, 2, 32, 32), "this is an image model"),
    (lambda: [[0.0]], "expected a torch.Tensor"),
]


@pytest.mark.parametrize("make, message", BAD_IMAGE_INPUTS)
def test_bad_image_inputs_name_the_problem_and_fix(tiny_image_model, make, message):
    with pytest.raises(ValueError, match=message):
        tiny_image_model.encode(make())


@pytest.mark.parametrize("make, message", [
    (lambda: pixels(1, 3, 3, 32, 32), "frames 3 is not a positive multiple of 2 \\(use 2 or 4\\)"),
    (lambda: pixels(1, 3, 32, 32), "this is a video model"),
    (lambda: pixels(1, 4, 3, 32, 32), "time and channels look swapped"),
])
def test_bad_video_inputs(tiny_video_model, make, message):
    with pytest.raises(ValueError, match=message):
        tiny_video_model.encode(make())


@pytest.mark.parametrize("make, message", [
    (lambda: torch.zeros(16, 4), "add the batch dimension"),
    (lambda: torch.zeros(1, 16, 5), "5 channels but this model's bottleneck has c=4"),
    (lambda: torch.zeros(1, 16, 4, dtype=torch.int64), "floating-point"),
    (lambda: torch.full((1, 16, 4), float("nan")), "NaN or infinite"),
    (lambda: torch.zeros(0, 16, 4), "empty batch"),
    (lambda: torch.zeros(1, 15, 4), "cannot infer the token grid of 15 tokens"),
])
def test_bad_latents(tiny_image_model, make, message):
    with pytest.raises(ValueError, match=message):
        tiny_image_model.decode(make())


def test_save_load_round_trip_is_bit_identical(tiny_image_model, tmp_path):
    x = pixels(2, 3, 32, 48)
    before, _ = tiny_image_model(x, sample=False)
    tiny_image_model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = ViTok.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == tiny_image_model.config
    after, _ = loaded(x, sample=False)
    assert torch.equal(before, after)
    for (k, a), (_, b) in zip(tiny_image_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_video_save_load_round_trip(tiny_video_model, tmp_path):
    tiny_video_model.save_pretrained(tmp_path)
    x = pixels(1, 3, 4, 32, 32)
    assert torch.equal(tiny_video_model(x, sample=False)[0], ViTok.from_pretrained(tmp_path)(x, sample=False)[0])


def test_from_pretrained_errors(tiny_image_model, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ViTok.from_pretrained(tmp_path / "nowhere")
    folder = tmp_path / "ckpt"
    tiny_image_model.save_pretrained(folder)
    with pytest.raises(ValueError, match="pass the folder, not the file"):
        ViTok.from_pretrained(folder / "model.safetensors")

    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="missing model.safetensors"):
        ViTok.from_pretrained(folder)
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ViTok.from_pretrained(folder)
    (folder / "model.safetensors").write_bytes(weights)

    document = json.loads((folder / "config.json").read_text())
    document["config"]["channels"] = 8
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="different architecture.*to_moments.weight: config says \\(16, 32\\)"):
        ViTok.from_pretrained(folder)
    document["config"]["decoder_depth"] = 3
    document["config"]["channels"] = 4
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="missing \\['decoder.blocks.2"):
        ViTok.from_pretrained(folder)
    document["config"]["decoder_depth"] = 2
    document["config"]["patchsize"] = 8
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="unknown ViTok config keys \\['patchsize'\\]"):
        ViTok.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ViTok.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match="was not written by vitok"):
        ViTok.from_pretrained(folder)


def test_bf16_autocast_path_is_close_to_float32(tiny_image_model):
    x = pixels(2, 3, 32, 32)
    ref, _ = tiny_image_model(x, sample=False)
    tiny_image_model.amp_dtype = torch.bfloat16
    out, post = tiny_image_model(x, sample=False)
    assert out.dtype == torch.float32 and post.mean.dtype == torch.float32
    assert ((out - ref).norm() / ref.norm()).item() < 3e-2


def test_grad_checkpointing_matches_plain_backward():
    torch.manual_seed(0)
    model = ViTok(tiny_config())
    x = pixels(2, 3, 32, 32)
    grads = []
    for enabled in (False, True):
        model.set_grad_checkpointing(enabled)
        model.zero_grad()
        x_hat, post = model(x, sample=False)
        ((x_hat - x).square().mean() + 1e-3 * post.kl().mean()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_model_learns_on_meta_free_path_and_all_parameters_get_gradients():
    torch.manual_seed(0)
    model = ViTok(tiny_config())
    x_hat, post = model(pixels(2, 3, 32, 32))
    (x_hat.square().mean() + post.kl().mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("method", ["compile_blocks", "compile_stacks"])
def test_compiled_blocks_match_eager_and_keep_weight_names(method):
    torch.manual_seed(0)
    model = ViTok(tiny_config()).eval()
    x = pixels(2, 3, 32, 32)
    keys = list(model.state_dict())
    with torch.no_grad():
        eager, _ = model(x, sample=False)
        assert getattr(model, method)() is model
        compiled, _ = model(x, sample=False)
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("video", [False, True])
def test_tubelet_matmuls_equal_the_convolutions_they_replace(video):
    """The embed/unembed run as matmuls over flattened tubelets; the Conv3d modules hold the weights."""
    torch.manual_seed(0)
    model = ViTok(tiny_config(**({"temporal_patch": 2, "frames": 4} if video else {}))).double()
    with torch.no_grad():
        for p in model.parameters():  # non-zero biases, so their layout is checked too
            p.normal_()
    x = pixels(2, 3, 4, 32, 48).double() if video else pixels(2, 3, 32, 48).double()
    x5 = x if video else x.unsqueeze(2)
    conv_tokens = model.embed(x5).flatten(2).transpose(1, 2)
    patches, grid = model._patchify(x5)
    weight = model.embed.weight.flatten(1)
    torch.testing.assert_close(torch.nn.functional.linear(patches, weight, model.embed.bias), conv_tokens)
    assert grid == ((2, 4, 6) if video else (4, 6))
    tokens = torch.randn(2, conv_tokens.shape[1], model.config.decoder_width, dtype=torch.float64)
    t, h, w = grid if video else (1, *grid)
    conv_pixels = model.unembed(tokens.transpose(1, 2).reshape(2, -1, t, h, w))
    wt = model.unembed.weight.flatten(1).t()
    bias = model.unembed.bias.repeat_interleave(wt.shape[0] // 3)
    torch.testing.assert_close(model._unpatchify(torch.nn.functional.linear(tokens, wt, bias), grid), conv_pixels)
    # _patchify and _unpatchify are inverses.
    torch.testing.assert_close(model._unpatchify(patches, grid), x5)


def test_bf16_weights_run_without_autocast(tiny_image_model):
    """A model cast to bf16 (no autocast) keeps its residual stream in the weights' dtype."""
    x = pixels(2, 3, 32, 32)
    ref, _ = tiny_image_model(x, sample=False)
    model = tiny_image_model.to(torch.bfloat16)
    for pixels_in in (x, x.bfloat16()):  # float32 pixels are cast to the weights' dtype
        out, _ = model(pixels_in, sample=False, check=False)
        assert out.dtype == torch.float32
        assert ((out - ref).norm() / ref.norm()).item() < 5e-2
    z = model.encode(x).mean
    assert z.dtype == torch.float32 and model.decode(z).dtype == torch.float32


def test_bf16_residual_stream_is_close_to_float32(tiny_image_model):
    x = pixels(2, 3, 32, 32)
    tiny_image_model.amp_dtype = torch.bfloat16
    ref, _ = tiny_image_model(x, sample=False)
    tiny_image_model.residual_dtype = torch.bfloat16
    out, _ = tiny_image_model(x, sample=False)
    assert ((out - ref).norm() / ref.norm()).item() < 3e-2


def test_from_pretrained_loads_in_a_chosen_dtype(tmp_path):
    torch.manual_seed(0)
    model = ViTok(tiny_config()).eval()
    model.save_pretrained(tmp_path / "m")
    half = ViTok.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    for key, value in model.state_dict().items():
        assert torch.equal(half.state_dict()[key], value.to(torch.bfloat16)), key
    with pytest.raises(ValueError, match="floating-point torch.dtype"):
        ViTok.from_pretrained(tmp_path / "m", dtype=torch.int8)
