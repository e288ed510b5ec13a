"""The latent DiT: shapes, adaLN-zero init, positions, gradients, guidance and sizes."""

import math

import pytest
import torch

from vitok.generate.dit import (DIT_SIZES, DiT, DiTConfig, dit_config, group_tokens, timestep_features,
                                ungroup_tokens)


def tiny(**overrides) -> DiT:
    fields = dict(in_channels=4, num_classes=3, width=48, depth=2, heads=4)
    fields.update(overrides)
    torch.manual_seed(0)
    return DiT(DiTConfig(**fields))


def randomise(model: DiT) -> DiT:
    """Give the zero-initialised adaLN and output layers weights, as training would."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(std=0.05)
    return model


def inputs(B, grid, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, math.prod(grid), c, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    y = torch.randint(0, 4, (B,), generator=g)
    return x, t, y


@pytest.mark.parametrize("grid,group,learn_sigma", [((4, 6), 1, False), ((4, 6), 2, True), ((3, 4, 4), 1, True),
                                                    ((2, 4, 6), 2, False)])
def test_output_shapes_for_image_and_video_grids(grid, group, learn_sigma):
    model = randomise(tiny(group=group, learn_sigma=learn_sigma))
    x, t, y = inputs(2, grid)
    out = model(x, t, y, grid)
    assert out.shape == (2, math.prod(grid), 8 if learn_sigma else 4)
    assert torch.isfinite(out).all()


def test_square_grid_is_inferred_and_bad_grids_rejected():
    model = tiny(group=2)
    x, t, y = inputs(2, (4, 4))
    assert model(x, t, y).shape == (2, 16, 4)
    with pytest.raises(ValueError, match="square"):
        model(x[:, :12], t, y)
    with pytest.raises(ValueError, match="does not describe"):
        model(x, t, y, grid=(4, 3))
    with pytest.raises(ValueError, match="group"):
        model(torch.randn(2, 9, 4), t, y, grid=(3, 3))
    with pytest.raises(ValueError, match="B×L×4"):
        model(torch.randn(2, 16, 5), t, y)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        model(x, t[:1], y)


def test_group_tokens_merges_spatial_squares_and_round_trips():
    grid = (2, 4, 6)
    x = torch.arange(math.prod(grid), dtype=torch.float32).view(1, -1, 1)  # value = flat index
    merged, coarse = group_tokens(x, grid, 2)
    assert coarse == (2, 2, 3) and merged.shape == (1, 12, 4)
    # Coarse token (frame 1, row 1, col 2) holds fine rows 2-3, cols 4-5 of frame 1, row-major.
    flat = lambda f, r, c: f * 24 + r * 6 + c  # noqa: E731
    want = [flat(1, 2, 4), flat(1, 2, 5), flat(1, 3, 4), flat(1, 3, 5)]
    assert merged[0, 6 + 1 * 3 + 2].tolist() == want
    assert torch.equal(ungroup_tokens(merged, grid, 2), x)


def test_timestep_features_formula():
    t = torch.tensor([0.0, 3.0, 999.0])
    f = timestep_features(t, 8)
    freqs = [10000 ** (-k / 4) for k in range(4)]
    want = [[math.cos(ti * fk) for fk in freqs] + [math.sin(ti * fk) for fk in freqs] for ti in t.tolist()]
    assert torch.allclose(f, torch.tensor(want), atol=1e-5)


def test_adaln_zero_blocks_start_as_identity_and_output_is_zero():
    model = tiny(learn_sigma=True)
    x, t, y = inputs(3, (4, 4))
    cond = model.t_embed(t) + model.y_embed(y)
    h = torch.randn(3, 16, 48)
    rope = model._rope((4, 4), h.device)
    for block in model.blocks:
        assert torch.equal(block(h, cond, rope), h)
    assert torch.equal(model(x, t, y), torch.zeros(3, 16, 8))


def test_rope_makes_the_output_depend_on_position():
    model = randomise(tiny())
    # All tokens equal but one: without positions the other 15 outputs would all be equal; with
    # rotary positions they depend on the offset from the odd token.
    x = torch.randn(1, 1, 4).expand(1, 16, 4).clone()
    x[0, 5] = torch.randn(4)
    out = model(x, torch.tensor([10]), torch.tensor([1]))
    others = out[0, torch.arange(16) != 5]
    assert (others - others[:1]).abs().amax() > 1e-3
    # Permuting tokens does not just permute the outputs.
    x, t, y = inputs(1, (4, 4))
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(model(x[:, perm], t, y), model(x, t, y)[:, perm], atol=1e-4)


def test_conditioning_changes_the_output():
    model = randomise(tiny())
    x, t, _ = inputs(1, (4, 4))
    out = [model(x, t, torch.tensor([k])) for k in range(4)] + [model(x, torch.tensor([int(t) + 100]), None)]
    for i in range(len(out)):
        for j in range(i):
            assert not torch.allclose(out[i], out[j], atol=1e-5)


def test_gradients_reach_every_parameter():
    model = tiny(group=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, t, _ = inputs(4, (4, 4))
    y = torch.tensor([0, 1, 2, 3])  # 3 is the null label: every embedding row is used
    for step in range(3):
        opt.zero_grad()
        loss = (model(x, t, y) - x).pow(2).mean()
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        if step == 0:
            # adaLN-zero: only the output layer learns on the very first step.
            assert grads["final.linear.weight"].abs().sum() > 0
            assert grads["blocks.0.attn.qkv.weight"].abs().sum() == 0
        opt.step()
    missing = [n for n, g in grads.items() if g is None or not torch.isfinite(g).all() or g.abs().sum() == 0]
    assert not missing, missing


def test_grad_checkpointing_gives_the_same_gradients():
    x, t, y = inputs(2, (4, 4))
    grads = []
    for enabled in (False, True):
        model = randomise(tiny())
        model.set_grad_checkpointing(enabled)
        model(x, t, y).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_drop_labels():
    model = tiny()
    labels = torch.randint(0, 3, (10000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.drop_labels(labels, 0.0), labels)
    assert (model.drop_labels(labels, 1.0) == model.null_label).all()
    dropped = model.drop_labels(labels, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(dropped, model.drop_labels(labels, 0.3, torch.Generator().manual_seed(1)))
    null = dropped == 3
    assert 0.28 < float(null.float().mean()) < 0.32
    assert torch.equal(dropped[~null], labels[~null])
    assert 0.08 < float((model.drop_labels(labels) == 3).float().mean()) < 0.12  # config default 0.1


def test_forward_with_cfg_is_one_batch_of_both_halves():
    model = randomise(tiny(learn_sigma=True))
    x, t, y = inputs(3, (4, 4))
    y = y.clamp(max=2)
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 3))
    guided = model.forward_with_cfg(x, t, y, 1.5)
    assert torch.allclose(guided[..., :4], uncond[..., :4] + 1.5 * (cond[..., :4] - uncond[..., :4]), atol=1e-5)
    assert torch.allclose(guided[..., 4:], cond[..., 4:], atol=1e-6)
    assert torch.equal(model.forward_with_cfg(x, t, y, 1.0), cond)


def test_names_and_config_errors():
    assert dit_config("DiT-XL/2").group == 2 and dit_config("L").width == 1024
    assert DiTConfig.from_dict(dit_config("DiT-S", in_channels=8).to_dict()) == dit_config("DiT-S", in_channels=8)
    with pytest.raises(ValueError, match="cannot parse"):
        dit_config("DiT-H")
    with pytest.raises(ValueError, match="unknown DiT config keys"):
        dit_config("DiT-S", channels=4)
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(width=100, heads=3)
    with pytest.raises(ValueError, match="group"):
        DiTConfig(group=4)
    with pytest.raises(ValueError, match="prediction"):
        DiTConfig(prediction="x0")


def expected_params(width, depth, c=16, classes=1000, freq=256):
    """Parameter count written out per layer (SwiGLU hidden: 2/3 of 4D rounded up to 256)."""
    hidden = 256 * math.ceil(int(8 * width / 3) / 256)
    block = 4 * width ** 2 + 3 * width * hidden + (6 * width ** 2 + 6 * width) + 2 * width
    embed = c * width + width
    t_embed = freq * width + width + width ** 2 + width
    y_embed = (classes + 1) * width
    final = width + (2 * width ** 2 + 2 * width) + width * c + c
    return depth * block + embed + t_embed + y_embed + final


@pytest.mark.parametrize("size", list(DIT_SIZES))
def test_parameter_counts(size):
    with torch.device("meta"):
        model = DiT.from_name(f"DiT-{size}", in_channels=16, num_classes=1000)
    width, depth, _ = DIT_SIZES[size]
    n = model.num_params()
    print(f"DiT-{size} on 16-channel latents, 1000 classes: {n / 1e6:.1f}M parameters")
    assert n == expected_params(width, depth)
    if size == "L":
        # The paper's "about 400M"; DiT's own DiT-L/2 has 458M.
        assert 400e6 < n < 470e6
