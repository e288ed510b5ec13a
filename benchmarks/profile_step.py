"""Where the time of one ViTok training step (or encode+decode) goes: a kernel profile by category.

The compiled S-B/16 step reaches 40.7 % MFU and max-autotune gains nothing (benchmarks/NOTES.md), so
the gap to the floor lies between the matmuls. This script runs torch.profiler over a few steps and
sums device time per kernel into categories (matmul/conv, attention, inductor's fused kernels,
normalisation, copies and casts, elementwise, optimizer, other), with the top kernels and how busy
the device was. `--mode lpips` and `--mode stage2` profile the trainer's own step (through
bench.py's TrainerStep: LPIPS with random weights, the shipped discriminator), where the
convolutions of LPIPS and the discriminator get their own category. One call:

    python benchmarks/profile_step.py --variant S-B/16 --size 256 --batch 128 --compile --out prof.json
    python benchmarks/profile_step.py ... --mode infer         # encode + decode instead of a train step
    python benchmarks/profile_step.py ... --mode stage2 [--r1] # the trainer's stage-2 step (random LPIPS)
    python benchmarks/profile_step.py ... --scope full --residual bfloat16   # other compile scopes
    python benchmarks/profile_step.py ... --gaps 20    # also the device's idle gaps and who launched late

`--smoke` runs a tiny model on the CPU (CPU time instead of device time), as the test suite does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from speed_probe import prepare  # noqa: E402
from vitok.model import ViTok, ViTokConfig  # noqa: E402
from vitok.train.optim import build_adamw  # noqa: E402

# First match wins; names are lower-cased kernel or op names. Inductor's fused kernels get their own
# bucket (they mix norms, casts and elementwise work); its matmul templates ("triton_tem") count as matmul.
# (Results before 2026-12-03 have one "matmul/conv" bucket for both.)
CATEGORIES = (
    # cuDNN attention's backward helpers (dO·O row sums, dQ's conversion) too; before 2026-12-03 they
    # fell under "convolution" through their "cudnn::" prefix.
    ("attention", ("flash", "attention", "fmha", "sdpa", "cudnn_mha", "compute_dot_do_o", "convert_dq")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    # cuDNN's convolution kernels (fprop/dgrad/wgrad, implicit GEMMs, depthwise and layout helpers):
    # LPIPS and the discriminator in stage 2, apart from the Transformer's GEMMs.
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm", "cudnn::", "depthwise")),
    ("matmul", ("gemm", "matmul", "aten::mm", "aten::addmm", "aten::bmm", "cutlass", "sm90_xmma", "nvjet",
                "aten::linear", "triton_tem")),
    ("compiled (triton)", ("triton",)),
    ("normalisation", ("rms_norm", "layer_norm", "group_norm", "batch_norm")),
    ("copy/cast", ("copy", "cast", "memcpy", "memset", "contiguous", "catarray", "aten::cat")),
    ("elementwise", ("elementwise", "vectorized", "reduce", "silu", "mul", "add", "exp", "pow", "rsqrt")),
)


def category(name: str) -> str:
    lowered = name.lower()
    for label, needles in CATEGORIES:
        if any(needle in lowered for needle in needles):
            return label
    return "other"


def build(args: argparse.Namespace, device: torch.device) -> tuple[ViTok, torch.Tensor]:
    if args.smoke:
        model = ViTok(ViTokConfig(encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=32,
                                  decoder_depth=1, decoder_heads=2, patch_size=8, channels=4, image_size=32))
        x = torch.rand(2, 3, 32, 32) * 2 - 1
    else:
        model = ViTok.from_name(args.variant, channels=args.channels, image_size=args.size)
        x = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
    model = model.to(device)
    if args.kernels != "torch":
        model.set_kernels(args.kernels)
    if device.type == "cuda":
        model.amp_dtype = torch.bfloat16
    return model, x.to(device)


def trainer_step_fn(args: argparse.Namespace, device: torch.device):
    """The trainer's own stage-1-with-LPIPS or stage-2 step (bench.py's TrainerStep, the timed unit of
    `bench.py --parts stages`); stage 2 on a step without R1 unless --r1."""
    from bench import SMOKE, Spec, TrainerStep, VitokTokenizer

    spec = SMOKE[0] if args.smoke else Spec(f"{args.variant}@{args.size}", "vitok", args.size, 1, args.batch,
                                            args.batch, name=args.variant)
    amp = torch.bfloat16 if device.type == "cuda" else None
    tok = VitokTokenizer(spec, device, amp, getattr(torch, args.residual))
    if args.scope == "full":
        raise SystemExit("--mode lpips/stage2 compiles the model's blocks or stacks, not the whole step")
    if args.scope != "none":
        tok.compile(None, args.scope)
    x = torch.rand(spec.train_batch, *spec.shape, device=device) * 2 - 1
    step = TrainerStep(args.mode, tok, x, spec, amp, disc_channels=args.disc_channels)
    return lambda: step(r1=args.r1)


def step_fn(args: argparse.Namespace, model: ViTok, x: torch.Tensor):
    """The measured unit: one MSE + KL training step with fused AdamW, or one encode + decode;
    compile scope and residual dtype applied as speed_probe.py applies them."""
    fn = prepare(model, args.scope, args.residual, None, train=args.mode == "train")
    if args.mode == "infer":
        model.eval()

        @torch.no_grad()
        def infer() -> None:
            fn(x)
        return infer
    model.train()
    optimizer = build_adamw(list(model.named_parameters()), 1e-4, (0.9, 0.95), 1e-4, fused=True)

    def train() -> None:
        fn(x).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return train


def summarise(prof, steps: int, wall: float, device: torch.device, top: int) -> dict:
    """Per-category and top-kernel device time (CPU time on the CPU) per step, and device busy share."""
    on_gpu = device.type == "cuda"
    totals: dict[str, float] = defaultdict(float)
    kernels = []
    for event in prof.key_averages():
        # On the GPU only the kernels themselves count: the CPU-side op that launched a kernel reports
        # the same device time again. On the CPU the ops' self time is the work.
        if on_gpu and event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        # A record_function range (the optimizer's "Optimizer.step#AdamW.step") is drawn on the GPU
        # timeline too and spans kernels already counted: until 2026-12-03 it counted twice.
        if on_gpu and getattr(event, "is_user_annotation", False):
            continue
        us = event.self_device_time_total if on_gpu else event.self_cpu_time_total
        if us <= 0:
            continue
        totals[category(event.key)] += us
        kernels.append((us, event.key, event.count))
    busy = sum(totals.values()) / 1e6 / steps
    kernels.sort(reverse=True)
    return {
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "time_kind": "device (kernel) time" if on_gpu else "CPU self time",
        "steps": steps, "wall_s_per_step": wall / steps, "busy_s_per_step": busy,
        "busy_share": busy / (wall / steps) if wall > 0 else None,
        "categories_s_per_step": {k: v / 1e6 / steps for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": name[:160], "s_per_step": us / 1e6 / steps, "calls_per_step": count / steps,
                         "category": category(name)} for us, name, count in kernels[:top]],
    }


def idle_gaps(trace: dict, top: int, min_us: float = 5.0) -> dict:
    """Where the device sat idle between kernels, from a Chrome trace of torch.profiler: every gap of at
    least min_us between one kernel's end and the next one's start, attributed to the CPU op that
    launched the kernel after it (the innermost op around the launch call, and the outermost: the
    module call or the autograd node). A gap whose kernel was launched only after the device went idle
    is the host's (Python, autograd, a library's host work); the rest waited on something else."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
    ops: dict = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op":
            ops[e["tid"]].append(e)

    def around(launch: dict) -> tuple[str, str]:
        covering = [o for o in ops.get(launch["tid"], []) if o["ts"] <= launch["ts"] <= o["ts"] + o["dur"]]
        if not covering:
            return "?", "?"
        covering.sort(key=lambda o: o["dur"])
        return covering[0]["name"], covering[-1]["name"]

    gaps, by_op = [], defaultdict(lambda: [0.0, 0])
    for before, after in zip(kernels, kernels[1:]):
        gap = after["ts"] - (before["ts"] + before["dur"])
        if gap < min_us:
            continue
        launch = launches.get(after.get("args", {}).get("correlation"))
        inner, outer = around(launch) if launch else ("?", "?")
        host = launch is not None and launch["ts"] > before["ts"] + before["dur"]
        gaps.append({"us": gap, "kernel_after": after["name"][:100], "launched_by": inner[:100],
                     "inside": outer[:100], "host_late": host})
        by_op[(outer[:100], host)][0] += gap
        by_op[(outer[:100], host)][1] += 1
    gaps.sort(key=lambda g: -g["us"])
    totals = sorted(([k[0], k[1], v[0], v[1]] for k, v in by_op.items()), key=lambda r: -r[2])
    return {"min_us": min_us, "count": len(gaps), "total_us": sum(g["us"] for g in gaps),
            "host_late_us": sum(g["us"] for g in gaps if g["host_late"]),
            "largest": gaps[:top],
            "by_outer_op": [{"inside": o, "host_late": h, "us": us, "gaps": n} for o, h, us, n in totals[:top]]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="S-B/16")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--mode", choices=("train", "infer", "lpips", "stage2"), default="train",
                        help="train: MSE + KL model step; infer: encode + decode; lpips / stage2: the trainer's step")
    parser.add_argument("--r1", action="store_true", help="stage2: profile a step that runs lazy R1")
    parser.add_argument("--disc-channels", type=int, default=0, help="stage2: loss.disc_channels (0 = shipped)")
    parser.add_argument("--kernels", choices=("torch", "triton"), default="torch",
                        help="train/infer: model.kernels (triton: model/kernels.py's fused kernels)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block (= --scope blocks)")
    parser.add_argument("--scope", choices=("none", "blocks", "stacks", "full"), default="none",
                        help="what is compiled: each block, each Transformer stack, or the whole step function")
    parser.add_argument("--residual", choices=("float32", "bfloat16"), default="float32",
                        help="the residual stream's dtype under autocast")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps")
    parser.add_argument("--top", type=int, default=25, help="kernels listed")
    parser.add_argument("--trace", default="", help="also write a Chrome trace here")
    parser.add_argument("--gaps", type=int, default=0, help="list this many of the largest idle gaps between "
                        "kernels, with the CPU ops that launched the kernel after each, and the step's time "
                        "unprofiled (the profiler's own host overhead widens gaps)")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--out", default="", help="write the summary as JSON here")
    args = parser.parse_args(argv)
    if args.compile:
        args.scope = "blocks"
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.mode in ("lpips", "stage2"):
        fn = trainer_step_fn(args, device)
    else:
        model, x = build(args, device)
        fn = step_fn(args, model, x)
    for _ in range(args.warmup):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    unprofiled = None
    if args.gaps:
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync()
        unprofiled = (time.perf_counter() - start) / args.steps
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync()
        wall = time.perf_counter() - start
    if args.trace:
        prof.export_chrome_trace(args.trace)
    result = {"args": vars(args), **summarise(prof, args.steps, wall, device, args.top)}
    if args.gaps:  # read back from the trace written above, or from one of its own
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(args.trace or Path(tmp) / "trace.json")
            if not args.trace:
                prof.export_chrome_trace(str(path))
            gaps = idle_gaps(json.loads(path.read_text()), args.gaps)
        result["unprofiled_wall_s_per_step"] = unprofiled
        result["idle_gaps"] = {**gaps, "total_us_per_step": gaps["total_us"] / args.steps,
                               "host_late_us_per_step": gaps["host_late_us"] / args.steps}
    print(f"{result['device']}: {result['wall_s_per_step'] * 1e3:.2f} ms per step (profiled), "
          f"{result['time_kind']} {result['busy_s_per_step'] * 1e3:.2f} ms")
    for name, seconds in result["categories_s_per_step"].items():
        print(f"  {name:18} {seconds * 1e3:8.3f} ms")
    if args.gaps:
        gaps = result["idle_gaps"]
        print(f"unprofiled {unprofiled * 1e3:.2f} ms per step; gaps of {gaps['min_us']:.0f}+ us: "
              f"{gaps['total_us_per_step'] / 1e3:.2f} ms per step, "
              f"{gaps['host_late_us_per_step'] / 1e3:.2f} ms of it launched late by the host")
        for row in gaps["by_outer_op"]:
            print(f"  {row['us'] / args.steps:9.1f} us/step  {row['gaps'] / args.steps:6.1f} gaps  "
                  f"host_late={row['host_late']!s:5}  {row['inside']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
