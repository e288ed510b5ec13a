"""Can a Triton GEMM of our own match cuBLAS on the Transformer's matmuls? (issue 18, target 2)

    python benchmarks/gemm_probe.py [--tokens 65536] [--out FILE] [--smoke]
    python benchmarks/gemm_probe.py --fused [--best FILE] [--out FILE] [--smoke]

Encode + decode at 70 % MFU would need the SiLU gate and the RMSNorm passes folded into the matmuls
(the gate into the up-projection's epilogue, the norm's row scale into the next matmul's epilogue
with its gain folded into the weight: benchmarks/NOTES.md, eighth session), i.e. GEMMs of our own.
That route pays only if those GEMMs run at cuBLAS's speed: this times, at S-B/16's four matmul
shapes (x·Wᵀ, bf16, `--tokens` rows: 65,536 = batch 256 of 256 tokens), cuBLAS (`torch.mm`)
against Triton kernels written the ways Triton offers on Hopper: tiles loaded through pointers
(software-pipelined), through TMA tensor descriptors, and the latter persistent (one program per SM
walking the tiles), each over a grid of block shapes. Every candidate is replayed from a CUDA graph (10 launches), so Python is not timed, and
checked against cuBLAS's output. `--fused`: vitok.model.gemm's three ops (norm row scale, gate,
residual add) at each candidate tile shape against the path they replace (cuBLAS, then the norm, gate
or add + norm kernel); `--best` writes each op's fastest tiles (for speed_probe.py --gemm-tuning).
`--smoke`: tiny shapes, one candidate each, on the CPU under TRITON_INTERPRET=1 (the test of this script).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import timing  # noqa: E402 - this folder's CUDA-event timer

# (name, in features K, out features N) of S-B/16's blocks (width 768, SwiGLU hidden 2048).
SHAPES = (("qkv", 768, 2304), ("proj", 768, 768), ("w13", 768, 4096), ("w2", 2048, 768))
CONFIGS = [{"bm": bm, "bn": bn, "bk": bk, "stages": s, "warps": w}
           for bm, bn, bk, s, w in itertools.product((128, 256), (128, 256), (64,), (3, 4), (4, 8))
           if not (bm == 256 and bn == 256)]


def kernels():
    import triton
    import triton.language as tl

    global _tile  # jit kernels find the functions they call among their module's globals
    from vitok.model.gemm import grouped_tile as _tile  # model/gemm.py's tile order, shared

    @triton.jit
    def pointer_mm(A, B, C, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        pm, pn = _tile(tl.program_id(0), M, N, BM, BN)
        rm = pm * BM + tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        acc = tl.zeros([BM, BN], tl.float32)
        for k in range(0, K, BK):
            a = tl.load(A + rm[:, None] * K + (k + rk)[None, :], mask=(rm < M)[:, None], other=0.0)
            b = tl.load(B + rn[:, None] * K + (k + rk)[None, :], mask=(rn < N)[:, None], other=0.0)
            acc = tl.dot(a, tl.trans(b), acc)
        tl.store(C + rm[:, None] * N + rn[None, :], acc.to(C.dtype.element_ty),
                 mask=(rm < M)[:, None] & (rn < N)[None, :])

    @triton.jit
    def tma_mm(a_desc, b_desc, c_desc, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        pm, pn = _tile(tl.program_id(0), M, N, BM, BN)
        acc = tl.zeros([BM, BN], tl.float32)
        for k in range(0, K, BK):
            a = a_desc.load([pm * BM, k])
            b = b_desc.load([pn * BN, k])
            acc = tl.dot(a, b.T, acc)
        c_desc.store([pm * BM, pn * BN], acc.to(c_desc.dtype))

    @triton.jit
    def tma_persistent_mm(a_desc, b_desc, c_desc, M, N, K, PROGRAMS, BM: tl.constexpr, BN: tl.constexpr,
                          BK: tl.constexpr):
        # One program per SM walking the tiles (the next tile's loads overlap this one's epilogue).
        grid_m, grid_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
        for tile in range(tl.program_id(0), grid_m * grid_n, PROGRAMS):
            pm, pn = _tile(tile, M, N, BM, BN)
            acc = tl.zeros([BM, BN], tl.float32)
            for k in range(0, K, BK):
                acc = tl.dot(a_desc.load([pm * BM, k]), b_desc.load([pn * BN, k]).T, acc)
            c_desc.store([pm * BM, pn * BN], acc.to(c_desc.dtype))

    return triton, pointer_mm, tma_mm, tma_persistent_mm


FUSED_CONFIGS = ([{"bm": 128, "bn": bn, "bk": 64, "num_stages": s, "num_warps": w}
                  for bn, s, w in itertools.product((64, 128, 256), (2, 3, 4), (4, 8))]
                 + [{"bm": 64, "bn": 256, "bk": 64, "num_stages": s, "num_warps": 8} for s in (3, 4)]
                 + [{"bm": 256, "bn": 128, "bk": 64, "num_stages": 3, "num_warps": 8}])


def fused(args) -> dict:
    """Each of vitok.model.gemm's ops at S-B/16's shapes over FUSED_CONFIGS, against what it replaces:
    cuBLAS's product plus the pass after it (RoPE on q and k, the SiLU gate, the residual add + norm);
    the four old paths together are one block's matmuls and passes."""
    import torch

    from vitok.model import gemm, kernels

    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float16 if args.smoke else torch.bfloat16
    M = 64 if args.smoke else args.tokens
    D, Fh = (32, 48) if args.smoke else (768, 2048)
    configs = [{"bm": 16, "bn": 16, "bk": 16, "num_stages": 1, "num_warps": 4}] if args.smoke else FUSED_CONFIGS
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=g) * scale).to(dtype)

    x, w_qkv, w_proj = rnd(M, D), rnd(3 * D, D, scale=D ** -0.5), rnd(D, D, scale=D ** -0.5)
    w13, w2, gated = rnd(2 * Fh, D, scale=D ** -0.5), rnd(D, Fh, scale=Fh ** -0.5), rnd(M, Fh)
    attn_out, gain = rnd(M, D), torch.ones(D, device=device)
    sumsq = gemm.row_sumsq(x)
    from vitok.model.blocks import rope_angles, rope_tables

    grid, heads = ((2, 4), 2) if args.smoke else ((16, 16), 12)
    L = grid[0] * grid[1]
    B = M // L
    cos, sin = (t.to(device) for t in rope_tables(rope_angles(grid, D // heads, device=device)))
    cases = {  # op -> [(shape name, fused call, the old path's calls)]
        # (the norm pass of the old path is counted in the residual ops' add + norm)
        "rowscale": [("qkv", lambda: gemm.linear_rowscale(x.view(B, L, D), w_qkv, sumsq, 1e-6, (cos, sin)),
                      lambda: kernels._RopeQKV.apply((x @ w_qkv.t()).view(B, L, 3 * D), cos, sin, heads, True))],
        "residual": [("proj", lambda: gemm.linear_residual(attn_out, w_proj, x),
                      lambda: kernels.add_rmsnorm(x, attn_out @ w_proj.t(), gain, 1e-6)),
                     ("w2", lambda: gemm.linear_residual(gated, w2, x),
                      lambda: kernels.add_rmsnorm(x, gated @ w2.t(), gain, 1e-6))],
        "gate": [("w13", lambda: gemm.linear_gate(x, w13, sumsq, 1e-6),
                  lambda: kernels.silu_mul(x @ w13.t()))],
    }
    bench = (lambda fn: (fn(), 1.0)[1]) if args.smoke else timing.graph_bench
    shipped = {k: dict(v) for k, v in gemm.TUNING.items()}
    result = {"tokens": M, "ops": {}, "best": {}, "block_old_ms": 0.0, "block_fused_ms": 0.0}
    with torch.no_grad():
        for op, shapes in cases.items():
            old = {name: bench(before) for name, _, before in shapes}
            rows = []
            for cfg in configs:
                gemm.TUNING[op] = cfg
                row = {**cfg}
                try:
                    for name, call, _ in shapes:
                        row[f"{name}_ms"] = bench(call) * 1e3
                    row["ms"] = sum(row[f"{name}_ms"] for name, _, _ in shapes)
                except Exception as e:  # noqa: BLE001 - a shape the compiler refuses is a result
                    row["error"] = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                rows.append(row)
            gemm.TUNING[op] = shipped[op]
            rows.sort(key=lambda r: r.get("ms", float("inf")))
            old_ms = sum(old.values()) * 1e3
            best = rows[0]
            result["ops"][op] = {"old_path_ms": {k: v * 1e3 for k, v in old.items()}, "candidates": rows}
            if "ms" in best:
                result["best"][op] = {k: best[k] for k in shipped[op]}
            result["block_old_ms"] += old_ms
            result["block_fused_ms"] += best.get("ms", float("nan"))
            print(json.dumps({"op": op, "old_path_ms": round(old_ms, 4), "best": best,
                              "speedup": round(old_ms / best["ms"], 3) if "ms" in best else None}))
    print(json.dumps({"block_old_ms": result["block_old_ms"], "block_fused_ms": result["block_fused_ms"]}))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--fused", action="store_true", help="time vitok.model.gemm's fused ops instead")
    parser.add_argument("--best", default=None, help="--fused: write the fastest tiles per op here (JSON)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if not args.smoke:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("gemm_probe.py times CUDA kernels: run it on a GPU machine (or --smoke on a CPU)")
    if args.fused:
        data = fused(args)
        if args.out:
            Path(args.out).write_text(json.dumps(data, indent=1))
        if args.best:
            Path(args.best).write_text(json.dumps(data["best"], indent=1))
        return data
    import torch

    triton, pointer_mm, tma_mm, tma_persistent_mm = kernels()
    from triton.tools.tensor_descriptor import TensorDescriptor

    device = "cpu" if args.smoke else "cuda"
    shapes = (("tiny", 32, 48),) if args.smoke else SHAPES
    configs = ([{"bm": 16, "bn": 16, "bk": 16, "stages": 1, "warps": 4}] if args.smoke else CONFIGS)
    M = 64 if args.smoke else args.tokens
    dtype = torch.float16 if args.smoke else torch.bfloat16  # the interpreter multiplies bf16 tiles wrongly

    bench = (lambda fn: (fn(), 1.0)[1]) if args.smoke else timing.graph_bench

    sms = torch.cuda.get_device_properties(0).multi_processor_count if device == "cuda" else 4
    rows = []
    for name, K, N in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(M, K, device=device, generator=g).to(dtype)
        w = (torch.randn(N, K, device=device, generator=g) / K ** 0.5).to(dtype)
        want = torch.mm(a, w.t())
        flops = 2 * M * N * K
        out = torch.empty(M, N, device=device, dtype=dtype)
        t_cublas = bench(lambda: torch.mm(a, w.t(), out=out))
        result = {"shape": name, "M": M, "K": K, "N": N, "cublas_ms": t_cublas * 1e3,
                  "cublas_tflops": flops / t_cublas / 1e12, "candidates": []}
        for kind, cfg in itertools.product(("pointer", "tma", "tma_persistent"), configs):
            bm, bn, bk = cfg["bm"], cfg["bn"], cfg["bk"]
            grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
            if kind == "pointer":
                def launch():
                    pointer_mm[grid](a, w, out, M, N, K, BM=bm, BN=bn, BK=bk, num_stages=cfg["stages"],
                                     num_warps=cfg["warps"])
            else:
                descs = (TensorDescriptor.from_tensor(a, [bm, bk]), TensorDescriptor.from_tensor(w, [bn, bk]),
                         TensorDescriptor.from_tensor(out, [bm, bn]))
                if kind == "tma_persistent":
                    programs = min(sms, grid[0])

                    def launch():
                        tma_persistent_mm[(programs,)](*descs, M, N, K, programs, BM=bm, BN=bn, BK=bk,
                                                       num_stages=cfg["stages"], num_warps=cfg["warps"])
                else:
                    def launch():
                        tma_mm[grid](*descs, M, N, K, BM=bm, BN=bn, BK=bk, num_stages=cfg["stages"],
                                     num_warps=cfg["warps"])
            row = {"kind": kind, **cfg}
            try:
                out.zero_()
                launch()
                err = (out.float() - want.float()).abs().max().item()
                t = bench(launch)
                row.update(ms=t * 1e3, tflops=flops / t / 1e12, of_cublas=t_cublas / t, max_abs_err=err)
            except Exception as e:  # noqa: BLE001 - a shape the compiler refuses is a result
                row["error"] = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            result["candidates"].append(row)
        ok = sorted((r for r in result["candidates"] if "ms" in r), key=lambda r: r["ms"])
        result["best"] = ok[0] if ok else None
        print(json.dumps({k: v for k, v in result.items() if k != "candidates"}))
        rows.append(result)
    data = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "triton": triton.__version__,
            "torch": torch.__version__, "shapes": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    main()
