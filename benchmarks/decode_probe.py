"""Where does real training with data.decode=gpu lose time against the model-only step? (issue 18)

    python benchmarks/decode_probe.py PHOTOS_TRAIN_DIR --batch 128 --size 256 [--out probe.json]

One process, one GPU, the training photos' JPEG bytes read once into memory (no loader workers):

* decode alone: one batch of crops planned as the loader plans them (plan_jpeg, the sample rng),
  decoded by each available decoder (torchvision's nvJPEG; nvImageCodec's default GPU backend and
  its hardware-decoder backend when `nvidia.nvimgcodec` is importable), then cut and resized
  (GpuDecoder): milliseconds per batch, with a device sync, median of repeats;
* the compiled S-B/16 stage-1 step (MSE + KL, fused AdamW, compiled blocks, bf16) on one fixed
  batch, against the same step fed through GpuDecoder.ahead from the in-memory batches, as the
  trainer runs it (decode thread, side stream, queue of two): the difference is what decoding
  costs the step on the GPU and in the host process, with the loader's workers out of the picture.

The ratios are within one process; the last lines print a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed_probe.py

from vitok.data.datasets import collate, to_model_range  # noqa: E402
from vitok.data.gpu_decode import GpuDecoder, _nvjpeg, plan_jpeg  # noqa: E402
from vitok.data.transforms import TrainAugment  # noqa: E402


def pending_batches(files: list[Path], batch: int, size: int, count: int, seed: int = 0) -> list[dict]:
    """`count` loader batches of pending JPEGs (one packed, pinned buffer and the crop plans), as
    the workers send them (datasets.collate)."""
    datas = [f.read_bytes() for f in files]
    augment = TrainAugment(size, crop="random", flip=True, scale=(0.5, 1.0))
    rng = np.random.default_rng(seed)
    order = itertools.cycle(range(len(files)))
    out = []
    for _ in range(count):
        items = []
        for _ in range(batch):
            i = next(order)
            plan = plan_jpeg(datas[i], augment, rng)
            if plan is None:
                raise SystemExit(f"{files[i]} is not a JPEG the GPU path plans; use a folder of JPEGs")
            items.append({"jpeg": datas[i], "plan": plan, "key": str(files[i])})
        packed = collate(items)
        if torch.cuda.is_available():
            packed["jpegs"] = packed["jpegs"].pin_memory()
        out.append(packed)
    return out


def nvimgcodec_decoder(kind: str):
    """A GpuDecoder decode function backed by nvImageCodec: kind "gpu" (its CUDA nvJPEG backend) or "hw"
    (the hardware JPEG engines); None when the package is absent."""
    try:
        from nvidia import nvimgcodec
    except ImportError:
        return None
    backends = [nvimgcodec.Backend(nvimgcodec.HW_GPU_ONLY if kind == "hw" else nvimgcodec.GPU_ONLY)]
    decoder = nvimgcodec.Decoder(backends=backends)
    # As stored: GpuDecoder applies the EXIF orientation itself (the crop plan is on the upright image).
    params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.SRGB,
                                     sample_format=nvimgcodec.I_RGB)

    def decode(datas, device):
        stream = torch.cuda.current_stream(device).cuda_stream
        streams = [nvimgcodec.CodeStream(d.numpy()) for d in datas]
        images = decoder.decode(streams, params=params, cuda_stream=stream)
        return [None if im is None else torch.as_tensor(im, device=device).permute(2, 0, 1) for im in images]
    return decode


def median_ms(fn, device, repeats: int) -> float:
    """Median wall milliseconds of fn() up to a device sync. Not timing.bench's CUDA events on the
    current stream: nvJPEG works on a stream of its own, and the crop loop is host time."""
    fn()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    device = torch.device("cuda")
    files = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    batches = pending_batches(files, args.batch, args.size, 4)
    megapixels = sum(item["plan"].pixels for item in batches[0]["pending"]) / 1e6
    rows: list[dict] = []
    decoders = {"torchvision": _nvjpeg}
    for kind in ("gpu", "hw"):
        try:
            fn = nvimgcodec_decoder(kind)
        except Exception as err:  # noqa: BLE001 - a decoder that cannot start is a result
            rows.append({"what": f"nvimgcodec-{kind}", "error": f"{type(err).__name__}: {err}"[:300]})
            fn = None
        if fn is not None:
            decoders[f"nvimgcodec-{kind}"] = fn

    # Decode alone.
    for name, fn in decoders.items():
        gpu = GpuDecoder(args.size, device, decode=fn)
        row = {"what": "decode", "decoder": name, "batch": args.batch, "megapixels_per_batch": megapixels}
        try:
            datas = [batches[0]["jpegs"][slice(*item["span"])] for item in batches[0]["pending"]]
            row["decode_ms"] = median_ms(lambda: fn(datas, device), device, args.repeats)
            row["decode_and_crop_ms"] = median_ms(lambda: gpu(batches[0]), device, args.repeats)
            row["fallbacks"] = gpu.fallbacks
            ref = GpuDecoder(args.size, device)(batches[1])["pixels"].float()
            got = gpu(batches[1])["pixels"].float()
            row["max_abs_diff_vs_torchvision"] = (got - ref).abs().max().item()
            row["mean_abs_diff_vs_torchvision"] = (got - ref).abs().mean().item()
        except Exception as err:  # noqa: BLE001
            row["error"] = f"{type(err).__name__}: {err}"[:300]
        rows.append(row)
        print(json.dumps(row), flush=True)

    # The compiled stage-1 step (MSE + KL, compiled blocks, as speed_probe.py's "blocks" variant),
    # alone and fed through the decode thread.
    from speed_probe import prepare
    from vitok.model import ViTok

    torch.manual_seed(0)
    model = ViTok.from_name("S-B/16", channels=16, image_size=args.size).to(device)
    model.amp_dtype = torch.bfloat16
    model.train()
    loss_fn = prepare(model, "blocks", "float32", None, train=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step(pixels):
        loss_fn(to_model_range(pixels)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    fixed = GpuDecoder(args.size, device)(batches[0])["pixels"]
    for _ in range(5):
        step(fixed)
    torch.cuda.synchronize(device)

    def run(source) -> float:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(source())
        torch.cuda.synchronize(device)
        return args.steps * args.batch / (time.perf_counter() - t0)

    base = run(lambda: fixed)
    rows.append({"what": "step", "feed": "fixed batch", "images_per_s": base})
    print(json.dumps(rows[-1]), flush=True)
    for name, fn in decoders.items():
        it = GpuDecoder(args.size, device, decode=fn).ahead(iter(itertools.cycle(batches)))
        for _ in range(3):
            step(next(it)["pixels"])
        rate = run(lambda: next(it)["pixels"])
        rows.append({"what": "step", "feed": f"decode thread ({name})", "images_per_s": rate, "vs_fixed": rate / base})
        print(json.dumps(rows[-1]), flush=True)
    again = run(lambda: fixed)
    rows.append({"what": "step", "feed": "fixed batch (again)", "images_per_s": again})

    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"\n{args.batch} crops of {megapixels:.0f} Mpixel of JPEGs per batch, {args.size} px")
    for row in rows:
        if row["what"] == "decode":
            print(f"decode {row['decoder']:18s} {row.get('decode_ms', float('nan')):7.1f} ms, with crops "
                  f"{row.get('decode_and_crop_ms', float('nan')):7.1f} ms  {row.get('error', '')}")
        elif row["what"] == "step":
            print(f"step   {row['feed']:32s} {row['images_per_s']:7.0f} images/s  {row.get('vs_fixed', 1.0):.3f}")
        else:
            print(row)


if __name__ == "__main__":
    main()
