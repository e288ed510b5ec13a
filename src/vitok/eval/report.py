"""Evaluation reports: report.json, report.md, a grid of worst and best reconstructions, a PSNR histogram."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .evaluate import EvalResult

METRIC_LABELS = {
    "psnr": "PSNR (dB, 8-bit, mean over samples)",
    "ssim": "SSIM (11x11 Gaussian, sigma 1.5, mean over RGB channels)",
    "lpips": "LPIPS (VGG, v0.1, on 8-bit images)",
    "rfid": "rFID (Inception-v3 pool3, pytorch-fid weights)",
    "ris": "rIS (Inception-v3 logits, 10 splits)",
    "rfvd": "rFVD (I3D Kinetics-400 features)",
}


def write_report(result: EvalResult, out: Path, context: dict) -> dict:
    """Write every artefact into `out` and return the JSON document."""
    out.mkdir(parents=True, exist_ok=True)
    document = {
        **context,
        "num_samples": result.num_samples,
        "metrics": result.metrics,
        "not_computed": result.not_computed,
        "skipped_files": result.skipped,
        "seconds": round(result.seconds, 3),
        "samples_per_second": result.num_samples / result.seconds if result.seconds > 0 else None,
        "worst": [{"key": k, "psnr": p} for p, k, _, _ in result.worst],
        "best": [{"key": k, "psnr": p} for p, k, _, _ in result.best],
    }
    if result.plumbing_only:
        document["plumbing_only_random_weights"] = result.plumbing_only
    (out / "report.json").write_text(json.dumps(document, indent=2, default=_jsonable) + "\n")
    (out / "per_sample.jsonl").write_text("".join(
        json.dumps({k: result.per_sample[k][i] for k in result.per_sample}, default=_jsonable) + "\n"
        for i in range(result.num_samples)))
    _plot_extremes(result, out / "worst_best.png")
    _plot_histogram(result.per_sample["psnr"], out / "psnr_histogram.png")
    (out / "report.md").write_text(_markdown(document))
    return document


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _markdown(doc: dict) -> str:
    lines = [f"# Evaluation of {doc.get('checkpoint', 'a tokenizer')}", ""]
    for key in ("data", "model", "image_size", "frames", "num_samples", "seconds"):
        if key in doc:
            lines.append(f"- {key.replace('_', ' ')}: {doc[key]}")
    lines += ["", "| metric | value |", "| --- | --- |"]
    for name, value in doc["metrics"].items():
        lines.append(f"| {METRIC_LABELS.get(name, name)} | {value:.4f} |")
    if doc["not_computed"]:
        lines += ["", "## Not computed", ""]
        lines += [f"- **{name}**: {reason}" for name, reason in doc["not_computed"].items()]
    if doc.get("plumbing_only_random_weights"):
        lines += ["", "Random-weight feature networks were used (plumbing check); their outputs are not metrics."]
    lines += ["", f"## Skipped files: {len(doc['skipped_files'])}", ""]
    lines += [f"- {s['file']}: {s['reason']}" for s in doc["skipped_files"][:50]]
    lines += ["", "![worst and best reconstructions](worst_best.png)", "", "![PSNR histogram](psnr_histogram.png)", ""]
    return "\n".join(lines)


def _plot_extremes(result: EvalResult, path: Path) -> None:
    """Two blocks of (original | reconstruction) pairs: lowest PSNR on the left, highest on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(len(result.worst), len(result.best), 1)
    fig, axes = plt.subplots(rows, 4, figsize=(8, 2.1 * rows), squeeze=False)
    for column, (label, entries) in enumerate((("worst", result.worst), ("best", result.best))):
        for row in range(rows):
            ax_o, ax_r = axes[row, 2 * column], axes[row, 2 * column + 1]
            ax_o.axis("off")
            ax_r.axis("off")
            if row >= len(entries):
                continue
            p, key, orig, recon = entries[row]
            ax_o.imshow(orig.numpy())
            ax_r.imshow(recon.numpy())
            ax_o.set_title(f"{label} {row + 1}: {Path(key).name}", fontsize=7)
            ax_r.set_title(f"reconstruction, {p:.2f} dB", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_histogram(values: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [v for v in values if math.isfinite(v)]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(finite, bins=min(40, max(5, len(finite) // 5)), color="#4c72b0")
    ax.set_xlabel("PSNR (dB)")
    ax.set_ylabel("samples")
    ax.set_title(f"per-sample PSNR, n={len(values)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
