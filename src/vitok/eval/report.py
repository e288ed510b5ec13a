"""Evaluation reports: report.json, report.md, a grid of worst and best reconstructions, a PSNR histogram.

report.json holds `metrics` (requested metrics that were computed), `not_computed` (requested
metrics left out, each with the reason), `notes` (caveats on reported numbers, e.g. rFVD on clips
other than 16 frames) and `psnr_infinite`: how many reconstructions equal their original exactly,
whose PSNR is infinite and is left out of the PSNR mean. Both JSON files are strict JSON: a
non-finite number (such an infinite per-sample PSNR in per_sample.jsonl) is written as null.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .evaluate import RIS_SPLITS, EvalResult

METRIC_LABELS = {
    "psnr": "PSNR (dB, 8-bit, mean over samples with a finite PSNR)",
    "ssim": "SSIM (11x11 Gaussian, sigma 1.5, mean over RGB channels)",
    "ms_ssim": "MS-SSIM (5 scales, standard weights, mean over RGB channels; higher is better)",
    "gmsd": "GMSD (gradient magnitude similarity deviation on luma; lower is better)",
    "sharpness": "sharpness ratio (high-frequency energy, reconstructions / originals; 1 = as sharp)",
    "swd": "SWD x1e3 (Laplacian-pyramid 7x7 patches, mean over levels; lower is better)",
    "lpips": "LPIPS (VGG, v0.1, on 8-bit images)",
    "rfid": "rFID (Inception-v3 pool3, pytorch-fid weights)",
    "ris": f"rIS (Inception-v3 logits, {RIS_SPLITS} splits)",
    "rfvd": "rFVD (I3D Kinetics-400 features)",
    "temporal": "temporal RMSE (error of the frame-to-frame change, 8-bit levels; lower is better)",
}


def report_document(result: EvalResult, context: dict) -> dict:
    """The report as a dict: the context, the metrics, what was not computed and why, and the examples."""
    document = {
        **context,
        "num_samples": result.num_samples,
        "metrics": result.metrics,
        "not_computed": result.not_computed,
        "notes": result.notes,
        "psnr_infinite": result.psnr_infinite,
        "skipped_files": result.skipped,
        "seconds": round(result.seconds, 3),
        "samples_per_second": result.num_samples / result.seconds if result.seconds > 0 else None,
        "worst": [{"key": k, "psnr": p} for p, k, _, _ in result.worst],
        "best": [{"key": k, "psnr": p} for p, k, _, _ in result.best],
    }
    if result.swd_levels:
        document["swd_levels"] = result.swd_levels
    if result.plumbing_only:
        document["plumbing_only_random_weights"] = result.plumbing_only
    return document


def write_report(result: EvalResult, out: Path, context: dict) -> dict:
    """Write every artefact into `out` and return the JSON document."""
    out.mkdir(parents=True, exist_ok=True)
    document = report_document(result, context)
    (out / "report.json").write_text(_dumps(document, indent=2) + "\n")
    (out / "per_sample.jsonl").write_text("".join(
        _dumps({k: result.per_sample[k][i] for k in result.per_sample}) + "\n"
        for i in range(result.num_samples)))
    _plot_extremes(result, out / "worst_best.png")
    _plot_histogram(result.per_sample["psnr"], out / "psnr_histogram.png")
    (out / "report.md").write_text(_markdown(document))
    return document


def _dumps(value, indent: int | None = None) -> str:
    """Strict JSON (allow_nan=False), with non-finite floats written as null."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def _finite(value):
    """`value` with every non-finite float inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _markdown(doc: dict) -> str:
    lines = [f"# Evaluation of {doc.get('checkpoint', 'a tokenizer')}", ""]
    for key in ("data", "model", "image_size", "frames", "num_samples", "seconds"):
        if key in doc:
            lines.append(f"- {key.replace('_', ' ')}: {doc[key]}")
    if doc["psnr_infinite"]:
        lines.append(f"- reconstructions identical to the original (infinite PSNR, left out of the PSNR mean): "
                     f"{doc['psnr_infinite']}")
    lines += ["", "| metric | value |", "| --- | --- |"]
    for name, value in doc["metrics"].items():
        label = METRIC_LABELS.get(name, name)
        if name == "ris" and doc.get("ris_splits", RIS_SPLITS) != RIS_SPLITS:
            label = f"rIS (Inception-v3 logits, {doc['ris_splits']} splits)"
        lines.append(f"| {label} | {value:.4f} |")
    if doc["notes"]:
        lines += ["", "## Notes", ""]
        lines += [f"- **{name}**: {note}" for name, note in doc["notes"].items()]
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
    infinite = f", {len(values) - len(finite)} identical (infinite) not shown" if len(finite) < len(values) else ""
    ax.set_title(f"per-sample PSNR, n={len(values)}{infinite}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
