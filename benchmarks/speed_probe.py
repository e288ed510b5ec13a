"""Candidate speed-ups for issue 7, each measured against the others in one process on one GPU.

Sections (pick with --sections):

* attention: SDPA forward + backward at the shapes of S-B/16's encoder and decoder (L = 256,
  head width 64) for every backend PyTorch offers (flash, memory-efficient, cuDNN).
* model: S-B/16 at 256p, bf16 autocast: encode+decode images/s and the MSE + KL training step
  (fused AdamW) images/s with MFU, for named variants of how much is compiled (nothing, each
  block, each Transformer stack, the whole step function), the residual stream's dtype, the
  attention backend and the batch. `--src` points at another copy of the package (a baseline
  from `git archive`), so a change is measured as a ratio in the same session.
* stage2: the extra networks of training: the discriminator's passes as the trainer runs them (the
  reconstructions' pass differentiated to them and to the weights, the reals' to the weights), with
  and without R1's double backward, eager and compiled, NCHW and NHWC, with the blur's variants and
  the top kernels of the main ones; LPIPS forward + input backward, eager and compiled.

    python benchmarks/speed_probe.py --out probe.json
    python benchmarks/speed_probe.py --src .baseline/src --sections model --variants eager,blocks --out base.json

Every row is written to the JSON as soon as it is measured, so a call cut by its time limit keeps
what it finished. `--smoke` runs every section on a tiny model on the CPU (the test suite does).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # timing.py, also when loaded by path (the tests)

# name -> (compile scope, residual dtype, attention backend, batch multiplier, compile mode)
VARIANTS = {
    "eager": ("none", "float32", "default", 1, None),
    "eager-bf16": ("none", "bfloat16", "default", 1, None),
    "eager-bf16-x2": ("none", "bfloat16", "default", 2, None),
    "eager-bf16-x4": ("none", "bfloat16", "default", 4, None),
    "blocks": ("blocks", "float32", "default", 1, None),
    "stacks": ("stacks", "float32", "default", 1, None),
    "stacks-bf16": ("stacks", "bfloat16", "default", 1, None),
    "stacks-bf16-x2": ("stacks", "bfloat16", "default", 2, None),
    "full": ("full", "float32", "default", 1, None),
    "full-bf16": ("full", "bfloat16", "default", 1, None),
    "full-bf16-cudnn": ("full", "bfloat16", "cudnn", 1, None),
    "full-bf16-x2": ("full", "bfloat16", "default", 2, None),
    "full-bf16-graphs": ("full", "bfloat16", "default", 1, "reduce-overhead"),
    "blocks-bf16": ("blocks", "bfloat16", "default", 1, None),
    "blocks-x2": ("blocks", "float32", "default", 2, None),
    "blocks-bf16-x2": ("blocks", "bfloat16", "default", 2, None),
    "blocks-bf16-x4": ("blocks", "bfloat16", "default", 4, None),
}
# Inference with bf16 weights (model.to(torch.bfloat16), no autocast), as bench.py runs it.
VARIANTS.update({
    "eager-w16-x4": ("none", "weights", "default", 4, None),
    "blocks-w16-x4": ("blocks", "weights", "default", 4, None),
    "stacks-w16-x4": ("stacks", "weights", "default", 4, None),
    "full-w16-x4": ("full", "weights", "default", 4, None),
    "blocks-w16-x8": ("blocks", "weights", "default", 8, None),
})
DEFAULT_VARIANTS = list(VARIANTS)
# Any variant with "+triton" appended runs with model.kernels=triton (model/kernels.py's fused kernels).
KERNEL_SUFFIX = "+triton"


def split_variant(name: str) -> tuple[str, str]:
    """(variant, kernels) of a --variants entry, e.g. "stacks+triton" -> ("stacks", "triton")."""
    return (name[:-len(KERNEL_SUFFIX)], "triton") if name.endswith(KERNEL_SUFFIX) else (name, "torch")


class Recorder:
    """Collects rows and rewrites the JSON file after each one."""

    def __init__(self, path: str, meta: dict) -> None:
        self.path, self.data = path, {**meta, "rows": []}

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        print(json.dumps(row), flush=True)
        if self.path:
            Path(self.path).write_text(json.dumps(self.data, indent=2) + "\n")


def make_timer(device):
    if device.type != "cuda":
        def cpu_timer(fn, warmup: int = 1, iters: int = 2) -> float:
            for _ in range(warmup):
                fn()
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            return (time.perf_counter() - start) / iters
        return cpu_timer
    from timing import bench
    return lambda fn, warmup=3, iters=10: bench(fn, warmup, iters)


def sdpa_context(backend: str):
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    return contextlib.nullcontext() if backend == "default" else sdpa_kernel([table[backend]])


def attention_section(rec: Recorder, device, timer, smoke: bool) -> None:
    import torch
    import torch.nn.functional as F

    shapes = [(2, 2, 16, 16)] if smoke else [(128, 6, 256, 64), (128, 12, 256, 64)]
    backends = ["math"] if smoke else ["flash", "efficient", "cudnn"]
    dtype = torch.float32 if smoke else torch.bfloat16
    for B, H, L, d in shapes:
        q, k, v = (torch.randn(B, H, L, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        flops_fwd = 4 * B * H * L * L * d
        for backend in backends:
            row = {"section": "attention", "shape": [B, H, L, d], "backend": backend}
            try:
                with sdpa_context(backend):
                    fwd = timer(lambda: F.scaled_dot_product_attention(q, k, v))
                    out = F.scaled_dot_product_attention(q, k, v)
                    grad = torch.randn_like(out)

                    def both():
                        o = F.scaled_dot_product_attention(q, k, v)
                        torch.autograd.grad(o, (q, k, v), grad)
                    fb = timer(both)
                row.update(fwd_ms=fwd * 1e3, fwd_bwd_ms=fb * 1e3, fwd_tflops=flops_fwd / fwd / 1e12,
                           fwd_bwd_tflops=3.5 * flops_fwd / fb / 1e12)
            except RuntimeError as err:  # a backend that does not support the shape or GPU
                row["error"] = str(err).splitlines()[0][:200]
            rec.add(row)


def build_model(args, device, smoke: bool):
    import torch

    from vitok.model import ViTok

    torch.manual_seed(0)
    if smoke:
        from vitok.model import ViTokConfig
        model = ViTok(ViTokConfig(encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=32,
                                  decoder_depth=1, decoder_heads=2, patch_size=8, channels=4, image_size=32))
    else:
        model = ViTok.from_name(args.variant, channels=args.channels, image_size=args.size)
    return model.to(device)


def prepare(model, scope: str, residual: str, mode: str | None, train: bool):
    """Apply a compile scope to the model; return the function measured (x -> loss, or x -> x_hat)."""
    import torch

    from vitok.losses import kl_loss, reconstruction_loss

    if residual == "weights":  # bf16 weights, no autocast: the stream follows the weights
        model.to(torch.bfloat16)
        model.amp_dtype = None
    else:
        model.residual_dtype = getattr(torch, residual)  # ignored by packages without the attribute
    opts = {"mode": mode} if mode else {}
    if scope == "blocks":
        model.compile_blocks(**opts)
    elif scope == "stacks":
        model.compile_stacks(**opts)

    def loss_fn(x):
        x_hat, post = model(x, check=False)
        return reconstruction_loss(x_hat, x, "mse") + 1e-3 * kl_loss(post)

    def infer_fn(x):
        return model(x, sample=False, check=False)[0]
    fn = loss_fn if train else infer_fn
    return torch.compile(fn, **opts) if scope == "full" else fn


def model_section(rec: Recorder, args, device, timer, smoke: bool) -> None:
    import torch

    from vitok.info import describe

    peak = None
    if device.type == "cuda":
        from timing import matmul_tflops
        peak = matmul_tflops()
    for name in args.variants.split(","):
        base, kernels = split_variant(name)
        scope, residual, backend, mult, mode = VARIANTS[base]
        if time.perf_counter() - START > args.budget_s:
            rec.add({"section": "model", "variant": name, "skipped": "time budget"})
            continue
        torch._dynamo.reset()
        batch = (2 if smoke else args.batch) * mult
        row = {"section": "model", "variant": name, "src": args.src, "scope": scope, "residual": residual,
               "attention": backend, "batch": batch, "mode": mode or "default", "kernels": kernels}
        try:
            model = build_model(args, device, smoke)
            if kernels != "torch":
                model.set_kernels(kernels)
            flops = describe(model.config)["gflops_total"] * 1e9
            if device.type == "cuda":
                model.amp_dtype = torch.bfloat16
            size = model.config.image_size
            x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
            with sdpa_context(backend):
                t0 = time.perf_counter()
                model.eval()
                infer = prepare(model, scope, residual, mode, False)
                xin = x.to(next(model.parameters()).dtype)
                with torch.no_grad():
                    t_inf = timer(lambda: infer(xin))
                row.update(encode_decode_per_s=batch / t_inf)
                if peak:
                    row["mfu_encode_decode"] = flops * batch / t_inf / 1e12 / peak
                if args.infer_only or residual == "weights":
                    rec.add(row)
                    continue
                model.train()
                torch._dynamo.reset() if scope == "full" else None
                loss_fn = prepare(model, "none" if scope == "blocks" or scope == "stacks" else scope,
                                  residual, mode if mode != "reduce-overhead" else None, True)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

                def step():
                    loss_fn(x).backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                t_step = timer(step, 3, 8)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    torch.cuda.reset_peak_memory_stats()
            row.update(encode_decode_per_s=batch / t_inf, train_per_s=batch / t_step,
                       wall_incl_compile_s=time.perf_counter() - t0)
            if peak:
                row.update(matmul_tflops=peak, mfu_encode_decode=flops * batch / t_inf / 1e12 / peak,
                           mfu_train=3 * flops * batch / t_step / 1e12 / peak)
        except Exception as err:  # noqa: BLE001 - a failing variant is a result, not the end of the run
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        rec.add(row)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def grouped_blur(x):
    """The depthwise-convolution blur this package used before the separable one (for comparison)."""
    import torch.nn.functional as F

    from vitok.losses import blur_kernel

    k = blur_kernel(2).to(x.device, x.dtype)
    return F.conv2d(x, k.expand(x.shape[1], 1, 4, 4).contiguous(), stride=2, padding=1, groups=x.shape[1])


def pooled_blur(x):
    """The same blur as three 2×2 box averages ([1,3,3,1] = [1,1]*[1,1]*[1,1]), the last one strided:
    avg_pool's kernels and plain autograd (its double backward is avg_pool again)."""
    import torch.nn.functional as F

    x = F.avg_pool2d(F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 2, 1), 2, 1)
    return F.avg_pool2d(x, 2, 2)


# The discriminator's variants: (compiled, channels_last, blur, cudnn.benchmark). "function": the
# package's blur (_BlurDown, hand-written gradients; blur_down's strided views when compiled);
# "conv": _BlurDown even inside the compiled graph; "grouped": autograd of the plain depthwise conv;
# "pool": pooled_blur (three box filters).
DISC_VARIANTS = {
    "eager": (False, False, "function", True),
    "eager-nobench": (False, False, "function", False),
    "eager-nhwc": (False, True, "function", True),
    "eager-grouped": (False, False, "grouped", True),
    "eager-pool": (False, False, "pool", True),
    "eager-pool-nhwc": (False, True, "pool", True),
    "compiled": (True, False, "function", True),
    "compiled-r1graph": (True, False, "function", True),
    "compiled-nhwc": (True, True, "function", True),
    "compiled-convblur": (True, False, "conv", True),
}
# LPIPS variants of the stage2 section: name -> (compiled, channels-last inputs).
LPIPS_VARIANTS = {"eager": (False, False), "compiled": (True, False), "compiled-nhwc": (True, True)}


def variant_names(arg: str, table: dict, flag: str) -> list[str]:
    """The names in a comma list (empty entries dropped), each checked against its table."""
    names = [n for n in arg.split(",") if n]
    if set(names) - set(table):
        raise SystemExit(f"{flag} {sorted(set(names) - set(table))}: choose from {list(table)}")
    return names


def compiled_r1(disc):
    """R1's pass as one compiled graph: x -> (logits, d sum(logits) / dx), the gradient taken by
    torch.func.grad inside the graph and itself differentiable to the weights (autograd.grad with
    create_graph through a compiled graph is refused). The trainer does not use it: a real run's
    windows put it slower than the eager double backward, this probe faster (NOTES, 2026-12-03,
    fourth and sixth sessions); a same-call real-run A/B has not been made."""
    import torch

    def with_gradient(x):
        def total(inp):
            logits = disc(inp)
            return logits.sum(), logits
        grad, logits = torch.func.grad(total, has_aux=True)(x)
        return logits, grad
    fn = torch.compile(with_gradient, dynamic=False)

    def run(x):
        with torch._functorch.config.patch(donated_buffer=False):
            return fn(x)
    return run


def top_kernels(fn, count: int = 12) -> dict:
    """profile_step.summarise of one call of fn (after it has run once): device time by category and
    the largest kernels."""
    import torch
    from profile_step import summarise
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    return summarise(prof, 1, wall, torch.device("cuda"), count)


def stage2_section(rec: Recorder, args, device, timer, smoke: bool) -> None:
    import torch

    from vitok.losses import Discriminator, discriminator_loss, generator_loss, gradient_penalty, r1_penalty
    from vitok.losses.discriminator import _BlurDown
    from vitok.metrics.lpips import LPIPS
    from vitok.train.config import TrainConfig

    size = 32 if smoke else args.size
    batches = [2] if smoke else [128]
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    width = 8 if smoke else TrainConfig().loss.disc_channels  # the shipped width (loss.disc_channels)
    # Smoke: no compiled variants (tests/losses compiles the discriminator).
    names = ("eager", "eager-pool") if smoke else variant_names(args.disc_variants, DISC_VARIANTS, "--disc-variants")
    bench_before = torch.backends.cudnn.benchmark
    for name in names:
        compiled, nhwc, blur, cudnn_bench = DISC_VARIANTS[name]
        torch._dynamo.reset()
        torch.backends.cudnn.benchmark = cudnn_bench
        torch.manual_seed(0)
        disc = Discriminator(size, channels=width).to(device)
        disc.channels_last = nhwc
        for block in disc.blocks:
            down = block.down
            if blur == "grouped":
                down.forward = grouped_blur
            elif blur == "pool":
                down.forward = pooled_blur
            elif blur == "conv":
                down.forward = lambda x, d=down: _BlurDown.apply(x, d.weight, d.stride, d.padding)
        net = disc.compiled() if compiled else disc
        # R1's pass: the module's own double backward (as the trainer runs it), or ("-r1graph") compiled
        # with the input gradient taken by torch.func.grad inside the graph.
        net_r1 = compiled_r1(disc) if name.endswith("-r1graph") else None
        params = list(disc.parameters())
        for batch in batches:
            real = torch.rand(batch, 3, size, size, device=device) * 2 - 1
            fake = torch.rand(batch, 3, size, size, device=device) * 2 - 1

            def trainer_passes(r1: bool = False):
                # As Trainer.train_step + disc_step run them: one pass over the reconstructions
                # differentiated to them (generator) and to the weights (discriminator), one over the
                # reals to the weights; with R1 the reals' pass is the module's own, double backward.
                x_hat = fake.detach().requires_grad_()
                r = real.detach().requires_grad_(r1 and net_r1 is None)
                with amp:
                    fake_logits = net(x_hat).float()
                torch.autograd.grad(generator_loss(fake_logits), x_hat, retain_graph=True)
                with amp:
                    if r1 and net_r1 is not None:
                        real_logits, grad = net_r1(r)
                    else:
                        real_logits = (disc if r1 else net)(r)
                real_logits = real_logits.float()
                loss = discriminator_loss(real_logits, fake_logits)
                if r1:
                    loss = loss + (r1_penalty(real_logits, r) if net_r1 is None else gradient_penalty(grad))
                torch.autograd.backward(loss, inputs=params)
            row = {"section": "stage2", "net": "discriminator", "variant": name, "batch": batch, "channels": width,
                   "compiled": compiled, "channels_last": nhwc, "blur": blur, "cudnn_benchmark": cudnn_bench}
            try:
                row["trainer_ms"] = timer(trainer_passes) * 1e3
                if not compiled or blur == "function":
                    row["r1_ms"] = timer(lambda: trainer_passes(True)) * 1e3
                if device.type == "cuda" and name in ("eager", "compiled", "compiled-nhwc"):
                    row["kernels"] = top_kernels(trainer_passes)
                if device.type == "cuda" and name in ("eager", "compiled-r1graph"):
                    row["r1_kernels"] = top_kernels(lambda: trainer_passes(True))
            except Exception as err:  # noqa: BLE001
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            rec.add(row)
    torch.backends.cudnn.benchmark = bench_before
    lpips_names = ["eager"] if smoke else variant_names(args.lpips_variants, LPIPS_VARIANTS, "--lpips-variants")
    for name in lpips_names:
        compiled, nhwc = LPIPS_VARIANTS[name]
        torch._dynamo.reset()
        lpips = LPIPS().to(device).requires_grad_(False).eval()
        lpips.channels_last = nhwc
        fn = torch.compile(lpips) if compiled else lpips
        for batch in batches:
            x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
            y = torch.rand(batch, 3, size, size, device=device) * 2 - 1

            def fwd_bwd():
                xx = x.detach().requires_grad_(True)
                with amp:
                    d = fn(xx, y).mean()
                d.backward()
            row = {"section": "stage2", "net": "lpips", "variant": name, "compiled": compiled, "channels_last": nhwc,
                   "batch": batch}
            try:
                row["fwd_bwd_ms"] = timer(fwd_bwd) * 1e3
                if device.type == "cuda" and name == "compiled":
                    row["kernels"] = top_kernels(fwd_bwd)
            except Exception as err:  # noqa: BLE001
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            rec.add(row)


START = time.perf_counter()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(ROOT.parent / "src"), help="the vitok package to measure")
    parser.add_argument("--sections", default="attention,model,stage2")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--lpips-variants", default=",".join(LPIPS_VARIANTS),
                        help=f"stage2 section: of {list(LPIPS_VARIANTS)} (empty: none)")
    parser.add_argument("--disc-variants", default=",".join(DISC_VARIANTS), help="stage2 section: of "
                        + ", ".join(DISC_VARIANTS))
    parser.add_argument("--variant", default="S-B/16")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--budget-s", type=float, default=math.inf, help="skip model variants after this")
    parser.add_argument("--infer-only", action="store_true", help="model section: no training step")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--tuning", default="", help="JSON file of launch shapes for the Triton kernels "
                        "(kernel name -> settings, as vitok.model.kernels.TUNING and kernel_tune.py's --best)")
    parser.add_argument("--gemm-tuning", default="", help="JSON file of tile shapes for the inference GEMMs "
                        "(as vitok.model.gemm.TUNING and gemm_probe.py --fused --best)")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    unknown = {v for v in args.variants.split(",") if split_variant(v)[0] not in VARIANTS}
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    sys.path.insert(0, args.src)
    import torch

    if args.tuning:
        from vitok.model import kernels
        kernels.TUNING.update(json.loads(Path(args.tuning).read_text()))
    if args.gemm_tuning:
        from vitok.model import gemm
        gemm.TUNING.update(json.loads(Path(args.gemm_tuning).read_text()))

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    timer = make_timer(device)
    meta = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "args": vars(args)}
    rec = Recorder(args.out, meta)
    sections = args.sections.split(",")
    if "attention" in sections:
        attention_section(rec, device, timer, args.smoke)
    if "model" in sections:
        model_section(rec, args, device, timer, args.smoke)
    if "stage2" in sections:
        stage2_section(rec, args, device, timer, args.smoke)
    return rec.data


if __name__ == "__main__":
    main(sys.argv[1:])
