"""Tests for vitok.losses.perceptual against the LPIPS metric on the same (random) weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitok.losses import PerceptualLoss, load_perceptual_loss
from vitok.metrics.lpips import LPIPS, build_lpips
from vitok.metrics.weights import WEIGHT_FILES


@pytest.fixture(scope="module")
def lpips() -> LPIPS:
    torch.manual_seed(0)
    return build_lpips(None, None)  # random weights: the plumbing, not the calibration, is under test


def _images(*shape: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g) * 2 - 1
    return (x + 0.3 * torch.randn(shape, generator=g)).clamp(-1, 1), x


def test_equals_the_mean_of_the_lpips_metric(lpips):
    x_hat, x = _images(3, 3, 32, 32)
    loss = PerceptualLoss(lpips)(x_hat, x)
    assert loss.dim() == 0 and loss.item() > 0
    assert torch.allclose(loss, lpips(x_hat, x).mean(), rtol=1e-6)


def test_is_zero_for_identical_inputs(lpips):
    _, x = _images(2, 3, 32, 32)
    assert PerceptualLoss(lpips)(x, x.clone()).item() == 0.0


def test_passes_gradients_to_the_reconstruction_only(lpips):
    x_hat, x = _images(2, 3, 32, 32)
    x_hat.requires_grad_(True)
    loss_fn = PerceptualLoss(lpips)
    loss_fn(x_hat, x).backward()
    assert torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0
    assert list(loss_fn.parameters()) == []
    assert all(p.grad is None for p in lpips.parameters())


def test_folds_video_frames_into_the_batch(lpips):
    x_hat, x = _images(2, 3, 3, 32, 32)
    per_frame = [lpips(x_hat[b, :, t][None], x[b, :, t][None]) for b in range(2) for t in range(3)]
    assert torch.allclose(PerceptualLoss(lpips)(x_hat, x), torch.cat(per_frame).mean(), rtol=1e-5)


@pytest.mark.parametrize("max_frames, frames", [(2, [0, 4]), (3, [0, 2, 4]), (5, [0, 1, 2, 3, 4]), (8, [0, 1, 2, 3, 4])])
def test_max_frames_scores_evenly_spaced_frames(lpips, max_frames, frames):
    x_hat, x = _images(1, 3, 5, 16, 16, seed=1)
    expected = torch.cat([lpips(x_hat[:, :, t], x[:, :, t]) for t in frames]).mean()
    assert torch.allclose(PerceptualLoss(lpips, max_frames)(x_hat, x), expected, rtol=1e-5)


def test_works_under_bfloat16_autocast(lpips):
    x_hat, x = _images(2, 3, 32, 32)
    x_hat.requires_grad_(True)
    loss_fn = PerceptualLoss(lpips)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(x_hat, x)
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(loss_fn(x_hat, x).item(), rel=0.1)
    assert torch.isfinite(x_hat.grad).all()


def test_network_stays_frozen_in_eval_mode_and_out_of_checkpoints(lpips):
    loss_fn = PerceptualLoss(lpips)
    parent = nn.ModuleDict({"head": nn.Linear(2, 2), "perceptual": loss_fn}).train()
    assert not loss_fn.lpips.training
    state = parent.state_dict()
    assert set(state) == {"head.weight", "head.bias"}
    parent.load_state_dict(state)  # strict: nothing is missing
    parent.to(torch.float64)  # .to() still reaches the network
    assert loss_fn.lpips.features[0].weight.dtype == torch.float64
    parent.to(torch.float32)


def test_rejects_bad_inputs(lpips):
    with pytest.raises(ValueError, match="max_frames"):
        PerceptualLoss(lpips, max_frames=0)
    x_hat, x = _images(1, 3, 32, 32)
    with pytest.raises(ValueError, match="shapes differ"):
        PerceptualLoss(lpips)(x_hat, x[..., :16])
    with pytest.raises(ValueError, match="B×3×H×W"):
        PerceptualLoss(lpips)(x_hat[0], x[0])


def test_load_reports_the_missing_files_and_where_to_put_them(tmp_path):
    loss_fn, reason = load_perceptual_loss(str(tmp_path))
    assert loss_fn is None
    for key in ("vgg16", "lpips_vgg"):
        assert WEIGHT_FILES[key].filename in reason
    assert str(tmp_path) in reason and "the LPIPS training loss" in reason


def test_load_rejects_a_file_that_fails_its_checksum(tmp_path):
    (tmp_path / WEIGHT_FILES["vgg16"].filename).write_bytes(b"not the published weights")
    loss_fn, reason = load_perceptual_loss(tmp_path)
    assert loss_fn is None
    assert "sha256" in reason and WEIGHT_FILES["vgg16"].filename in reason


def test_compiled_network_matches_eager_in_value_and_gradient():
    torch.manual_seed(0)
    loss_fn = PerceptualLoss(build_lpips(None, None))
    x_hat, x = _images(2, 3, 32, 32, seed=3)
    results = []
    for compiled in (False, True):
        if compiled:
            assert loss_fn.compile_network() is loss_fn
        leaf = x_hat.clone().requires_grad_(True)
        loss = loss_fn(leaf, x)
        loss.backward()
        results.append((loss.detach(), leaf.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-3, atol=1e-6)
