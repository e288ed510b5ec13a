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


def test_kernel_tune_smoke_times_a_shape_of_each_kernel(tmp_path):
    pytest.importorskip("triton")
    rows = load("kernel_tune").main(["--smoke", "--out", str(tmp_path / "tune.json"), "--best",
                                     str(tmp_path / "best.json")])
    assert {r["kernel"] for r in rows} == {"add_rmsnorm_bwd", "silu_mul_fwd", "silu_mul_bwd"}
    assert all("error" not in r and r["ms"] > 0 for r in rows), rows
    assert json.loads((tmp_path / "tune.json").read_text())["results"] == rows
    best = json.loads((tmp_path / "best.json").read_text())
    assert set(best) == {r["kernel"] for r in rows} and set(best["silu_mul_fwd"]) == {"r", "block", "num_warps"}


def test_gemm_probe_smoke_checks_each_triton_form_against_the_reference(tmp_path):
    pytest.importorskip("triton")
    data = load("gemm_probe").main(["--smoke", "--out", str(tmp_path / "gemm.json")])
    (shape,) = data["shapes"]
    assert {c["kind"] for c in shape["candidates"]} == {"pointer", "tma", "tma_persistent"}
    # Each form computed the product (float16 tiles, float32 accumulation) to rounding.
    assert all("error" not in c and c["max_abs_err"] < 1e-2 for c in shape["candidates"]), shape["candidates"]
    assert json.loads((tmp_path / "gemm.json").read_text())["shapes"][0]["best"] == shape["best"]


def test_gemm_probe_fused_smoke_times_each_op_and_writes_its_tiles(tmp_path):
    pytest.importorskip("triton")
    data = load("gemm_probe").main(["--smoke", "--fused", "--best", str(tmp_path / "best.json")])
    assert set(data["ops"]) == {"rowscale", "residual", "gate"}
    assert all("error" not in c for op in data["ops"].values() for c in op["candidates"])
    best = json.loads((tmp_path / "best.json").read_text())
    assert set(best) == set(data["ops"]) and set(best["gate"]) == {"bm", "bn", "bk", "num_stages", "num_warps"}


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
