"""GPU checks of the core model: bf16 path accuracy, flash-attention dispatch, exact FLOPs on the
device, and first eager throughput of S-B/16 (256p) and S-B/4x8 (16x128x128).

Run on the GPU machine:  PYTHONPATH=src python benchmarks/gpu_check.py --out $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vitok.info import describe
from vitok.model import ViTok

from timing import bench


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def matmul_peak() -> float:
    """Measured dense bf16 matmul rate (TFLOP/s) on this GPU: the MFU denominator."""
    n = 8192
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = bench(lambda: a @ b, warmup=5, iters=20)
    return 2 * n ** 3 / t / 1e12


def check_model(name: str, batch: int, **kw) -> dict:
    torch.manual_seed(0)
    model = ViTok.from_name(name, **kw).cuda().eval()
    c = model.config
    shape = (batch, 3, c.frames, c.image_size, c.image_size) if c.is_video else (batch, 3, c.image_size, c.image_size)
    x = torch.rand(shape, device="cuda") * 2 - 1
    result = {"name": name, "batch": batch, **kw}

    with torch.no_grad():
        # Accuracy of the bf16 path against float32 (tf32 off) on the same weights.
        torch.backends.cuda.matmul.allow_tf32 = False
        ref, post_ref = model(x[:4], sample=False)
        model.amp_dtype = torch.bfloat16
        out, post = model(x[:4], sample=False)
        result["bf16_rel_err_recon"] = rel(out, ref)
        result["bf16_rel_err_latent"] = rel(post.mean, post_ref.mean)

        # The bf16 path must be able to run on the flash kernel (layout B×H×L×d, head dim 64).
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            model(x[:2], sample=False)
        result["flash_attention_ok"] = True

        # FLOPs counted on the device (flash attention's formula) against the meta-device count.
        with FlopCounterMode(display=False) as counter:
            z = model.encode(x[:1]).mean
            model.decode(z)
        d = describe(c)
        result["gflops_device"] = counter.get_total_flops() / 1e9
        result["gflops_meta"] = d["gflops_total"]

        flops = d["gflops_total"] * 1e9
        t_enc = bench(lambda: model.encode(x, check=False))
        z = model.encode(x, check=False).mean
        t_dec = bench(lambda: model.decode(z, check=False))
        t_both = bench(lambda: model(x, sample=False, check=False))
        result.update(
            encode_per_s=batch / t_enc, decode_per_s=batch / t_dec, encode_decode_per_s=batch / t_both,
            achieved_tflops=flops * batch / t_both / 1e12,
        )
    torch.cuda.reset_peak_memory_stats()
    model.train()
    model.set_grad_checkpointing(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        x_hat, posterior = model(x, check=False)
        loss = (x_hat - x).square().mean() + 1e-3 * posterior.kl().mean() / (c.num_tokens * c.channels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_step = bench(step, warmup=3, iters=5)
    result["train_step_per_s"] = batch / t_step
    result["train_tflops"] = 3 * flops * batch / t_step / 1e12
    result["train_peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args()
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "bf16_matmul_tflops": matmul_peak()}
    print(json.dumps(info), flush=True)
    results = [
        check_model("S-B/16", 128, channels=16, image_size=256),
        check_model("S-B/4x8", 8, channels=16, image_size=128, frames=16),
    ]
    peak = info["bf16_matmul_tflops"]
    for r in results:
        r["mfu_encode_decode"] = r["achieved_tflops"] / peak
        r["mfu_train"] = r["train_tflops"] / peak
        print(json.dumps(r), flush=True)
    with open(args.out, "w") as f:
        json.dump({"info": info, "results": results}, f, indent=2)
    print(f"{'model':10} {'enc/s':>8} {'dec/s':>8} {'enc+dec/s':>10} {'MFU':>6} {'train/s':>8} {'MFU':>6} "
          f"{'bf16 err':>9} {'GFLOPs dev/meta':>16}")
    for r in results:
        print(f"{r['name']:10} {r['encode_per_s']:8.0f} {r['decode_per_s']:8.0f} {r['encode_decode_per_s']:10.0f} "
              f"{r['mfu_encode_decode']:6.1%} {r['train_step_per_s']:8.0f} {r['mfu_train']:6.1%} "
              f"{r['bf16_rel_err_recon']:9.2e} {r['gflops_device']:7.1f}/{r['gflops_meta']:.1f}")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.0f} s")
