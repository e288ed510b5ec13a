"""Every bad input to the model package and the message it must produce (issue 14).

One table per entry point: ViTokConfig fields, checkpoint folders, decode sizes, pixel layouts
and the token limit. Each row is the input and a fragment (regex) of the ValueError it must raise.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_config
from vitok.model import ViTok, ViTokConfig, checks, tokenizer

# ---- ViTokConfig: every field's type and range ---------------------------------------------------

BAD_CONFIGS = [
    (dict(rope_theta="abc"), "'rope_theta' must be a number, got 'abc'"),
    (dict(rope_theta=float("nan")), "'rope_theta' must be a finite number, got nan"),
    (dict(rope_theta=1.0), "'rope_theta' must be > 1"),
    (dict(norm_eps=-1e-6), "'norm_eps' must be in \\(0, 1\\).*got -1e-06"),
    (dict(norm_eps=0.0), "'norm_eps' must be in \\(0, 1\\)"),
    (dict(norm_eps=float("inf")), "'norm_eps' must be a finite number, got inf"),
    (dict(logvar_min=float("nan")), "'logvar_min' must be a finite number, got nan"),
    (dict(logvar_max=float("inf")), "'logvar_max' must be a finite number, got inf"),
    (dict(logvar_max=float("-inf")), "'logvar_max' must be a finite number, got -inf"),
    (dict(logvar_min=2.0, logvar_max=2.0), "logvar_min 2.0 must be below logvar_max 2.0"),
    (dict(logvar_max=200.0), "'logvar_max' must be in \\[-80, 80\\].*got 200.0"),
    (dict(logvar_min=True), "'logvar_min' must be a number, got True"),
    (dict(qk_norm=1), "'qk_norm' must be true or false, got 1"),
    (dict(qk_norm="yes"), "'qk_norm' must be true or false, got 'yes'"),
    (dict(channels="4"), "'channels' must be an integer, got '4'"),
    (dict(patch_size=8.0), "'patch_size' must be an integer, got 8.0"),
    (dict(encoder_depth=True), "'encoder_depth' must be an integer, got True"),
    (dict(decoder_heads=-4), "'decoder_heads' must be >= 1, got -4"),
    (dict(encoder_depth=10 ** 5), "'encoder_depth' is 100000, above vitok's limit of 1024"),
    (dict(decoder_depth=10 ** 9), "'decoder_depth' is 1000000000, above vitok's limit of 1024"),
    (dict(encoder_width=10 ** 9), "'encoder_width' is 1000000000, above vitok's limit of 65536"),
    (dict(image_size=1 << 20), "'image_size' is 1048576, above vitok's limit of 16384"),
    (dict(encoder_width=32768, encoder_heads=256, encoder_depth=1024), "parameters, above vitok's limit"),
    (dict(name=3), "'name' must be a string, got 3"),
]


@pytest.mark.parametrize("fields, message", BAD_CONFIGS)
def test_bad_config_values_name_field_value_and_range(fields, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**fields)


@pytest.mark.parametrize("data, message", [
    ([1, 2], "ViTok config must be a mapping of field names to values, got list"),
    ("S-B/16", "must be a mapping"),
])
def test_config_from_dict_needs_a_mapping(data, message):
    with pytest.raises(ValueError, match=message):
        ViTokConfig.from_dict(data)


def test_integer_floats_are_accepted_as_floats():
    config = tiny_config(rope_theta=500, logvar_min=-10, logvar_max=10)
    assert isinstance(config.rope_theta, float) and config.rope_theta == 500.0
    assert ViTokConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("fields", [{}, dict(qk_norm=True), dict(temporal_patch=2, frames=4, qk_norm=True),
                                    dict(encoder_width=96, encoder_heads=3, decoder_depth=3)])
def test_shapes_and_parameter_count_without_building_match_a_built_model(fields):
    config = tiny_config(**fields)
    model = ViTok(config)
    assert ViTok.state_shapes(config) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert config.num_params == model.num_params()["total"]


# ---- checkpoint folders: every disagreement is an error ------------------------------------------


def edit_config(**fields):
    def mutate(folder):
        document = json.loads((folder / "config.json").read_text())
        document["config"].update(fields)
        (folder / "config.json").write_text(json.dumps(document))
    return mutate


def edit_document(**fields):
    def mutate(folder):
        document = json.loads((folder / "config.json").read_text())
        document.update(fields)
        (folder / "config.json").write_text(json.dumps(document))
    return mutate


def edit_weights(change, metadata=None):
    def mutate(folder):
        state = load_file(folder / "model.safetensors")
        change(state)
        save_file(state, folder / "model.safetensors",
                  metadata=metadata or {"format": "vitok", "format_version": "1"})
    return mutate


def drop_fields(*keys):
    def mutate(folder):
        document = json.loads((folder / "config.json").read_text())
        for key in keys:
            document["config"].pop(key)
        (folder / "config.json").write_text(json.dumps(document))
    return mutate


def repeated_key(folder):
    text = (folder / "config.json").read_text().replace('"channels": 4', '"channels": 4, "channels": 8')
    (folder / "config.json").write_text(text)


def nan_weight(state):
    state["encoder.blocks.0.attn.qkv.weight"][0, 0] = float("nan")


def inf_weight(state):
    state["unembed.bias"][1] = float("inf")


BAD_FOLDERS = [
    (edit_config(encoder_depth=10 ** 5), "invalid config.json: config field 'encoder_depth' is 100000, above"),
    (edit_config(encoder_depth=10 ** 9), "'encoder_depth' is 1000000000, above vitok's limit of 1024"),
    (edit_config(encoder_width=10 ** 9), "'encoder_width' is 1000000000, above vitok's limit of 65536"),
    (edit_config(encoder_depth=1000), "encoder_depth is 1000 in config.json but 1 in the weights"),
    (edit_config(decoder_width=64), "decoder_width is 64 in config.json but 48 in the weights"),
    (edit_config(patch_size=16), "patch_size is 16 in config.json but 8 in the weights"),
    (edit_config(qk_norm=True), "qk_norm is True in config.json but False in the weights"),
    (edit_config(rope_theta="abc"), "invalid config.json: config field 'rope_theta' must be a number"),
    (edit_config(qk_norm="yes"), "'qk_norm' must be true or false"),
    (edit_document(config=[1, 2]), "invalid config.json: ViTok config must be a mapping"),
    (edit_document(format_version="abc"), "format_version is 'abc', expected a whole number"),
    (edit_document(format_version=1.5), "format_version is 1.5, expected a whole number"),
    (edit_document(format_version=-1), "format_version is -1"),
    (edit_document(format_version=2), "written by a newer vitok \\(format 2\\)"),
    (repeated_key, "gives the key 'channels' twice"),
    (drop_fields("rope_theta"),
     "config.json lacks the fields \\['rope_theta'\\].*the defaults would be \"rope_theta\": 10000.0"),
    (drop_fields("logvar_min", "qk_norm"), "lacks the fields \\['qk_norm', 'logvar_min'\\]"),
    (edit_weights(nan_weight), "tensor 'encoder.blocks.0.attn.qkv.weight' holds 1 NaN or infinite values"),
    (edit_weights(inf_weight), "tensor 'unembed.bias' holds 1 NaN or infinite values"),
    (edit_weights(lambda s: s.update({"embed.bias": s["embed.bias"].long()})),
     "tensor 'embed.bias' is stored as I64; ViTok weights are floating point"),
    (edit_weights(lambda s: s.update({"extra.weight": torch.zeros(2)})), "unexpected \\['extra.weight'\\]"),
    (edit_weights(lambda s: s.pop("encoder.norm.weight")), "missing \\['encoder.norm.weight'\\]"),
    (edit_weights(lambda s: s.update({"to_moments.bias": torch.zeros(9)})),
     "to_moments.bias: config says \\(8,\\), weights have \\(9,\\)"),
    (edit_weights(lambda s: None, metadata={"format": "vitok", "format_version": "2"}),
     "says format_version 2, but config.json says 1"),
    (edit_weights(lambda s: None, metadata={"format": "other"}), "says format 'other', but config.json says"),
]


@pytest.mark.parametrize("mutate, message", BAD_FOLDERS)
def test_bad_checkpoint_folders_are_refused(tiny_image_model, tmp_path, mutate, message):
    tiny_image_model.save_pretrained(tmp_path)
    mutate(tmp_path)
    with pytest.raises(ValueError, match=message):
        ViTok.from_pretrained(tmp_path)


@pytest.mark.parametrize("fields", [dict(encoder_depth=1000), dict(decoder_width=64, decoder_heads=4),
                                    dict(channels=8)])
def test_sizes_are_checked_against_the_header_before_any_module_or_tensor(tiny_image_model, tmp_path,
                                                                          monkeypatch, fields):
    tiny_image_model.save_pretrained(tmp_path)
    edit_config(**fields)(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("built a module or read tensor data before the header check")
    monkeypatch.setattr(tokenizer, "Transformer", forbidden)
    monkeypatch.setattr(tokenizer, "load_weights", forbidden)
    with pytest.raises(ValueError, match="different architecture"):
        ViTok.from_pretrained(tmp_path)


@pytest.mark.parametrize("device, message", [
    ("foo", "device 'foo' is not a torch device"),
    *([] if torch.cuda.is_available() else [("cuda", "this torch sees no CUDA GPU; use cpu")]),
])
def test_from_pretrained_refuses_an_unusable_device(tiny_image_model, tmp_path, device, message):
    tiny_image_model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        ViTok.from_pretrained(tmp_path, device=device)


# ---- decode: latents and sizes --------------------------------------------------------------------

BAD_DECODES = [
    (torch.zeros(1, 0, 4), None, "latents hold no tokens \\(L=0\\)"),
    (torch.zeros(1, 16, 4), (-32, -32), "size \\(-32, -32\\) must hold positive multiples.*height -32 is not positive"),
    (torch.zeros(1, 16, 4), (0, 128), "height 0 is not positive"),
    (torch.zeros(1, 16, 4), (30, 36),
     "height 30 is not a multiple of 8 \\(use 24 or 32\\); width 36 .*\\(use 32 or 40\\)"),
    (torch.zeros(1, 16, 4), (32.5, 32), "size must hold whole numbers of pixels \\(H, W\\), got \\(32.5, 32\\)"),
    (torch.zeros(1, 16, 4), 32, "size must be \\(H, W\\) in pixels, got 32"),
    (torch.zeros(1, 16, 4), (4, 32, 32), "size must be \\(H, W\\) in pixels"),
    (torch.zeros(1, 16, 4), (64, 64), "latents have 16 tokens but size \\(64, 64\\) gives a \\(8, 8\\) grid of 64 "
                                      "tokens; pass the size the latents were encoded at"),
]


@pytest.mark.parametrize("check", [True, False])
@pytest.mark.parametrize("z, size, message", BAD_DECODES)
def test_bad_decodes_name_the_value(tiny_image_model, z, size, message, check):
    with pytest.raises(ValueError, match=message):
        tiny_image_model.decode(z, size=size, check=check)


def test_video_decode_size_names_frames(tiny_video_model):
    with pytest.raises(ValueError, match="frames 3 is not a multiple of 2 \\(use 2 or 4\\)"):
        tiny_video_model.decode(torch.zeros(1, 32, 4), size=(3, 32, 32))


# ---- pixel layouts --------------------------------------------------------------------------------

VIDEO_LAYOUTS = [
    ((1, 4, 32, 32, 3),
     "channels look last: permute B×T×H×W×C \\(C=3\\) to B×3×T×H×W with x.permute\\(0, 4, 1, 2, 3\\)"),
    ((1, 8, 32, 32, 3), "channels look last: .*x.permute\\(0, 4, 1, 2, 3\\)"),
    ((1, 4, 32, 32, 4), "channels look last: .*then drop alpha"),
    ((1, 4, 3, 32, 32), "time and channels look swapped \\(B×T×3×H×W\\): use x.transpose\\(1, 2\\)"),
    ((4, 32, 32, 3), "one clip T×H×W×3 with channels last: use x.permute\\(3, 0, 1, 2\\).unsqueeze\\(0\\)"),
    ((1, 4, 3, 32, 32, 1), "expected a 5-D tensor B×3×T×H×W"),
]

IMAGE_LAYOUTS = [
    ((2, 32, 32, 3), "channels look last: permute B×H×W×C \\(C=3\\) to B×3×H×W with x.permute\\(0, 3, 1, 2\\)"),
    ((2, 4, 32, 3), "channels look last"),  # a 4-pixel-high image is no RGBA image
    ((2, 32, 32, 4), "channels look last: .*then drop alpha with x\\[:, :3\\]"),
    ((2, 4, 32, 32), "RGBA input: drop alpha"),
    ((32, 32, 3), "one image H×W×3 with channels last: use x.permute\\(2, 0, 1\\).unsqueeze\\(0\\)"),
    ((1, 4, 3, 32, 32), "image model: pass frames as a batch with x.flatten\\(0, 1\\) \\(B×T×3×H×W"),
    ((1, 3, 4, 32, 32), "image model: .*x.transpose\\(1, 2\\).flatten\\(0, 1\\) \\(B×3×T×H×W"),
    ((1, 4, 32, 32, 3), "image model: .*x.flatten\\(0, 1\\).permute\\(0, 3, 1, 2\\) \\(B×T×H×W×3"),
    ((1, 3, 32, 3), "width 3 is not a positive multiple of 8.*the last axis is 3: if channels are last"),
]


@pytest.mark.parametrize("shape, message", VIDEO_LAYOUTS)
def test_video_layouts(tiny_video_model, shape, message):
    with pytest.raises(ValueError, match=message):
        tiny_video_model.encode(torch.zeros(shape))


@pytest.mark.parametrize("shape, message", IMAGE_LAYOUTS)
def test_image_layouts(tiny_image_model, shape, message):
    with pytest.raises(ValueError, match=message):
        tiny_image_model.encode(torch.zeros(shape))


# ---- the token limit ------------------------------------------------------------------------------


def big(*shape):
    """A large all-zero input that allocates one element (the check must refuse it on shape alone)."""
    return torch.zeros((1,) * len(shape)).expand(*shape)


@pytest.mark.parametrize("call, message", [
    (lambda m: m(big(1, 3, 4096, 4096)), "input of shape \\(1, 3, 4096, 4096\\) makes 262,144 tokens per sample, "
                                         "above the limit of 16,384 .* on cpu.*at most 1024x1024 pixels.*check=False"),
    # Untiled (tiling=None); by default encode and decode tile such inputs (test_tiling.py).
    (lambda m: m.encode(big(2, 3, 2048, 1024), tiling=None), "32,768 tokens per sample"),
    (lambda m: m.decode(big(1, 128 * 129, 4), size=(1024, 1032), tiling=None),
     "latents of shape \\(1, 16512, 4\\) makes 16,512"),
])
def test_checked_runs_refuse_too_many_tokens(tiny_image_model, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_image_model)


def test_video_token_limit_names_a_size_per_frame(tiny_video_model):
    with pytest.raises(ValueError, match="524,288 tokens per sample.*at most 176x176 pixels per frame"):
        tiny_video_model(big(1, 3, 64, 1024, 1024))


def test_token_limit_is_skipped_with_check_false_and_on_meta(tiny_image_model, monkeypatch):
    monkeypatch.setattr(checks, "MAX_TOKENS_CPU", 8)
    x = torch.rand(1, 3, 32, 32) * 2 - 1  # 16 tokens
    with pytest.raises(ValueError, match="16 tokens per sample, above the limit of 8"):
        tiny_image_model(x)
    assert tiny_image_model(x, check=False)[0].shape == x.shape
    assert checks.token_limit(torch.device("meta")) is None
    assert checks.token_limit(torch.device("cuda")) == checks.MAX_TOKENS == 65_536


def test_unchecked_paths_never_read_values_back():
    """check=False is the training hot path: on the meta device any host sync (item, bool) would raise."""
    with torch.device("meta"):
        model = ViTok(tiny_config())
    x = torch.empty(2, 3, 32, 48, device="meta")
    x_hat, posterior = model(x, check=False)
    assert x_hat.shape == x.shape and posterior.mean.shape == (2, 24, 4)
    assert model.decode(posterior.mean, size=(32, 48), check=False).shape == x.shape
    assert model.encode(x, check=False).mean.shape == (2, 24, 4)


def test_limits_are_stated_in_the_docstrings():
    for method in (ViTok.encode, ViTok.forward):
        assert "16,384 tokens" in method.__doc__ and "65,536" in method.__doc__
    assert checks.MAX_TOKENS_CPU == 16_384 and math.log2(checks.MAX_TOKENS) == 16


def test_a_checkpoint_without_the_informational_name_still_loads(tiny_image_model, tmp_path):
    tiny_image_model.save_pretrained(tmp_path)
    drop_fields("name")(tmp_path)
    assert ViTok.from_pretrained(tmp_path).config == tiny_image_model.config


def test_saved_weights_honour_the_umask(tmp_path):
    import os

    from conftest import tiny_config
    from vitok.model import ViTok

    old = os.umask(0o022)
    try:
        ViTok(tiny_config()).save_pretrained(tmp_path / "ckpt")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "ckpt").iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644}
