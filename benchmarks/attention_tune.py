"""RoPE inside the attention kernel (vitok.model.rope_attention) against cuDNN's attention with the RoPE kernels.

    python benchmarks/attention_tune.py [--batch 128] [--grid 16 16] [--heads 12] [--head-dim 64]
                                        [--out FILE] [--best FILE] [--tuning FILE] [--smoke]

At one attention layer of a training step (S-B/16 at 256p, batch 128: 256 tokens, 12 heads of 64, bf16):

1. errors: the fused kernel and the path it replaces (`kernels._RopeQKV` in place + SDPA), each
   against the float32-math reference (`rope_attention.reference`) on the same bf16 input, output
   and the QKV output's gradient (max abs error);
2. launch shapes: every candidate of each fused kernel (forward, dk/dv, dq), launched directly and
   replayed from a CUDA graph of 10 launches (Python's launch time not counted), fastest first;
3. the whole layer's attention, forward and forward + backward through autograd (CUDA graphs too),
   both paths, with the shipped shapes and with the fastest (`--tuning` loads shapes instead; `--best`
   writes the fastest).

`--smoke`: tiny shapes, one candidate each, on the CPU under TRITON_INTERPRET=1 (the test of this script).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import timing  # noqa: E402 - this folder's CUDA-event timer

CANDIDATES = {
    "fwd": [{"block_m": m, "block_n": n, "num_warps": w, "num_stages": s}
            for m, n, w, s in itertools.product((64, 128, 256), (32, 64, 128), (4, 8, 16), (1, 2))],
    "bwd_dkdv": [{"block_m": m, "block_n": n, "num_warps": w, "num_stages": s}
                 for m, n, w, s in itertools.product((16, 32, 64), (64, 128), (4, 8), (1, 2))],
    "bwd_dq": [{"block_m": m, "block_n": n, "num_warps": w, "num_stages": s}
               for m, n, w, s in itertools.product((64, 128), (16, 32, 64), (4, 8), (1, 2))],
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--grid", type=int, nargs="+", default=[16, 16])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--out", default=None)
    parser.add_argument("--best", default=None, help="write the fastest shape of each kernel here (JSON)")
    parser.add_argument("--tuning", default=None, help="JSON of shapes to use instead of tuning")
    parser.add_argument("--kernels", default="fwd,bwd_dkdv,bwd_dq", help="which kernels' shapes to tune")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.batch, args.grid, args.heads, args.head_dim = 2, [3, 5], 2, 32
    import torch

    from vitok.model import kernels, rope_attention
    from vitok.model.blocks import rope_angles, rope_tables

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        raise SystemExit("attention_tune.py times CUDA kernels: run it on a GPU machine (or --smoke on a CPU)")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    B, H, d = args.batch, args.heads, args.head_dim
    L = math.prod(args.grid)
    g = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(B, L, 3 * H * d, device=device, generator=g).to(dtype).requires_grad_()
    dout = torch.randn(B, L, H * d, device=device, generator=g).to(dtype)
    cos, sin = (t.to(device) for t in rope_tables(rope_angles(tuple(args.grid), d, device=device)))

    def cudnn_path(x):
        # The eager fused path before this kernel: q and k rotated inside the QKV output, SDPA (cuDNN on an
        # H200), the RoPE backward into B×L×3D.
        q, k, v = kernels._RopeQKV.apply(x, cos, sin, H, True)
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                               v.transpose(1, 2))
        return out.transpose(1, 2).reshape(B, L, H * d)

    def fused_path(x):
        return rope_attention.rope_attention(x, cos, sin, H)

    def grads(fn, x):
        out = fn(x * 1)  # both paths from a fresh tensor, as the model's QKV output (cuDNN's rotates it in place)
        (gx,) = torch.autograd.grad(out, x, dout)
        return out, gx

    # 1. errors against the float32-math reference
    ref_out, ref_grad = grads(lambda x: rope_attention.reference(x.float(), cos, sin, H), qkv)
    result = {"shape": {"batch": B, "tokens": L, "heads": H, "head_dim": d}, "device": device,
              "dtype": str(dtype), "errors": {}, "tune": [], "paths": []}
    for name, fn in (("fused", fused_path), ("cudnn_rope", cudnn_path)):
        out, gx = grads(fn, qkv)
        result["errors"][name] = {"out_max_abs": (out.float() - ref_out).abs().max().item(),
                                  "grad_max_abs": (gx.float() - ref_grad).abs().max().item()}
    result["errors"]["reference_scale"] = {"out_max_abs": ref_out.abs().max().item(),
                                           "grad_max_abs": ref_grad.abs().max().item()}
    print(json.dumps(result["errors"]))

    def bench_graph(fn):
        if device == "cpu":
            fn()
            return 1.0
        side = torch.cuda.Stream()  # warm-up (compilation, cuDNN plans) off the capturing stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(10):
                fn()
        return timing.bench(graph.replay, 1, 10) / 10

    # 2. launch shapes, each kernel launched directly on saved forward results
    x = qkv.detach()
    out, lse = rope_attention.forward(x, cos, sin, H, with_lse=True)
    shipped = {k: dict(v) for k, v in rope_attention.TUNING.items()}
    delta = rope_attention.row_dots(out, dout, H)
    dqkv = torch.empty_like(x)
    makers = {
        "fwd": lambda: rope_attention.forward(x, cos, sin, H, with_lse=True),
        "bwd_dkdv": lambda: rope_attention.launch_grads("bwd_dkdv", x, cos, sin, H, dout, lse, delta, dqkv),
        "bwd_dq": lambda: rope_attention.launch_grads("bwd_dq", x, cos, sin, H, dout, lse, delta, dqkv),
    }
    t = bench_graph(lambda: rope_attention.row_dots(out, dout, H))
    result["row_dots_ms"] = t * 1e3
    print(json.dumps({"kernel": "row_dots", "ms": t * 1e3, "tb_s": 2 * 2 * B * L * H * d / t / 1e12}))
    flops = {"fwd": 4 * B * H * L * L * d, "bwd_dkdv": 8 * B * H * L * L * d, "bwd_dq": 6 * B * H * L * L * d}
    if args.tuning:
        rope_attention.TUNING.update(json.loads(Path(args.tuning).read_text()))
    else:
        for name, cands in CANDIDATES.items():
            if name not in args.kernels.split(","):
                continue
            rows = []
            for cfg in (cands[:1] if args.smoke else cands):
                rope_attention.TUNING[name] = cfg
                try:
                    t = bench_graph(makers[name])
                    rows.append({"kernel": name, **cfg, "ms": t * 1e3, "tflops": flops[name] / t / 1e12,
                                 "shipped": cfg == shipped[name]})
                except Exception as err:  # noqa: BLE001 - a shape the compiler refuses is a result
                    rows.append({"kernel": name, **cfg, "error": str(err).splitlines()[0][:200]})
            rows.sort(key=lambda r: r.get("ms", float("inf")))
            for r in rows[:5]:
                print(json.dumps(r))
            result["tune"] += rows
            fastest = next((r for r in rows if "ms" in r), None)
            rope_attention.TUNING[name] = ({k: fastest[k] for k in shipped[name]} if fastest else shipped[name])
    best = {k: dict(v) for k, v in rope_attention.TUNING.items()}
    if args.best:
        Path(args.best).write_text(json.dumps(best, indent=1))

    # 3. the layer's attention, both paths, through autograd, replayed from CUDA graphs (Python's time
    # per launch would otherwise count: the GPU idles at the start of each timed call)
    timer = bench_graph
    for shapes_name, shapes in (("shipped", shipped), ("fastest", best)):
        rope_attention.TUNING.update({k: dict(v) for k, v in shapes.items()})
        for name, fn in (("cudnn_rope", cudnn_path), ("fused", fused_path)):
            if name == "cudnn_rope" and shapes_name == "fastest":
                continue
            with torch.no_grad():
                infer = timer(lambda: fn(x * 1))
            train = timer(lambda: grads(fn, qkv))
            row = {"path": name, "shapes": shapes_name, "infer_ms": infer * 1e3, "train_ms": train * 1e3,
                   "infer_tflops": flops["fwd"] / infer / 1e12, "train_tflops": 3.5 * flops["fwd"] / train / 1e12}
            print(json.dumps(row))
            result["paths"].append(row)
    rope_attention.TUNING.update(shipped)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
