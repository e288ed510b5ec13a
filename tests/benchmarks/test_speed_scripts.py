"""The issue-7 measurement scripts run end to end on tiny CPU inputs, so they never rot."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCH))  # the scripts import their neighbour timing.py
    spec = importlib.util.spec_from_file_location(f"vitok_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_probe_smoke_measures_every_section(tmp_path):
    out = tmp_path / "probe.json"
    data = load("speed_probe").main(["--smoke", "--variants", "eager", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == data["rows"]
    sections = {r["section"] for r in data["rows"]}
    assert sections == {"attention", "model", "stage2"}
    assert all("error" not in r for r in data["rows"]), [r for r in data["rows"] if "error" in r]
    model = [r for r in data["rows"] if r["section"] == "model"]
    assert model[0]["encode_decode_per_s"] > 0 and model[0]["train_per_s"] > 0
    disc = [r for r in data["rows"] if r.get("net") == "discriminator"]
    assert {r["variant"] for r in disc} == {"eager", "eager-pool"}
    assert all(r["trainer_ms"] > 0 and r["r1_ms"] > 0 for r in disc)


def test_speed_probe_fake_pass_prototype_gives_autograds_gradients_with_pruned_backwards(monkeypatch):
    """speed_probe's compiled-vjp variant (one forward, two vector-Jacobian products in one compiled
    graph) against autograd on the module: logits, the generator's input gradient, the fake term's
    weight gradients; and the prune pass leaves each convolution backward only the gradients used."""
    import torch
    import torch.nn.functional as F

    from vitok.losses import Discriminator

    probe = load("speed_probe")
    masks = []
    make_pass = probe.prune_conv_backward

    def recording():
        inner = make_pass()

        class Recording(type(inner)):
            def __call__(self, graph):
                inner(graph)
                masks.extend(tuple(n.args[-1]) for n in graph.find_nodes(
                    op="call_function", target=torch.ops.aten.convolution_backward.default))
        return Recording()
    monkeypatch.setattr(probe, "prune_conv_backward", recording)
    torch.manual_seed(0)
    disc = Discriminator(8, channels=4, max_channels=8)
    x = torch.randn(4, 3, 8, 8)
    with torch._inductor.config.patch(fx_graph_cache=False):  # the pass runs only on a fresh compile
        logits, g_x, g_w = probe.compiled_fake_vjp(disc)(x)
    leaf = x.clone().requires_grad_(True)
    ref = disc(leaf)
    (ref_gx,) = torch.autograd.grad(F.softplus(-ref).mean(), leaf, retain_graph=True)
    ref_gw = torch.autograd.grad(F.softplus(ref).mean(), list(disc.parameters()))
    torch.testing.assert_close(logits, ref.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_x, ref_gx, rtol=1e-3, atol=1e-6)
    for (name, _), want in zip(disc.named_parameters(), ref_gw):
        torch.testing.assert_close(g_w[name], want, rtol=1e-3, atol=1e-6)
    # Every convolution appears once per product: input gradients only for the generator's, no input
    # gradient at the first layer for the weights'.
    assert masks.count((True, False, False)) == len(masks) // 2
    assert (False, True, True) in masks


def test_speed_probe_rejects_unknown_variants():
    with pytest.raises(SystemExit, match="unknown variants"):
        load("speed_probe").main(["--smoke", "--variants", "eager,turbo"])


def test_dit_speed_smoke_times_the_trainers_step(tmp_path):
    out = tmp_path / "dit.json"
    result = load("dit_speed").main(["--smoke", "--out", str(out), "compile=false", "no_such_field=1"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["samples_per_s"] > 0 and result["overrides"] == ["compile=false"]
    assert result["dropped_overrides"] == ["no_such_field=1"]


def test_loader_speed_counts_the_images_it_delivered(tmp_path):
    from vitok.data.images import bundled_photos

    out = tmp_path / "loader.json"
    rows = load("loader_speed").main([str(bundled_photos()[0].parent), "--workers", "0", "--batch", "4",
                                      "--batches", "2", "--warmup", "1", "--size", "64", "--out", str(out)])
    assert rows[0]["images"] == 8 and rows[0]["images_per_s"] > 0
    assert json.loads(out.read_text()) == rows
