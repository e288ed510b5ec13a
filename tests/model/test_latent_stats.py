"""Latent statistics: float64 moments against numpy, normalisation maths, the config.json round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitok.model import ViTok
from vitok.model.latent_stats import LatentStats, MomentAccumulator

from conftest import tiny_config


def _latents(seed: int, n: int = 5, L: int = 16, c: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, L, c, generator=g) * torch.tensor([0.5, 1.0, 2.0, 3.0]) + torch.tensor([1.0, -2.0, 0.0, 5.0])


def test_moments_match_numpy_float64_and_merge():
    parts = [_latents(s) for s in range(3)]
    whole = MomentAccumulator(4)
    for p in parts:
        whole.update(p)
    a, b = MomentAccumulator(4), MomentAccumulator(4)
    a.update(parts[0])
    b.update(parts[1])
    b.update(parts[2])
    a.merge(b)
    c = MomentAccumulator(4)
    c.load_state(whole.state())
    ref = torch.cat(parts).double().reshape(-1, 4).numpy()
    for acc in (whole, a, c):
        stats = acc.result(data="x")
        np.testing.assert_allclose(stats.mean, ref.mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats.std, ref.std(0), rtol=1e-10)  # population std
        assert stats.shift_factor == pytest.approx(ref.mean(), rel=1e-12)
        assert stats.scaling_factor == pytest.approx(1.0 / ref.std(), rel=1e-10)
        assert (stats.num_samples, stats.num_tokens) == (15, 15 * 16)
    with pytest.raises(ValueError, match="channels"):
        whole.update(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="no latents"):
        MomentAccumulator(4).result()


def test_normalise_and_denormalise():
    z = _latents(0)
    acc = MomentAccumulator(4)
    acc.update(z)
    stats = acc.result()
    n = stats.normalise(z)
    flat = n.double().reshape(-1, 4)
    np.testing.assert_allclose(flat.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(flat.std(0, unbiased=False), 1, atol=1e-5)
    g = stats.normalise(z, "global")
    np.testing.assert_allclose(g.double().mean(), 0, atol=1e-6)
    np.testing.assert_allclose(g.double().std(unbiased=False), 1, atol=1e-5)
    torch.testing.assert_close(g, (z - stats.shift_factor) * stats.scaling_factor)  # diffusers' convention
    for mode in ("channel", "global"):
        torch.testing.assert_close(stats.denormalise(stats.normalise(z, mode), mode), z, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="another tokenizer"):
        stats.normalise(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="mode"):
        stats.normalise(z, "median")
    for bad, match in ((dict(std=[1.0, 0.0]), "zero or less"), (dict(std=[1.0]), "one mean and one std"),
                       (dict(mean=[float("nan"), 0.0]), "finite")):
        fields = dict(mean=[0.0, 0.0], std=[1.0, 1.0], shift_factor=0.0, scaling_factor=1.0, num_samples=1,
                      num_tokens=1)
        with pytest.raises(ValueError, match=match):
            LatentStats(**{**fields, **bad})
    assert stats.same_normalisation(stats.mean, stats.std)
    assert not stats.same_normalisation([m + 1e-3 for m in stats.mean], stats.std)


def test_encode_normalised_posterior_and_decode(tmp_path):
    torch.manual_seed(0)
    model = ViTok(tiny_config()).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with pytest.raises(ValueError, match="vitok stats"):
        model.encode(x, normalise=True)
    with torch.no_grad():
        post = model.encode(x)
        acc = MomentAccumulator(4)
        acc.update(post.mean)
        model.latent_stats = acc.result(data="three noise images")
        normed = model.encode(x, normalise=True)
        s = model.latent_stats
        mean, std = torch.tensor(s.mean), torch.tensor(s.std)
        torch.testing.assert_close(normed.mean, (post.mean - mean) / std)
        torch.testing.assert_close(normed.std, post.std / std)  # an affine map of a Gaussian
        glob = model.encode(x, normalise="global")
        torch.testing.assert_close(glob.std, post.std * s.scaling_factor)
        torch.testing.assert_close(model.decode(normed.mean, normalised=True), model.decode(post.mean),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.decode(glob.mean, normalised="global"), model.decode(post.mean),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.denormalise_latents(model.normalise_latents(post.mean)), post.mean,
                                   rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path / "m")
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    assert document["latent_stats"]["data"] == "three noise images"
    loaded = ViTok.from_pretrained(tmp_path / "m")
    assert loaded.latent_stats == model.latent_stats
    # A folder written without statistics loads with none; statistics of another width are refused.
    model.latent_stats = None
    model.save_pretrained(tmp_path / "plain")
    assert ViTok.from_pretrained(tmp_path / "plain").latent_stats is None
    document["latent_stats"]["mean"] = [0.0] * 3
    document["latent_stats"]["std"] = [1.0] * 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="3 channels, the model 4"):
        ViTok.from_pretrained(tmp_path / "m")


def test_v2_deterministic_latent_normalises(tmp_path):
    torch.manual_seed(0)
    model = ViTok(tiny_config(architecture="vitok-v2")).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = model.encode(x).mode()
        acc = MomentAccumulator(4)
        acc.update(z)
        model.latent_stats = acc.result()
        normed = model.encode(x, normalise=True)
    assert normed.deterministic
    torch.testing.assert_close(normed.mode(), model.normalise_latents(z))

