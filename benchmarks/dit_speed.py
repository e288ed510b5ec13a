"""DiT training steps per second on a synthetic latent store, for one copy of the package.

The timed unit is `DiTTrainer.train_step` itself (batch drawing, copies, forward, loss, backward,
clipping, AdamW, EMA), so the number is what `vitok dit train` gets between log steps. Run it
on a baseline copy and on the current one in the same session:

    git archive BASE src | tar -x -C .baseline
    python benchmarks/dit_speed.py --src .baseline/src --out base.json
    python benchmarks/dit_speed.py --out cur.json                 # add compile=false etc. to compare

Extra key=value arguments override DiTTrainConfig fields (those a copy does not know are dropped
with a note). `--smoke` runs a tiny DiT on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path


def synthetic_store(folder: Path, count: int, grid: tuple[int, int], channels: int, classes: int) -> None:
    """A latent store in the format `vitok latents` writes: one safetensors shard and index.json."""
    import torch
    from safetensors.torch import save_file

    from vitok.generate.latents import shard_name

    g = torch.Generator().manual_seed(0)
    tokens = grid[0] * grid[1]
    save_file({"latents": torch.randn(count, tokens, channels, generator=g).to(torch.bfloat16),
               "labels": torch.randint(classes, (count,), generator=g)}, str(folder / shard_name(0)))
    index = {"format": "vitok-latents", "version": 1, "classes": [f"c{i}" for i in range(classes)],
             "num_classes": classes, "count": count, "num_shards": 1, "dtype": "bfloat16", "grid": list(grid),
             "tokens": tokens, "channels": channels, "image_size": grid[0] * 16, "frames": 1, "frame_stride": 1,
             "mean": [0.0] * channels, "std": [1.0] * channels, "tokenizer": "synthetic", "tokenizer_config": {},
             "skipped_files": []}
    (folder / "index.json").write_text(json.dumps(index))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    parser.add_argument("--model", default="DiT-B")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--grid", type=int, default=8, help="latent grid side (8: 128p images at p = 16)")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default="")
    parser.add_argument("overrides", nargs="*", help="DiTTrainConfig key=value")
    args = parser.parse_args(argv)
    sys.path.insert(0, args.src)
    import torch

    from vitok.generate.train import DiTTrainConfig, DiTTrainer, parse_overrides

    known = {f.name for f in dataclasses.fields(DiTTrainConfig)}
    overrides = [o for o in args.overrides if o.split("=")[0] in known]
    dropped = sorted(set(args.overrides) - set(overrides))
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        grid = (2, 2) if args.smoke else (args.grid, args.grid)
        synthetic_store(store, 64 if args.smoke else 4096, grid, 4 if args.smoke else args.channels, 5)
        config = DiTTrainConfig(latents=str(store), model=args.model, batch_size=8 if args.smoke else args.batch,
                                progress=False, device="cpu" if args.smoke else "auto")
        if args.smoke:
            config.width, config.depth, config.heads = 32, 1, 2
        config = parse_overrides(config, overrides)
        trainer = DiTTrainer(config, Path(tmp) / "run")
        cuda = trainer.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        warmup, steps = (1, 2) if args.smoke else (args.warmup, args.steps)
        t0 = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step()
        sync()
        first = time.perf_counter() - t0
        start = time.perf_counter()
        for _ in range(steps):
            values = trainer.train_step()
        sync()
        seconds = (time.perf_counter() - start) / steps
    result = {"src": args.src, "model": args.model, "batch": config.batch_size, "grid": list(grid),
              "overrides": overrides, "dropped_overrides": dropped, "device": torch.cuda.get_device_name() if cuda
              else "cpu", "torch": torch.__version__, "warmup_s": first, "step_s": seconds,
              "samples_per_s": config.batch_size / seconds, "last_loss": float(values["loss"])}
    print(json.dumps(result), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
