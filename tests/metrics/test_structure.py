"""Tests for vitok.metrics.structure against pytorch-msssim and stored piq 0.8.0 numbers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import pytorch_msssim
import torch

from vitok.metrics import MS_SSIM_MIN_SIZE, gmsd, ms_ssim, to_uint8

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("metric_inputs", FIXTURES / "metric_inputs.py")
mi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mi)

TOL = 1e-6
PIQ = json.loads((FIXTURES / "piq_reference.json").read_text())


def _batch(items: list[tuple[str, torch.Tensor, torch.Tensor]]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Stack (id, x, y) cases of equal size into B×3×H×W batches."""
    ids = [i for i, _, _ in items]
    return ids, torch.stack([x for _, x, _ in items]), torch.stack([y for _, _, y in items])


def _by_size(items):
    """Group cases by image size, since one batch needs one size."""
    groups: dict[tuple[int, int], list] = {}
    for item in items:
        groups.setdefault(tuple(item[1].shape[-2:]), []).append(item)
    return list(groups.values())


def _check_inputs(items, metric: str) -> None:
    """The stored numbers only apply to bit-identical 8-bit inputs."""
    assert mi.inputs_sha256(items) == PIQ[metric]["inputs_sha256"], (
        "test inputs differ from those piq_reference.json was made from (JPEG decoder or torch "
        "changed?): rerun tests/metrics/fixtures/make_piq_reference.py"
    )


def test_ms_ssim_matches_pytorch_msssim():
    # 192 px stays even at every scale; 165×171 and 161×255 exercise the odd-side padding.
    items = mi.cases(mi.MS_SSIM_PHOTOS) + mi.cases([("astronaut", 165, 171), ("rocket", 161, 255)])
    # Strong distortions, where the window's float32 rounding shows (~2e-6 if ignored).
    x = mi.photo("brick", 192, 192)
    items.append(("heavy", x, mi.add_noise(mi.gaussian_blur(x, 3.0), 0.3, seed=5)))
    for group in _by_size(items):
        _, x, y = _batch(group)
        ref = pytorch_msssim.ms_ssim(
            to_uint8(x).to(torch.float64), to_uint8(y).to(torch.float64), data_range=255, size_average=False
        )
        got = ms_ssim(x, y)
        assert got.dtype == torch.float64 and got.shape == (x.shape[0],)
        torch.testing.assert_close(got, ref, rtol=0, atol=TOL)
        assert (got < 1).all() and (got > 0.2).all()  # real distortions, not a degenerate case


def test_ms_ssim_matches_piq_on_even_sizes():
    items = mi.cases(mi.MS_SSIM_PHOTOS)
    _check_inputs(items, "ms_ssim")
    ids, x, y = _batch(items)
    ref = torch.tensor([PIQ["ms_ssim"]["values"][i] for i in ids], dtype=torch.float64)
    # piq's window is float64, pytorch-msssim's (and vitok's) float32: < 5e-7 apart here.
    torch.testing.assert_close(ms_ssim(x, y), ref, rtol=0, atol=TOL)


def test_ms_ssim_identical_is_one():
    x = torch.stack([mi.photo("coffee", 192, 200), mi.photo("chelsea", 192, 200)])
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)


def test_ms_ssim_rejects_small_images():
    x = torch.zeros(1, 3, MS_SSIM_MIN_SIZE - 1, 300)
    with pytest.raises(ValueError, match=r"161 px.*160×300"):
        ms_ssim(x, x)
    y = torch.zeros(1, 3, MS_SSIM_MIN_SIZE, MS_SSIM_MIN_SIZE)
    assert ms_ssim(y, y).item() == pytest.approx(1.0)


def test_ms_ssim_video_is_mean_of_frames():
    _, x, y = _batch(mi.cases([("astronaut", 176, 176)]))  # 3 distortions become 3 frames
    xv = x.permute(1, 0, 2, 3).unsqueeze(0).repeat(2, 1, 1, 1, 1)  # 2×3×T×H×W
    yv = torch.stack([y.permute(1, 0, 2, 3), y.flip(0).permute(1, 0, 2, 3)])
    frames = ms_ssim(x, y)
    expected = torch.stack([frames.mean(), frames.flip(0).mean()])
    torch.testing.assert_close(ms_ssim(xv, yv), expected, rtol=0, atol=1e-12)


def test_gmsd_matches_piq():
    items = mi.cases(mi.GMSD_PHOTOS)
    _check_inputs(items, "gmsd")
    for group in _by_size(items):
        ids, x, y = _batch(group)
        ref = torch.tensor([PIQ["gmsd"]["values"][i] for i in ids], dtype=torch.float64)
        got = gmsd(x, y)
        assert got.dtype == torch.float64 and got.shape == (len(ids),)
        torch.testing.assert_close(got, ref, rtol=0, atol=TOL)


def test_gmsd_identical_is_zero():
    x = torch.stack([mi.photo("coins", 97, 64), mi.photo("brick", 97, 64)])
    assert torch.equal(gmsd(x, x), torch.zeros(2, dtype=torch.float64))


def test_gmsd_grows_with_blur():
    x = torch.stack([mi.photo(name, 96, 96) for name in ("astronaut", "coffee", "gravel")])
    scores = torch.stack([gmsd(x, mi.gaussian_blur(x, s)) for s in (0.5, 1.0, 2.0, 3.0)])  # sigma×photo
    assert (scores > 0).all()
    assert (scores.diff(dim=0) > 0).all(), scores


def test_gmsd_video_is_mean_of_frames():
    _, x, y = _batch(mi.cases([("coffee", 64, 80)]))
    xv = x.permute(1, 0, 2, 3).unsqueeze(0)
    yv = y.permute(1, 0, 2, 3).unsqueeze(0)
    torch.testing.assert_close(gmsd(xv, yv), gmsd(x, y).mean().view(1), rtol=0, atol=1e-12)
