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
