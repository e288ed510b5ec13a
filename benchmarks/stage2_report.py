"""Summarise benchmarks/stage2_check.sh: the metrics table and 2x-zoom crops (original | stage 1 | stage 2).

    python benchmarks/stage2_report.py WORK --channels 16 128 --variants defaults fixed \
        --photos PHOTOS/val --out WORK/summary [--device cuda]

WORK holds c{c}-stage1/ (a stage-1 run) and c{c}-{variant}/ (that run continued by a stage 2) for
each c and variant. The table has, per c and variant, the held-out metrics at the end of stage 1
(the guard's reference), at the last stage-2 step, and of the exported (selected) checkpoint, and
whether the issue's target holds: stage 2 costs at most 1.0 dB PSNR and moves both the sharpness
ratio (towards 1) and SWD (down). Crops: for each held-out photo (centre-cropped to the model's
size, as the evaluation does), the 96x96 window with the most high-frequency energy in the
original, shown at 2x (nearest neighbour) for the original and every tokenizer.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

COLUMNS = ("psnr", "ssim", "ms_ssim", "gmsd", "sharpness", "swd")
MARGIN_DB = 1.0  # the target: stage 2 costs at most this much PSNR


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def target_met(reference: dict, after: dict) -> tuple[bool, str]:
    """The issue's target for one stage-2 result against its end of stage 1, with the reasons."""
    reasons, ok = [], True
    drop = reference["psnr"] - after["psnr"]
    if drop > MARGIN_DB:
        ok = False
        reasons.append(f"PSNR {-drop:+.2f} dB")
    if "sharpness" in after and "sharpness" in reference:
        if abs(math.log(after["sharpness"])) >= abs(math.log(reference["sharpness"])):
            ok = False
            reasons.append("sharpness not closer to 1")
    if "swd" in after and "swd" in reference and after["swd"] >= reference["swd"]:
        ok = False
        reasons.append("SWD not lower")
    return ok, "; ".join(reasons) or f"PSNR {-drop:+.2f} dB, sharpness closer to 1, lower SWD"


def table(work: Path, channels: list[int], variants: list[str]) -> tuple[str, dict]:
    """The markdown table and the same numbers as a dict."""
    lines = ["| c | variant | point | step | " + " | ".join(COLUMNS) + " | target |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " | --- |"]
    data = {}
    for c in channels:
        for variant in variants:
            path = work / f"c{c}-{variant}" / "report.json"
            if not path.is_file():
                lines.append(f"| {c} | {variant} | no report (run failed or cut) | | " + " | " * len(COLUMNS))
                continue
            doc = json.loads(path.read_text())
            stage2 = doc.get("stage2") or {}
            ref = (stage2.get("reference") or {}).get("metrics", {})
            rows = [("end of stage 1", (stage2.get("reference") or {}).get("step"), ref),
                    ("end of stage 2", doc["steps"], doc["final_step_metrics"]),
                    ("exported", doc["exported_step"], doc["metrics"])]
            data[f"c{c}-{variant}"] = {"rows": rows, "guard_events": stage2.get("guard_events", []),
                                       "selection": doc.get("selection"), "stopped_early": doc.get("stopped_early"),
                                       "images_per_second": doc.get("images_per_second")}
            for point, step, metrics in rows:
                verdict = ""
                if point != "end of stage 1" and ref and "psnr" in metrics:
                    ok, why = target_met(ref, metrics)
                    verdict = ("met: " if ok else "not met: ") + why
                lines.append(f"| {c} | {variant} | {point} | {step} | "
                             + " | ".join(_fmt(metrics.get(k)) for k in COLUMNS) + f" | {verdict} |")
    return "\n".join(lines) + "\n", data


def _window(image: torch.Tensor, size: int = 96, stride: int = 32) -> tuple[int, int]:
    """Top-left corner of the size x size window with the most high-frequency energy."""
    from vitok.metrics.sharpness import high_frequency_energy

    h, w = image.shape[-2:]
    best, corner = -1.0, (0, 0)
    for y in range(0, h - size + 1, stride):
        for x in range(0, w - size + 1, stride):
            energy = float(high_frequency_energy(image[None, :, y:y + size, x:x + size])[0])
            if energy > best:
                best, corner = energy, (y, x)
    return corner


@torch.no_grad()
def crops(work: Path, c: int, variants: list[str], photos: str, device: str, path: Path, count: int = 6) -> None:
    """One row per held-out photo: original | stage 1 | each variant's exported stage 2, 2x zoom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitok import ViTok
    from vitok.data.datasets import open_dataset, to_model_range
    from vitok.metrics.image import to_uint8

    folders = [("stage 1", work / f"c{c}-stage1" / "model")]
    folders += [(f"stage 2 ({v})", work / f"c{c}-{v}" / "model") for v in variants]
    folders = [(label, f) for label, f in folders if (f / "config.json").is_file()]
    models = [(label, ViTok.from_pretrained(f, device=device)) for label, f in folders]
    if not models:
        return
    dataset = open_dataset(photos, models[0][1].config.image_size, upsample=True)
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    items = [item for item in items if "pixels" in item]
    columns = 1 + len(models)
    fig, axes = plt.subplots(len(items), columns, figsize=(2.4 * columns, 2.5 * len(items)), squeeze=False)
    for row, item in enumerate(items):
        x = to_model_range(item["pixels"][None].to(device))
        y0, x0 = _window(x[0])
        tiles = [("original", x)]
        for label, model in models:
            tiles.append((label, model(x, sample=False, check=False)[0].clamp(-1, 1)))
        for col, (label, image) in enumerate(tiles):
            crop = to_uint8(image[0, :, y0:y0 + 96, x0:x0 + 96]).permute(1, 2, 0).cpu()
            crop = crop.repeat_interleave(2, 0).repeat_interleave(2, 1)  # 2x, nearest neighbour
            ax = axes[row, col]
            ax.imshow(crop.numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=8)
            if col == 0:
                ax.set_ylabel(Path(item["key"]).stem[:24], fontsize=6)
    fig.suptitle(f"S-B/16, c={c}: 96x96 crops at 2x", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--channels", type=int, nargs="+", required=True)
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--photos", required=True, help="the held-out image folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    text, data = table(args.work, args.channels, args.variants)
    (args.out / "table.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
    print(text)
    for c in args.channels:
        crops(args.work, c, args.variants, args.photos, args.device, args.out / f"crops_c{c}.png")


if __name__ == "__main__":
    main()
