"""The converted v2 fixture on the GPU: vitok's outputs against the authors' reference numbers.

    PYTHONPATH=src python benchmarks/v2_gpu_check.py --out v2_gpu_check.json

The reference numbers (tests/model/fixtures/vitok_v2) were made on a CPU in float32. Here the
converted model runs on CUDA in float32 (TF32 matmuls off) and under bf16 autocast (vitok's
training and inference precision on GPUs): max |diff| of the latents and decoded patches, and
the PSNR of the decoded image against the reference's decoded image (how far bf16 moves it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "model"))
from test_vitok_v2 import FIXTURE, load_input, patches_of  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from vitok import ViTok  # noqa: E402
from vitok.model import vitok_v2  # noqa: E402


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two images in [-1, 1] (peak-to-peak 2)."""
    mse = float(((a.clamp(-1, 1) - b.clamp(-1, 1)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="v2_gpu_check.json")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    with tempfile.TemporaryDirectory() as tmp:
        vitok_v2.convert(FIXTURE, tmp, image_size=64)
        model = ViTok.from_pretrained(tmp, device="cuda")
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "runs": {}}
    for label, amp in (("float32", None), ("bf16 autocast", torch.bfloat16)):
        model.amp_dtype = amp
        rows = []
        for i in range(2):
            x = load_input(i).cuda()
            H, W = x.shape[-2:]
            p = model.config.patch_size
            n = math.ceil(H / p) * math.ceil(W / p)
            with torch.no_grad():
                z = model.encode(x).mode()
                whole = model.decode(z, size=(math.ceil(H / p) * p, math.ceil(W / p) * p))
            ref_z = expected["z"][i, :n].cuda()
            ref_patches = expected["out_patches"][i, :n].cuda()
            ref_image = F.fold(ref_patches.T[None], whole.shape[-2:], p, stride=p)[..., :H, :W]
            rows.append({"image": f"input_{i}.png ({W}x{H})",
                         "z_max_abs_diff": float((z[0] - ref_z).abs().max()),
                         "patches_max_abs_diff": float((patches_of(whole.float(), p) - ref_patches).abs().max()),
                         "image_psnr_vs_reference_db": psnr(whole[..., :H, :W].float(), ref_image)})
        result["runs"][label] = rows
        print(label, json.dumps(rows, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
