"""Launch shapes for the memory-bound Triton kernels (model.kernels=triton), timed on the GPU.

    python benchmarks/kernel_tune.py [--tokens 32768] [--width 768] [--hidden 2048] [--out FILE] [--best FILE]

For each kernel in `vitok.model.kernels.TUNING`, every candidate launch shape runs the kernel's
forward or backward on bf16 tensors of one training step's size (S-B/16 at 256p, batch 128: 32,768
tokens of width 768, SwiGLU hidden 2048), launched directly (no autograd around it) and replayed from
a CUDA graph, so that Python's launch time is not counted; the table gives the time and
the bandwidth the kernel's own reads and writes reach (counted, not measured), fastest first. The
shipped TUNING is what this picked on an H200 (benchmarks/NOTES.md). `--smoke`: one candidate each,
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
import timing  # noqa: E402 - this folder's CUDA-event timer

CANDIDATES = {
    "add_rmsnorm_bwd": [{"programs": p, "rb": rb, "num_warps": w}
                        for p, rb, w in itertools.product((1024, 2048, 4096, 8192), (1, 2, 4), (4, 8))],
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

    def bench(fn):
        # The kernels take 0.05-0.3 ms, about what Python spends launching one: replayed from a CUDA
        # graph of 20 launches, the time is the GPU's alone (timing.bench around the replay).
        if device == "cpu":
            fn()
            return 1.0
        return timing.graph_bench(fn, 20, 1, 10)
    N, D, Hd, bf = args.tokens, args.width, args.hidden, torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)
    h, dy, dh, dx = (torch.randn(N, D, device=device, generator=g).to(bf) for _ in range(4))
    w = torch.randn(D, device=device, generator=g)
    rstd = torch.rand(N, device=device, generator=g) + 0.5
    gu, dgu = (torch.randn(N, 2 * Hd, device=device, generator=g).to(bf) for _ in range(2))
    out, dout = (torch.randn(N, Hd, device=device, generator=g).to(bf) for _ in range(2))
    makers = {  # the launches as the blocks make them: bf16 stream and branch (one shared gradient)
        "add_rmsnorm_bwd": lambda: kernels._add_rmsnorm_bwd_launch(dy, dh, h, w, rstd, dx, dx, False),
        "silu_mul_fwd": lambda: kernels._silu_mul_launch("silu_mul_fwd", gu, out),
        "silu_mul_bwd": lambda: kernels._silu_mul_launch("silu_mul_bwd", dout, gu, dgu),
    }
    # Bytes each kernel must move (2 per bf16 element): the bandwidth it reaches is counted from these.
    moved = {"add_rmsnorm_bwd": 2 * N * D * 4, "silu_mul_fwd": 2 * N * Hd * 3, "silu_mul_bwd": 2 * N * Hd * 5}
    shipped = {k: dict(v) for k, v in kernels.TUNING.items()}
    results = []
    for name, cands in CANDIDATES.items():
        rows = []
        for cfg in (cands[:1] if args.smoke else cands):
            kernels.TUNING[name] = cfg
            try:
                t = bench(makers[name])
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
