"""Tiled against untiled encode/decode on real high-resolution photos: PSNR, seam ratio, peak memory, time.

    python benchmarks/tiling_check.py MODEL_FOLDER LARGE_PHOTO... --out OUT [--sizes 512,1024,2048,4096]
        [--tile 0] [--overlap 0] [--device cuda]

For every size S (a centre crop of S x S pixels, or S x the photo's height when it is shorter: the
photos are never upsampled) and every photo large enough: the reconstruction through the model
untiled (whole-image attention, tiling=None) and tiled (tiles of the model's training size,
overlap a quarter of it, unless --tile/--overlap), each timed (CUDA-synchronised, after one
warm-up) with its peak GPU memory; PSNR of each against the photo, PSNR of tiled against untiled,
and the seam ratio (metrics/seams.py: error within 2 px of the tile edges over error elsewhere)
of both, the untiled one as the same measure where no seam can be. Writes OUT/tiling.json and,
for the largest size, OUT/tiled_crop.png (a 256 px corner of the photo, its tiled
reconstruction, 4x its error, and the same error with the tile edges in red: a seam would show as
a line of larger error along them). Untiled runs that do not fit are recorded as out of memory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitok.data.images import load_image
from vitok.metrics.image import psnr
from vitok.metrics.seams import border_mask, seam_ratio
from vitok.model import ViTok
from vitok.model.tiling import Tiling, default_overlap


def timed(fn, device: torch.device, repeats: int = 1):
    """(result, seconds per call, peak memory in bytes) after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return out, seconds, peak


def crop(img: np.ndarray, size: int, p: int) -> np.ndarray | None:
    h, w = img.shape[:2]
    if max(h, w) < size:
        return None
    side_h, side_w = min(h, size) // p * p, min(w, size) // p * p
    top, left = (h - side_h) // 2, (w - side_w) // 2
    return img[top:top + side_h, left:left + side_w]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("photos", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", default="512,1024,2048,4096")
    ap.add_argument("--tile", type=int, default=0, help="tile size in px (default: the model's training size)")
    ap.add_argument("--overlap", type=int, default=0, help="overlap in px (default: a quarter of the tile)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on the GPU")
    ap.add_argument("--max-untiled-tokens", type=int, default=0,
                    help="skip the untiled run above this many tokens (0: always run it; a CPU needs a limit)")
    args = ap.parse_args()
    device = torch.device(args.device)
    model = ViTok.from_pretrained(args.model, device=device)
    if args.bf16 and device.type == "cuda":
        model.amp_dtype = torch.bfloat16
    p = model.config.patch_size
    tile = args.tile or model.config.image_size
    overlap = args.overlap or default_overlap(tile, p)
    tiling = Tiling(tile_size=tile, overlap=overlap)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, picture = [], None
    for size in [int(s) for s in args.sizes.split(",")]:
        for path in args.photos:
            img = crop(load_image(path), size, p)
            if img is None:
                continue
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(127.5).sub(1).to(device)
            row = {"photo": Path(path).name, "size": size, "height": img.shape[0], "width": img.shape[1],
                   "tokens": (img.shape[0] // p) * (img.shape[1] // p), "tile": tile, "overlap": overlap}

            def run(t):
                with torch.no_grad():
                    z = model.encode(x, check=False, tiling=t).mode()
                    return model.decode(z, size=tuple(x.shape[-2:]), check=False, tiling=t).clamp(-1, 1)

            tiled, row["tiled_seconds"], row["tiled_peak_bytes"] = timed(lambda: run(tiling), device)
            row["tiled_psnr"] = float(psnr(x, tiled)[0])
            row["tiled_seam_ratio"] = seam_ratio(x, tiled, tile, overlap)
            try:
                if args.max_untiled_tokens and row["tokens"] > args.max_untiled_tokens:
                    raise MemoryError("skipped: above --max-untiled-tokens")
                whole, row["untiled_seconds"], row["untiled_peak_bytes"] = timed(lambda: run(None), device)
                row["untiled_psnr"] = float(psnr(x, whole)[0])
                row["untiled_seam_ratio"] = seam_ratio(x, whole, tile, overlap)
                row["tiled_vs_untiled_psnr"] = float(psnr(whole, tiled)[0])
            except torch.OutOfMemoryError:
                row["untiled"] = "out of memory"
                torch.cuda.empty_cache()
            except MemoryError as err:
                row["untiled"] = str(err)
            rows.append(row)
            print(json.dumps(row), flush=True)
            (out / "tiling.json").write_text(json.dumps({"model": args.model, "device": str(device),
                                                         "torch": torch.__version__, "rows": rows}, indent=2))
            picture = (x, tiled, row)
    if picture is not None:
        x, tiled, row = picture
        side = min(256, row["height"], row["width"])

        def crop_u8(t):
            return ((t[0, :, :side, :side] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()

        a, b = crop_u8(x), crop_u8(tiled)
        err = (np.abs(a.astype(np.int16) - b.astype(np.int16)) * 4).clip(0, 255).astype(np.uint8)
        edges = border_mask(row["height"], row["width"], tile, overlap, 1)[:side, :side].numpy()
        marked = err.copy()
        marked[edges] = [255, 0, 0]
        gap = np.full((side, 4, 3), 255, np.uint8)
        Image.fromarray(np.concatenate([a, gap, b, gap, err, gap, marked], axis=1)).save(out / "tiled_crop.png")

if __name__ == "__main__":
    main()
