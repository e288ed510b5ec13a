"""Tests for the FVD I3D wrapper with a tiny scripted stand-in for i3d_torchscript.pt."""

import hashlib
import warnings

import pytest
import torch
from torch import Tensor, nn

from vitok.metrics.i3d import I3D_MIN_FRAMES, I3D_TORCHSCRIPT_SHA256, I3DFeatures, load_i3d

# Columns of the fake detector's output.
MIN, MAX, FRAC, IS_FLOAT, C, T, H, W, RESCALE, RESIZE, RETFEAT, CH0, CH1, CH2, FR0, FRL = range(16)


class FakeI3D(nn.Module):
    """Same forward signature as the real TorchScript I3D; returns statistics of its input."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("one", torch.ones(1))

    def forward(self, x: Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> Tensor:
        b = x.shape[0]
        xf = x.to(torch.float64).flatten(1)
        per = x.to(torch.float64)
        cols = [
            xf.min(dim=1).values,
            xf.max(dim=1).values,
            (xf - xf.round()).abs().max(dim=1).values,  # 0 iff every value is an integer
            torch.full([b], float(x.is_floating_point()), dtype=torch.float64),
            torch.full([b], float(x.shape[1]), dtype=torch.float64),
            torch.full([b], float(x.shape[2]), dtype=torch.float64),
            torch.full([b], float(x.shape[3]), dtype=torch.float64),
            torch.full([b], float(x.shape[4]), dtype=torch.float64),
            torch.full([b], float(rescale), dtype=torch.float64),
            torch.full([b], float(resize), dtype=torch.float64),
            torch.full([b], float(return_features), dtype=torch.float64),
            per[:, 0].flatten(1).mean(dim=1),
            per[:, 1].flatten(1).mean(dim=1),
            per[:, 2].flatten(1).mean(dim=1),
            per[:, :, 0].flatten(1).mean(dim=1),
            per[:, :, -1].flatten(1).mean(dim=1),
        ]
        return torch.stack(cols, dim=1).to(torch.float32) * self.one


class WrongSignature(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def _script_save(module: nn.Module, path) -> None:
    # torch.jit.script/save are deprecated in torch >= 2.10 but still the only way to make
    # a file shaped like i3d_torchscript.pt.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))


@pytest.fixture
def fake_path(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    _script_save(FakeI3D(), path)
    return path


def _clip(b=2, t=16, h=12, w=20) -> tuple[Tensor, Tensor]:
    """A [-1, 1] clip whose 8-bit values encode channel and frame, plus those uint8 values."""
    v = torch.zeros(b, 3, t, h, w, dtype=torch.float64)
    v += torch.tensor([10.0, 60.0, 110.0], dtype=torch.float64).view(1, 3, 1, 1, 1)
    v += 5.0 * torch.arange(t, dtype=torch.float64).view(1, 1, t, 1, 1)
    v[:, :, :, 0, 0] = 0.0
    v[:, :, :, -1, -1] = 255.0
    return (v / 127.5 - 1.0).to(torch.float32), v


def test_passes_0_255_bcthw_with_flags(fake_path):
    model = load_i3d(fake_path)
    assert isinstance(model, I3DFeatures)
    x, v = _clip()
    feats = model(x)
    assert feats.dtype == torch.float64 and feats.shape == (2, 16)
    f = feats[0]
    assert f[MIN] == 0.0 and f[MAX] == 255.0
    assert f[FRAC] == 0.0 and f[IS_FLOAT] == 1.0
    assert (f[C], f[T], f[H], f[W]) == (3.0, 16.0, 12.0, 20.0)
    assert (f[RESCALE], f[RESIZE], f[RETFEAT]) == (1.0, 1.0, 1.0)
    # Layout: per-channel and per-frame means of what the detector saw match the uint8 video.
    for col, expected in ((CH0, v[:, 0]), (CH1, v[:, 1]), (CH2, v[:, 2]), (FR0, v[:, :, 0]), (FRL, v[:, :, -1])):
        torch.testing.assert_close(feats[:, col], expected.flatten(1).mean(dim=1), rtol=1e-6, atol=1e-4)


def test_quantises_like_a_saved_video(fake_path):
    model = load_i3d(fake_path)
    x = torch.full((1, 3, 10, 4, 4), 0.0)  # 127.5 -> 128 (round half to even)
    x[..., 0, 0] = 3.0  # clamped to 255
    x[..., 1, 1] = -7.0  # clamped to 0
    x[..., 2, 2] = 0.3  # 165.75 -> 166
    f = model(x)[0]
    assert f[MIN] == 0.0 and f[MAX] == 255.0 and f[FRAC] == 0.0
    expected_mean = (128.0 * 13 + 255.0 + 0.0 + 166.0) / 16  # every frame of channel 0 alike
    assert abs(f[CH0] - expected_mean) < 1e-3


def test_bf16_input_accepted(fake_path):
    x, _ = _clip(b=1, t=I3D_MIN_FRAMES)
    feats = load_i3d(fake_path)(x.to(torch.bfloat16))
    assert feats.shape == (1, 16) and feats[0, IS_FLOAT] == 1.0


def test_frame_count_rule(fake_path):
    model = load_i3d(fake_path)
    assert I3D_MIN_FRAMES == 10
    model(_clip(b=1, t=10)[0])  # minimum accepted
    with pytest.raises(ValueError, match="at least 10 frames"):
        model(_clip(b=1, t=9)[0])
    with pytest.raises(ValueError, match="T=1"):
        model(_clip(b=1, t=1)[0])


@pytest.mark.parametrize("shape", [(2, 3, 12, 12), (2, 1, 16, 8, 8), (2, 4, 16, 8, 8), (2, 3, 16, 8, 8, 1)])
def test_bad_rank_or_channels(fake_path, shape):
    with pytest.raises(ValueError, match="B×3×T×H×W"):
        load_i3d(fake_path)(torch.zeros(shape))


def test_bad_dtype_and_empty(fake_path):
    model = load_i3d(fake_path)
    with pytest.raises(TypeError, match="floating point"):
        model(torch.zeros(1, 3, 16, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="non-empty"):
        model(torch.zeros(0, 3, 16, 8, 8))


def test_not_torchscript_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("this is not a model\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    state = tmp_path / "state_dict.pt"
    torch.save(FakeI3D().state_dict(), state)
    for path in (text, empty, state):
        with pytest.raises(ValueError, match="not a TorchScript module"):
            load_i3d(path)
    with pytest.raises(FileNotFoundError):
        load_i3d(tmp_path / "missing.pt")


def test_wrong_signature_rejected(tmp_path):
    path = tmp_path / "other.pt"
    _script_save(WrongSignature(), path)
    with pytest.raises(ValueError, match="rescale, resize, return_features"):
        load_i3d(path)


def test_sha256_check(fake_path):
    digest = hashlib.sha256(fake_path.read_bytes()).hexdigest()
    assert isinstance(load_i3d(fake_path, sha256=digest.upper()), I3DFeatures)
    with pytest.raises(ValueError, match="SHA-256"):
        load_i3d(fake_path, sha256=I3D_TORCHSCRIPT_SHA256)
    assert len(I3D_TORCHSCRIPT_SHA256) == 64 and int(I3D_TORCHSCRIPT_SHA256, 16) >= 0


def test_stays_in_eval_mode(fake_path):
    model = load_i3d(fake_path)
    model.train()
    assert not model.detector.training
    x, _ = _clip(b=1)
    x.requires_grad_(True)
    assert not model(x).requires_grad
