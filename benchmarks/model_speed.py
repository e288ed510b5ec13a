"""Encode/decode and training-step speed of S-B/16 at 256p (bf16) for one copy of the package.

Run twice in one command, once on a baseline checkout of src/ and once on the current one, so
every figure is a ratio against a baseline measured on the same GPU in the same session:

    git archive BASE src | tar -x -C .baseline
    python benchmarks/model_speed.py --src .baseline/src --label baseline --out base.json
    python benchmarks/model_speed.py --src src --label current --out cur.json
    python benchmarks/model_speed.py --compare base.json cur.json
"""

from __future__ import annotations

import argparse
import json
import sys

from timing import bench, matmul_tflops


def measure(label: str, batch: int, compile_mode: str | None) -> dict:
    import torch

    from vitok.info import describe
    from vitok.model import ViTok

    peak = matmul_tflops()
    torch.manual_seed(0)
    model = ViTok.from_name("S-B/16", channels=16, image_size=256).cuda()
    c = model.config
    flops = describe(c)["gflops_total"] * 1e9
    model.amp_dtype = torch.bfloat16
    x = torch.rand(batch, 3, 256, 256, device="cuda") * 2 - 1
    out = {"label": label, "batch": batch, "compile_mode": compile_mode or "default", "matmul_tflops": peak,
           "torch": torch.__version__,
           "device": torch.cuda.get_device_name()}

    def step_fn(opt):
        def step():
            x_hat, post = model(x, check=False)
            loss = (x_hat - x).square().mean() + 1e-3 * post.kl().mean() / (c.num_tokens * c.channels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    modes = ["eager"] + (["compiled"] if hasattr(model, "compile_blocks") else [])
    for mode in modes:
        if mode == "compiled":
            model.compile_blocks(**({"mode": compile_mode} if compile_mode else {}))
        model.eval()
        with torch.no_grad():
            t_enc = bench(lambda: model.encode(x, check=False))
            z = model.encode(x, check=False).mean
            t_dec = bench(lambda: model.decode(z, check=False))
            t_both = bench(lambda: model(x, sample=False, check=False))
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        t_step = bench(step_fn(opt), warmup=3, iters=8)
        out[mode] = {
            "encode_per_s": batch / t_enc, "decode_per_s": batch / t_dec, "encode_decode_per_s": batch / t_both,
            "mfu_encode_decode": flops * batch / t_both / 1e12 / peak,
            "train_step_per_s": batch / t_step, "mfu_train": 3 * flops * batch / t_step / 1e12 / peak,
        }
        print(label, mode, json.dumps(out[mode]), flush=True)
    return out


def compare(paths: list[str]) -> None:
    runs = [json.load(open(p)) for p in paths]
    base = runs[0]["eager"]
    keys = ("encode_decode_per_s", "mfu_encode_decode", "train_step_per_s", "mfu_train")
    print(f"{'version':22} " + " ".join(f"{k:>20}" for k in keys) + "   ratio enc+dec / train vs baseline eager")
    for run in runs:
        for mode in ("eager", "compiled"):
            if mode not in run:
                continue
            r = run[mode]
            print(f"{run['label'] + ' ' + mode:22} " + " ".join(f"{r[k]:20.3f}" for k in keys)
                  + f"   {r['encode_decode_per_s'] / base['encode_decode_per_s']:.2f}x"
                  + f" / {r['train_step_per_s'] / base['train_step_per_s']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", default="src")
    parser.add_argument("--label", default="current")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default=None)
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    parser.add_argument("--compare", nargs="+", default=None)
    args = parser.parse_args()
    if args.compare:
        compare(args.compare)
        return
    sys.path.insert(0, args.src)
    result = measure(args.label, args.batch, args.compile_mode)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
