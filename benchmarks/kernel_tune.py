"""Launch shapes for the memory-bound Triton kernels (model.kernels=triton), timed on the GPU.

    python benchmarks/kernel_tune.py [--tokens 32768] [--width 768] [--hidden 2048] [--out FILE] [--best FILE]

For each kernel in `vitok.model.kernels.TUNING`, every candidate launch shape runs the kernel's
forward or backward on bf16 tensors of one training step's size (S-B/16 at 256p, batch 128: 32,768
tokens of width 768, SwiGLU hidden 2048) and is timed with CUDA events; the table gives the time and
the bandwidth the kernel's own reads and writes reach (counted, not measured), fastest first. The
shipped TUNING is what this picked, recorded in benchmarks/NOTES.md. `--smoke`: one candidate each,
tiny shapes, on the CPU under TRITON_INTERPRET=1 (the test of this script).
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

CANDIDATES = {
    "add_rmsnorm_bwd": [{"programs": p, "rb": rb, "num_warps": w}
                        for p, rb, w in itertools.product((1024, 2048, 4096), (1, 2, 4), (4, 8))],
    "silu_mul_fwd": [{"r": r, "block": b, "num_warps": w}
                     for r, b, w in itertools.product((1, 2, 4), (512, 1024, 2048), (4, 8))],
}
CANDIDATES["silu_mul_bwd"] = CANDIDATES["silu_mul_fwd"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--out", default=None)
    parser.add_argument("--best", default=None, help="write the fastest shape of each kernel here (JSON, "
                        "for speed_probe.py --tuning)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.tokens, args.width, args.hidden = 6, 48, 40
    import torch

    from vitok.model import kernels

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        raise SystemExit("kernel_tune.py times CUDA kernels: run it on a GPU machine (or --smoke on a CPU)")
    if device == "cuda":
        from timing import bench
    else:
        import time

        def bench(fn, warmup=1, iters=1):
            fn()
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    N, D, Hd, bf = args.tokens, args.width, args.hidden, torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)
    x, delta, dy, dh = (torch.randn(N, D, device=device, generator=g).to(bf) for _ in range(4))
    w = torch.randn(D, device=device, generator=g)
    gu = torch.randn(N, 2 * Hd, device=device, generator=g).to(bf)
    dout = torch.randn(N, Hd, device=device, generator=g).to(bf)

    def rmsnorm_bwd():  # the fused add's backward as the blocks run it: stream and branch both bf16
        xr, dr = x.clone().requires_grad_(), delta.clone().requires_grad_()
        h, y = kernels._AddRMSNorm.apply(xr, dr, w, 1e-6, bf)
        return lambda: torch.autograd.grad((h, y), (xr, dr), (dh, dy), retain_graph=True)

    def silu_fwd():
        return lambda: kernels._SiluMul.apply(gu)

    def silu_bwd():
        gr = gu.clone().requires_grad_()
        out = kernels._SiluMul.apply(gr)
        return lambda: torch.autograd.grad(out, gr, dout, retain_graph=True)

    # Bytes each kernel must move (2 per bf16 element): the bandwidth it reaches is counted from these.
    moved = {"add_rmsnorm_bwd": 2 * N * D * 4, "silu_mul_fwd": 2 * N * Hd * 3, "silu_mul_bwd": 2 * N * Hd * 5}
    makers = {"add_rmsnorm_bwd": rmsnorm_bwd, "silu_mul_fwd": silu_fwd, "silu_mul_bwd": silu_bwd}
    shipped = {k: dict(v) for k, v in kernels.TUNING.items()}
    results = []
    for name, cands in CANDIDATES.items():
        rows = []
        for cfg in (cands[:1] if args.smoke else cands):
            kernels.TUNING[name] = cfg
            try:
                t = bench(makers[name](), 3, 20)
                rows.append({"kernel": name, **cfg, "ms": t * 1e3, "tb_s": moved[name] / t / 1e12,
                             "shipped": cfg == shipped[name]})
            except Exception as err:  # noqa: BLE001 - a shape the compiler refuses is a result
                rows.append({"kernel": name, **cfg, "error": str(err).splitlines()[0][:200]})
        kernels.TUNING[name] = shipped[name]
        rows.sort(key=lambda r: r.get("ms", float("inf")))
        for r in rows:
            print(json.dumps(r))
        results += rows
    if args.out:
        Path(args.out).write_text(json.dumps({"tokens": N, "width": D, "hidden": Hd, "device": device,
                                              "results": results}, indent=1))
    if args.best:
        best = {}
        for r in results:  # fastest first within each kernel
            if "ms" in r and r["kernel"] not in best:
                best[r["kernel"]] = {k: v for k, v in r.items() if k not in ("kernel", "ms", "tb_s", "shipped")}
        Path(args.best).write_text(json.dumps(best, indent=1))
    return results


if __name__ == "__main__":
    main()
