"""benchmarks/bench.py: its smoke run's JSON, the run without diffusers, and its counting helpers."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vitok.info import count_flops
from vitok.model.blocks import swiglu_hidden

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None


def load_bench():
    """benchmarks/bench.py as a module (benchmarks/ is no package)."""
    if "vitok_bench_script" not in sys.modules:
        spec = importlib.util.spec_from_file_location("vitok_bench_script", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["vitok_bench_script"] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules["vitok_bench_script"]


def run_script(tmp_path: Path, *args: str, block_diffusers: bool = False) -> tuple[dict, str]:
    """Run bench.py in a subprocess; returns its JSON and stdout. block_diffusers makes `import diffusers` fail."""
    out = tmp_path / "bench.json"
    argv = [str(SCRIPT), *args, "--out", str(out)]
    if block_diffusers:
        code = ("import runpy, sys; sys.modules['diffusers'] = None; "
                f"sys.argv = {argv!r}; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def check_timing(t: dict) -> None:
    assert t["seconds"] > 0 and t.get("best_seconds", 0) <= t["seconds"]
    assert t["samples_per_s"] > 0 and t["frames_per_s"] >= t["samples_per_s"]
    assert t["tflops"] > 0 and t["mfu"] > 0
    assert t["peak_gib"] is None  # CPU: no peak-memory counter


def test_smoke_run_writes_every_measurement(tmp_path):
    result, stdout = run_script(tmp_path, "--smoke")
    assert result["meta"]["smoke"] and result["errors"] == []
    assert result["ceilings"]["matmul_tflops"] > 0 and result["ceilings"]["copy_tbps"] > 0
    rows = {r["key"]: r for r in result["rows"]}
    bench = load_bench()

    for spec in (s for s in bench.SMOKE if s.kind == "vitok"):
        row = rows[spec.key]
        counts = row["counts"]
        # The FLOP count agrees with vitok.info's meta-device count of the same model.
        model = bench.VitokTokenizer(spec, torch.device("meta"), None).module
        assert (counts["flops_encode"], counts["flops_decode"]) == count_flops(model)
        steps = counts["step_flops"]
        assert steps["model"] > 2 * counts["flops_total"]  # forward + backward
        assert steps["lpips"] > steps["model"] and steps["stage2"] > steps["model"]
        assert row["floors"]["floor_samples_per_s"] > 0

        assert set(row["modes"]) == {"eager"}
        eager = row["modes"]["eager"]
        assert eager["infer"]["batch"] == spec.batch
        for op in ("encode", "decode", "encode_decode"):
            check_timing(eager["infer"][op])
        train = eager["train"]
        assert set(train) == {"model", "lpips", "stage2"}
        for t in train.values():
            check_timing(t)
            assert t["batch"] == spec.train_batch and t["counted_tflops"] > 0
        assert train["model"]["time_vs_model_step"] == pytest.approx(1.0)
        assert train["stage2"]["r1"]["seconds"] > 0 and train["stage2"]["plain"]["seconds"] > 0
        assert train["stage2"]["r1_every"] == 16

    baselines = [s for s in bench.SMOKE if s.kind != "vitok"]
    if HAS_DIFFUSERS:
        assert result["meta"]["baselines_skipped"] is None
        for spec in baselines:
            eager = rows[spec.key]["modes"]["eager"]
            for op in ("encode", "decode", "encode_decode"):
                check_timing(eager["infer"][op])
            assert set(eager["train"]) == {"model"}
            check_timing(eager["train"]["model"])
        assert rows["CogVideoX-tiny@9x32"]["counts"]["flops_per_frame"] > 0
        pairs = {(r["vitok"], r["mode"]): r for r in result["ratios"]}
        for spec in (s for s in bench.SMOKE if s.kind == "vitok"):
            ratio = pairs[(spec.key, "eager")]
            assert ratio["baseline"] == spec.baseline
            assert all(ratio[k] > 0 for k in ("encode", "decode", "encode_decode", "train", "flops_per_frame"))
    else:
        assert "diffusers" in result["meta"]["baselines_skipped"]
        assert not any(s.key in rows for s in baselines) and result["ratios"] == []
    assert "e+d/s" in stdout and "wrote" in stdout


def test_without_diffusers_the_baselines_are_skipped_with_a_note(tmp_path):
    result, stdout = run_script(tmp_path, "--smoke", "--only", "T-T/8@32", "--parts", "infer,baselines",
                                block_diffusers=True)
    assert result["errors"] == [] and result["ratios"] == []
    assert [r["key"] for r in result["rows"]] == ["T-T/8@32"]
    assert "train" not in result["rows"][0]["modes"]["eager"]
    assert "diffusers is not installed" in result["meta"]["baselines_skipped"]
    assert "Baselines skipped: diffusers is not installed" in stdout


def test_counters_see_matmuls_convolutions_and_attention():
    bench = load_bench()
    linear, conv = nn.Linear(4, 6), nn.Conv2d(2, 5, 3, padding=1)
    q = torch.randn(1, 2, 8, 4)

    def fn():
        return linear(torch.randn(3, 4)), conv(torch.randn(1, 2, 4, 4)), F.scaled_dot_product_attention(q, q, q)

    with sdpa_kernel(SDPBackend.MATH):  # as count_spec runs attention
        _, flops, elements = bench.count_call(fn)
    # Linear 2·3·4·6; conv 2·(5·16 outputs)·(2·9 taps); attention 2 matmuls of 2·(2 heads·8·8)·4.
    assert flops == 2 * 3 * 4 * 6 + 2 * 80 * 18 + 2 * (2 * 2 * 8 * 8 * 4)
    assert elements == 3 * 6 + 5 * 16 + 2 * 8 * 4


def test_bytes_floor_of_a_vitok_model_follows_its_architecture():
    bench = load_bench()
    spec = next(s for s in bench.SMOKE if s.key == "T-T/8@32")
    counts = bench.count_spec(spec, None, ("model",))
    D, L, c = 192, (32 // 8) ** 2, 16  # T width, tokens, latent channels
    h = swiglu_hidden(D)
    per_block = L * (3 * D + D + D + 2 * h + D)  # qkv, attention, proj, w13, w2
    elements = 8 * per_block + L * D + L * 2 * c + L * D + 3 * 32 * 32  # blocks, embed, moments, from_latent, unembed
    assert counts["act_bytes_total"] == 2 * 2 * elements  # bf16, written once and read once
    model = bench.VitokTokenizer(spec, torch.device("meta"), None).module
    assert counts["params"] == sum(p.numel() for p in model.parameters())


def test_fit_batch_halves_the_batch_until_it_fits():
    bench = load_bench()
    tried = []

    def run(batch):
        tried.append(batch)
        if batch > 3:
            raise torch.cuda.OutOfMemoryError(f"no room for {batch}")
        return {"seconds": 1.0}

    assert bench.fit_batch(run, 16, torch.device("cpu")) == {"seconds": 1.0, "batch": 2, "requested_batch": 16}
    assert tried == [16, 8, 4, 2]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        bench.fit_batch(lambda b: run(b + 100), 2, torch.device("cpu"))


def test_vitok_steps_are_the_trainers_own(monkeypatch):
    """bench times vitok models through Trainer.train_step and apply_step, not a copy of them."""
    from vitok.train.loop import Trainer

    bench = load_bench()
    spec = next(s for s in bench.SMOKE if s.kind == "vitok" and s.frames == 1)
    device = torch.device("cpu")
    calls = []
    train_step, disc_step = Trainer.train_step, Trainer.disc_step

    def counted(self, x, step, weight):
        calls.append(("train", step))
        return train_step(self, x, step, weight)

    def counted_disc(self, x, fake, step, weight):
        terms = disc_step(self, x, fake, step, weight)
        calls.append(("r1" if "r1" in terms else "disc", step))
        return terms

    monkeypatch.setattr(Trainer, "train_step", counted)
    monkeypatch.setattr(Trainer, "disc_step", counted_disc)
    tok = bench.VitokTokenizer(spec, device, None)
    x = bench.random_pixels(spec, 2, device)
    before = {n: p.detach().clone() for n, p in tok.module.named_parameters()}
    step = bench.TrainerStep("model", tok, x, spec, None)
    step()
    assert calls == [("train", 1)] and step.trainer.model is tok.module
    assert any(not torch.equal(p, before[n]) for n, p in tok.module.named_parameters())  # AdamW stepped
    calls.clear()
    stage2 = bench.TrainerStep("stage2", tok, x, spec, None)
    stage2(r1=True)
    stage2()
    kinds = [k for k, _ in calls]
    assert kinds == ["train", "r1", "train", "disc"]  # lazy R1 on the first call only
    assert stage2.trainer.stage == 2 and stage2.trainer.perceptual is not None


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="model.kernels=triton needs triton installed")
def test_kernels_choice_reaches_the_model_and_the_trainers_config():
    """--kernels triton: the model's blocks take the fused path, and the trainer that bench builds around
    the model keeps it (Trainer sets the model's kernels from its config)."""
    bench = load_bench()
    spec = next(s for s in bench.SMOKE if s.kind == "vitok" and s.frames == 1)
    tok = bench.build_tokenizer(spec, torch.device("cpu"), None, None, torch.float32, "triton")
    step = bench.TrainerStep("model", tok, bench.random_pixels(spec, 2, torch.device("cpu")), spec, None)
    assert step.trainer.config.model.kernels == "triton"
    assert all(block.mlp.fused for block in tok.module.decoder.blocks)


@pytest.mark.skipif(not HAS_DIFFUSERS, reason="diffusers not installed")
def test_baselines_compile_their_encoder_and_decoder(monkeypatch):
    """Compiled mode compiles the baselines too (their encoder and decoder networks), for a fair ratio."""
    import diffusers

    bench = load_bench()
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((type(self).__name__, kw)))
    spec = next(s for s in bench.SMOKE if s.kind == "sd-vae")
    tok = bench.DiffusersTokenizer(spec, torch.device("cpu"), None, diffusers)
    tok.compile("max-autotune")
    assert [name for name, _ in compiled] == ["Encoder", "Decoder"] and tok.compiled
    assert compiled[0][1] == {"mode": "max-autotune"}
    # Ratios: each ViTok mode against the baseline in the same mode, and against the eager baseline.
    rows = [{"key": "v", "kind": "vitok", "baseline": "b", "counts": {"flops_per_frame": 1.0},
             "modes": {m: {"infer": {"encode_decode": {"frames_per_s": f}}} for m, f in (("eager", 10.0),
                                                                                        ("compiled", 30.0))}},
            {"key": "b", "kind": "sd-vae", "counts": {"flops_per_frame": 4.0},
             "modes": {m: {"infer": {"encode_decode": {"frames_per_s": f}}} for m, f in (("eager", 2.0),
                                                                                        ("compiled", 5.0))}}]
    got = {(r["mode"], r["baseline_mode"]): r["encode_decode"] for r in bench.ratios(rows)}
    assert got == {("eager", "eager"): 5.0, ("compiled", "compiled"): 6.0, ("compiled", "eager"): 15.0}
