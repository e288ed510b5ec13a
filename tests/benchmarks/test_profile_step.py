"""benchmarks/profile_step.py: the kernel-category profile runs on a tiny CPU model and adds up."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "profile_step.py"


def load_script():
    spec = importlib.util.spec_from_file_location("vitok_profile_step_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_profile_of_train_and_infer(tmp_path):
    script = load_script()
    for mode in ("train", "infer"):
        out = tmp_path / f"{mode}.json"
        result = script.main(["--smoke", "--mode", mode, "--steps", "2", "--warmup", "1", "--top", "5",
                              "--out", str(out)])
        assert json.loads(out.read_text()) == json.loads(json.dumps(result))
        categories = result["categories_s_per_step"]
        assert "matmul" in categories and all(v > 0 for v in categories.values())
        assert abs(sum(categories.values()) - result["busy_s_per_step"]) < 1e-9
        assert 0 < len(result["top_kernels"]) <= 5 and result["wall_s_per_step"] > 0
    assert "optimizer" in load_script().main(["--smoke", "--steps", "1", "--warmup", "1"])["categories_s_per_step"]


def test_smoke_profile_of_the_trainers_stage_two_step():
    script = load_script()
    for r1 in ([], ["--r1"]):
        result = script.main(["--smoke", "--mode", "stage2", "--steps", "1", "--warmup", "1", *r1])
        categories = result["categories_s_per_step"]
        # The discriminator's and LPIPS's convolutions, apart from the Transformer's matmuls.
        assert categories["convolution"] > 0 and categories["matmul"] > 0 and categories["optimizer"] > 0
        assert abs(sum(categories.values()) - result["busy_s_per_step"]) < 1e-9


def test_categories():
    script = load_script()
    assert script.category("void flash_fwd_kernel<...>") == "attention"
    assert script.category("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert script.category("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_nhwckrsc") == "convolution"
    assert script.category("void conv2d_grouped_direct_kernel<...>") == "convolution"
    assert script.category("aten::mkldnn_convolution") == "convolution"
    assert script.category("triton_per_fused__to_copy_mean_mul_pow_rsqrt_0") == "compiled (triton)"
    assert script.category("triton_tem_fused_mm_0") == "matmul"
    assert script.category("void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add>") == "elementwise"
    assert script.category("void at::native::unrolled_elementwise_kernel<direct_copy_kernel_cuda>") == "copy/cast"
    assert script.category("void multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert script.category("aten::_fused_rms_norm") == "normalisation"
    assert script.category("something unheard of") == "other"


def test_idle_gaps_are_attributed_to_the_ops_that_launched_the_next_kernel():
    # Three kernels on one stream: a 20 us gap whose kernel the host launched before the device went
    # idle (not the host's), then a 30 us gap whose kernel was launched after (the host's, inside an
    # autograd node); a 2 us gap under the threshold is left out.
    def kernel(name, ts, dur, corr):
        return {"cat": "kernel", "name": name, "ts": ts, "dur": dur, "args": {"correlation": corr}}

    def launch(ts, corr):
        return {"cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": ts, "dur": 1, "tid": 7,
                "args": {"correlation": corr}}

    def op(name, ts, dur):
        return {"cat": "cpu_op", "name": name, "ts": ts, "dur": dur, "tid": 7}

    trace = {"traceEvents": [
        kernel("a", 100, 50, 1), kernel("b", 170, 10, 2), kernel("c", 210, 5, 3), kernel("d", 217, 5, 4),
        launch(90, 1), launch(120, 2), launch(195, 3), launch(200, 4),
        op("aten::mm", 118, 5), op("Block.forward", 80, 60),
        op("aten::add", 194, 3), op("autograd::engine::evaluate_function: AddBackward0", 185, 20),
        op("aten::add", 199, 3),
    ]}
    gaps = load_script().idle_gaps(trace, top=5)
    assert gaps["count"] == 2 and gaps["total_us"] == 50 and gaps["host_late_us"] == 30
    first, second = gaps["largest"]
    assert first == {"us": 30, "kernel_after": "c", "launched_by": "aten::add",
                     "inside": "autograd::engine::evaluate_function: AddBackward0", "host_late": True}
    assert second["us"] == 20 and second["launched_by"] == "aten::mm" and second["inside"] == "Block.forward"
    assert not second["host_late"]
    assert gaps["by_outer_op"][0] == {"inside": "autograd::engine::evaluate_function: AddBackward0",
                                      "host_late": True, "us": 30, "gaps": 1}


def test_smoke_profile_with_gaps_times_the_step_unprofiled(tmp_path):
    trace = tmp_path / "trace.json"
    result = load_script().main(["--smoke", "--steps", "1", "--warmup", "1", "--gaps", "3", "--trace", str(trace)])
    assert json.loads(trace.read_text())["traceEvents"]
    assert result["unprofiled_wall_s_per_step"] > 0
    # The CPU has no kernels: no gaps between them.
    assert result["idle_gaps"]["count"] == 0 and result["idle_gaps"]["total_us_per_step"] == 0
