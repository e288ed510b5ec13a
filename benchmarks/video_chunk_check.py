"""Chunked against whole-clip reconstruction of real videos: PSNR, temporal RMSE, chunk-edge ratio.

    python benchmarks/video_chunk_check.py MODEL_FOLDER VIDEO... --out OUT [--size 64] [--frames 0]
        [--chunk 0] [--overlap 0] [--device cpu]

For every video (its first --frames frames, default all, cut to whole tubelets; each frame resized
and centre-cropped to --size): three reconstructions through the model, posterior mean:
  whole     every frame at once (tiling=None: attention over the whole clip)
  latent    temporal chunks blended in latent space, then decoded in chunks (encode/decode tiling)
  stream    vitok reconstruct's streaming path: each chunk encoded and decoded, blended in pixels
Chunks default to the model's clip length with a quarter overlap. For each: PSNR (mean over frames),
temporal RMSE and, at the transitions that cross a chunk edge against the others, the chunk-edge
ratio (metrics/temporal.py); the whole-clip reconstruction is measured at the same transitions as
the baseline where no chunk can be. Writes OUT/video_chunks.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vitok.data.video import iter_frames
from vitok.eval.video_stream import reconstruct_video
from vitok.metrics.image import psnr
from vitok.metrics.temporal import temporal_report
from vitok.model import ViTok
from vitok.model.tiling import Tiling, default_overlap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=0, help="frame size (default: the model's)")
    ap.add_argument("--frames", type=int, default=0, help="use only the first N frames (default all)")
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--overlap", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    model = ViTok.from_pretrained(args.model, device=device)
    c = model.config
    size = args.size or c.image_size
    chunk = args.chunk or c.frames
    overlap = args.overlap or default_overlap(chunk, c.temporal_patch)
    rows = []
    for video in args.videos:
        frames = np.stack(list(iter_frames(video, size=size, limit=args.frames or None)))
        frames = frames[:len(frames) // c.temporal_patch * c.temporal_patch]
        x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float().div(127.5).sub(1).to(device)
        T = x.shape[2]
        row = {"video": Path(video).name, "frames": T, "size": size, "chunk": chunk, "overlap": overlap}
        with torch.no_grad():
            outs = {}
            for name, tiling in (("whole", None), ("latent", Tiling(chunk=chunk, chunk_overlap=overlap))):
                z = model.encode(x, check=False, tiling=tiling).mode()
                outs[name] = model.decode(z, size=tuple(x.shape[2:]), check=False, tiling=tiling).clamp(-1, 1)
        for name, x_hat in outs.items():
            report = temporal_report(x.cpu(), x_hat.cpu(), chunk=chunk, overlap=overlap)
            row[name] = {"psnr": float(psnr(x.transpose(1, 2).flatten(0, 1).cpu(),
                                             x_hat.transpose(1, 2).flatten(0, 1).cpu()).mean()),
                         **{k: report[k] for k in ("temporal_rmse", "border_rmse", "inside_rmse", "border_ratio")
                            if k in report}}
        stream = reconstruct_video(model, video, None, size=size, limit=T, chunk=chunk, overlap=overlap,
                                   device=device)
        row["stream"] = {k: stream[k] for k in ("psnr", "temporal_rmse", "border_rmse", "inside_rmse", "border_ratio")
                         if k in stream}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "video_chunks.json").write_text(json.dumps({"model": args.model, "device": str(device),
                                                        "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
