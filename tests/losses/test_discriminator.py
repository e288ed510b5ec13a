"""Tests for vitok.losses.discriminator: the blur filter, minibatch std, shapes, gradients, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitok.data.images import bundled_photos, load_image, to_tensor
from vitok.losses import Discriminator, blur_down, blur_kernel, discriminator_loss, minibatch_std
from vitok.losses.discriminator import _Downsample


def _tiny(resolution: int = 32, **kwargs) -> Discriminator:
    torch.manual_seed(0)
    return Discriminator(resolution, channels=8, max_channels=32, **kwargs)


def test_blur_kernel_is_the_normalised_binomial_outer_product():
    taps = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0
    k2 = blur_kernel(2)
    assert k2.shape == (4, 4)
    assert np.allclose(k2.numpy(), np.outer(taps, taps), atol=0, rtol=1e-7)
    k3 = blur_kernel(3)
    assert np.allclose(k3.numpy(), np.einsum("i,j,k->ijk", taps, taps, taps), atol=0, rtol=1e-7)
    assert k2.sum().item() == pytest.approx(1.0) and k3.sum().item() == pytest.approx(1.0)


def test_downsampling_is_the_zero_padded_blur_sampled_every_second_pixel():
    taps = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0
    x = torch.randn(2, 3, 8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = np.zeros((2, 3, 4, 3))
    for i in range(4):
        for j in range(3):
            window = padded[:, :, 2 * i:2 * i + 4, 2 * j:2 * j + 4]
            expected[:, :, i, j] = np.einsum("bcij,i,j->bc", window, taps, taps)
    assert np.allclose(_Downsample(2, 3, halve_time=False)(x).numpy(), expected, rtol=1e-12)
    # Video blocks that keep T filter space only.
    video = x[:, :, None].expand(2, 3, 3, 8, 6)
    kept = _Downsample(3, 3, halve_time=False)(video)
    assert kept.shape == (2, 3, 3, 4, 3)
    assert np.allclose(kept[:, :, 1].numpy(), expected, rtol=1e-12)
    assert _Downsample(3, 3, halve_time=True)(torch.randn(1, 3, 4, 8, 8)).shape == (1, 3, 2, 4, 4)


def test_blur_function_equals_autograd_of_the_depthwise_convolution():
    """The hand-written gradients of the blur against autograd of the plain grouped convolution
    (2-D images and 3-D clips that halve time): values, gradients and R1-style double gradients."""
    g = torch.Generator().manual_seed(1)
    for dims, shape in ((2, (2, 3, 8, 6)), (3, (1, 2, 4, 6, 8))):
        x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
        kernel = blur_kernel(dims).double()
        weight = kernel.expand(shape[1], 1, *kernel.shape).contiguous()
        conv = torch.nn.functional.conv2d if dims == 2 else torch.nn.functional.conv3d
        stride, padding = (2,) * dims, (1,) * dims
        ours = _Downsample(dims, shape[1], halve_time=True).double()
        ref = conv(x, weight, stride=stride, padding=padding, groups=shape[1])
        out = ours(x)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        # The gradient is a function of the upstream gradient (the blur is linear); R1's double
        # backward differentiates through it, so compare d<grad, v>/d(upstream) both ways too.
        probe = torch.randn(out.shape, generator=g, dtype=torch.float64, requires_grad=True)
        grads = [torch.autograd.grad((y * probe).sum(), x, create_graph=True)[0] for y in (out, ref)]
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)
        v = torch.randn(x.shape, generator=g, dtype=torch.float64)
        second = [torch.autograd.grad((gr * v).sum(), probe, retain_graph=True)[0] for gr in grads]
        torch.testing.assert_close(second[0], second[1], rtol=1e-12, atol=1e-12)
        assert torch.autograd.gradcheck(ours, (x,)) and torch.autograd.gradgradcheck(ours, (x,))


@pytest.mark.parametrize("halve_time", [False, True])
def test_blur_down_views_equal_the_depthwise_convolution(halve_time):
    """blur_down (the compiled passes' blur, strided sums of views) against _BlurDown in float64:
    images, channels-last images and clips with and without halving time; values and gradients."""
    g = torch.Generator().manual_seed(2)
    cases = [(_Downsample(2, 3, halve_time=False), (2, 3, 8, 6)),
             (_Downsample(3, 2, halve_time=halve_time), (1, 2, 4, 6, 8))]
    for down, shape in cases:
        down = down.double()
        x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
        ref = down(x)
        layouts = [x] + ([x.contiguous(memory_format=torch.channels_last)] if x.dim() == 4 else [])
        for inp in layouts:
            out = blur_down(inp, down.blurred)
            torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
            probe = torch.randn(out.shape, generator=g, dtype=torch.float64)
            grads = [torch.autograd.grad((y * probe).sum(), x, retain_graph=True)[0] for y in (out, ref)]
            torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_compiled_discriminator_matches_the_module_and_shares_its_weights():
    """Discriminator.compiled (inductor on the CPU here; the blur as blur_down) against the module:
    logits, input gradients and weight gradients of one pass differentiated twice, as the trainer
    does."""
    torch.manual_seed(0)
    disc = Discriminator(8, channels=4, max_channels=8)  # one block: compiling is what takes the time
    fast = disc.compiled()
    x = torch.randn(5, 3, 8, 8)  # minibatch-std groups of unequal sizes (the trainer's test has equal ones)
    results = []
    for fn in (disc, fast):
        disc.zero_grad(set_to_none=True)
        leaf = x.clone().requires_grad_(True)
        logits = fn(leaf)
        (g_x,) = torch.autograd.grad(logits.square().sum(), leaf, retain_graph=True)
        torch.autograd.backward(logits.sum(), inputs=list(disc.parameters()))
        results.append((logits.detach(), g_x, [p.grad.clone() for p in disc.parameters()]))
    (ref, ref_gx, ref_w), (out, out_gx, out_w) = results
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_gx, ref_gx, rtol=1e-3, atol=1e-6)
    for a, b in zip(out_w, ref_w):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_minibatch_std_matches_stylegan_grouping_for_divisible_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, 4, 4, generator=g, dtype=torch.float64)
    # StyleGAN2: view as (group, N / group, ...), so sample i joins group i mod (N / group).
    groups = x.view(4, 2, 5, 4, 4)
    std = torch.sqrt(groups.var(dim=0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))  # 2 stats
    expected = std.repeat(4)  # sample i gets stat[i % 2]
    out = minibatch_std(x, 4)
    assert out.shape == (8, 6, 4, 4)
    assert torch.equal(out[:, :5], x)
    assert torch.allclose(out[:, 5], expected.view(8, 1, 1).expand(8, 4, 4), rtol=1e-6)


@pytest.mark.parametrize("n, group", [(5, 4), (7, 4), (3, 2), (1, 4), (6, 4)])
def test_minibatch_std_handles_batches_the_group_does_not_divide(n, group):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 3, 2, 2, generator=g, dtype=torch.float64)
    num_groups = -(-n // min(group, n))
    out = minibatch_std(x, group)
    for i in range(n):
        members = x[[j for j in range(n) if j % num_groups == i % num_groups]].numpy()
        stat = np.sqrt(members.var(axis=0) + 1e-8).mean()
        assert len(members) <= group
        assert np.allclose(out[i, 3].numpy(), stat, rtol=1e-6)


@pytest.mark.parametrize(
    "resolution, kwargs, shape, logits",
    [
        (32, {}, (5, 3, 32, 32), (5,)),
        (32, {}, (3, 3, 64, 48), (3,)),
        (16, {}, (1, 3, 64, 48), (1,)),
        (32, {"video": "frame"}, (3, 3, 4, 32, 32), (12,)),
        (32, {"video": "3d", "frames": 4}, (3, 3, 4, 32, 32), (3,)),
        (32, {"video": "3d", "frames": 4}, (2, 3, 8, 64, 48), (2,)),
        (16, {"video": "3d", "frames": 1}, (3, 3, 1, 16, 16), (3,)),
        (16, {"video": "3d", "frames": 3}, (2, 3, 3, 16, 32), (2,)),
    ],
)
def test_output_shapes_and_input_gradients(resolution, kwargs, shape, logits):
    disc = _tiny(resolution, mbstd_group=4, **kwargs)
    x = torch.randn(shape, requires_grad=True)
    out = disc(x)
    assert out.shape == logits and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_frame_mode_is_the_image_discriminator_on_each_frame():
    image_disc, frame_disc = _tiny(mbstd_group=1), _tiny(video="frame", mbstd_group=1)
    frame_disc.load_state_dict(image_disc.state_dict())
    video = torch.randn(2, 3, 3, 32, 32)
    per_frame = torch.stack([image_disc(video[b, :, t][None])[0] for b in range(2) for t in range(3)])
    assert torch.allclose(frame_disc(video), per_frame, atol=1e-6)


def test_3d_mode_halves_time_only_while_it_is_even():
    assert [b.frames_out for b in _tiny(64, video="3d", frames=4).blocks] == [2, 1, 1, 1]
    assert [b.frames_out for b in _tiny(32, video="3d", frames=6).blocks] == [3, 3, 3]


def test_works_under_bfloat16_autocast():
    disc = _tiny()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = disc(x)
    assert out.shape == (4,) and torch.isfinite(out.float()).all()
    assert torch.allclose(out.float(), disc(x), atol=0.05)


def test_rejects_invalid_sizes_and_settings():
    disc = _tiny()
    with pytest.raises(ValueError, match="multiples of 8 and at least 32"):
        disc(torch.randn(1, 3, 36, 30))
    with pytest.raises(ValueError, match="multiples of 8 and at least 32"):
        disc(torch.randn(1, 3, 24, 32))
    with pytest.raises(ValueError, match="B×3×H×W"):
        disc(torch.randn(1, 3, 2, 32, 32))
    with pytest.raises(ValueError, match="T a multiple of 4"):
        _tiny(video="3d", frames=4)(torch.randn(1, 3, 6, 32, 32))
    with pytest.raises(ValueError, match="B×3×T×H×W"):
        _tiny(video="frame")(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(48)
    with pytest.raises(ValueError, match="video"):
        Discriminator(32, video="2d")


def _photo_crops(photos: list[torch.Tensor], n: int, g: torch.Generator) -> torch.Tensor:
    """n random 32×32 crops of the bundled photos, n×3×32×32 in [-1, 1]."""
    crops = []
    for _ in range(n):
        img = photos[int(torch.randint(len(photos), (1,), generator=g))]
        top = int(torch.randint(img.shape[1] - 32 + 1, (1,), generator=g))
        left = int(torch.randint(img.shape[2] - 32 + 1, (1,), generator=g))
        crops.append(img[:, top:top + 32, left:left + 32])
    return torch.stack(crops)


def test_a_tiny_discriminator_learns_to_tell_photos_from_noise():
    photos = [to_tensor(load_image(p)) for p in bundled_photos()]
    g = torch.Generator().manual_seed(0)
    disc = _tiny()
    opt = torch.optim.Adam(disc.parameters(), lr=2e-3, betas=(0.0, 0.99))  # StyleGAN2's betas

    def noise(n: int) -> torch.Tensor:
        return torch.randn(n, 3, 32, 32, generator=g).clamp(-1, 1)

    for _ in range(30):
        loss = discriminator_loss(disc(_photo_crops(photos, 8, g)), disc(noise(8)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        real_logits, fake_logits = disc(_photo_crops(photos, 32, g)), disc(noise(32))
    accuracy = ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean()) / 2
    assert accuracy > 0.9
    assert loss.item() < 0.5  # from 2·log 2 ≈ 1.39 at chance
