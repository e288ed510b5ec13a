"""What a training run writes besides checkpoints: metrics.jsonl, a log, plots and the final report."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

LOSS_KEYS = ("loss", "rec", "kl", "lpips", "gan_g", "gan_d", "r1", "lecam")
# Plotted beside the losses: the GAN weight actually applied (ramp x backoffs x adaptive weight).
PLOT_KEYS = LOSS_KEYS + ("gan_lambda",)
# Held-out metrics drawn through training (heldout.png) and tabulated in report.md's stage-2 table.
TRACKED_METRICS = ("psnr", "ssim", "ms_ssim", "gmsd", "sharpness", "swd")


def new_run_dir(name: str) -> Path:
    """runs/<name>-<timestamp>/ (a suffix is added if that folder already exists); name must be a plain name."""
    from .rundir import check_run_name

    check_run_name(name)  # "../x" or "a/b" would put the folder outside runs/
    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return path


def _finite(value):
    """JSON has no inf/NaN: such values are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    return json.dumps(_finite(value), allow_nan=False, **kwargs)


def _step_of(line: str) -> float:
    """The step of one metrics.jsonl line; a line cut short by a kill counts as after every step."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return math.inf


class RunLogger:
    """Appends to metrics.jsonl and train.log (rank 0 only); mirrors scalars to TensorBoard if asked."""

    def __init__(self, run_dir: Path, main: bool, tensorboard: bool, start_step: int) -> None:
        self.main, self.writer = main, None
        self.metrics_path, self.log_path = run_dir / "metrics.jsonl", run_dir / "train.log"
        if not main:
            return
        if start_step > 0 and self.metrics_path.exists():
            # A resumed run drops what was logged after its checkpoint, so the log matches the weights.
            kept = [line for line in self.metrics_path.read_text().splitlines() if _step_of(line) <= start_step]
            tmp = self.metrics_path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.metrics_path)
        elif start_step == 0:
            self.metrics_path.write_text("")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step drops events logged after the checkpoint a resumed run starts from.
                self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step or None)
            except ImportError:
                self.warn("train.tensorboard is set but the tensorboard package is not installed "
                          "(pip install tensorboard); logging to metrics.jsonl only")

    def log(self, record: dict) -> None:
        if not self.main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(dumps(record) + "\n")
        if self.writer is not None:
            flat = record.get("eval", {}).get("metrics", {}) if "eval" in record else record
            prefix = "eval/" if "eval" in record else "train/"
            for key, value in flat.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(prefix + key, value, record["step"])

    def warn(self, message: str) -> None:
        if not self.main:
            return
        from tqdm.auto import tqdm

        tqdm.write(f"warning: {message}", file=sys.stderr)
        with open(self.log_path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="train", dynamic_ncols=True, disable=not enabled)


def postfix(record: dict) -> dict:
    """The progress bar's summary: loss terms, images/s and the stage."""
    out = {k: f"{record[k]:.4g}" for k in LOSS_KEYS if k in record}
    out["img/s"] = f"{record['images_per_second']:.1f}"
    if "data_wait" in record:
        out["data wait"] = f"{record['data_wait']:.0%}"
    if "gpu_idle" in record:
        out["gpu idle"] = f"{record['gpu_idle']:.0%}"
    out["stage"] = record["stage"]
    return out


def _frames_of(pixels: torch.Tensor) -> np.ndarray:
    """3×H×W or 3×T×H×W uint8 -> H×W×3 (images) or H×(3W)×3 (first, middle, last frame side by side)."""
    if pixels.dim() == 4:
        t = pixels.shape[1]
        pixels = torch.cat([pixels[:, i] for i in (0, t // 2, t - 1)], dim=2)
    return pixels.permute(1, 2, 0).numpy()


@torch.no_grad()
def reconstruction_grid(model, dataset, device: torch.device, path: Path, count: int = 8) -> None:
    """PNG with originals (left) next to their reconstructions (right) for the first held-out samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.datasets import to_model_range
    from ..metrics.image import psnr, to_uint8

    samples = []
    items = (dataset[i] for i in range(len(dataset))) if hasattr(dataset, "__len__") else iter(dataset)
    for item in items:  # map-style folders, or streamed tar shards
        if "pixels" in item:
            samples.append(item)
        if len(samples) == count:
            break
    if not samples:
        return
    x = to_model_range(torch.stack([s["pixels"] for s in samples]).to(device))
    model.eval()
    x_hat = torch.cat([model(x[i:i + 1], sample=False, check=False)[0] for i in range(len(samples))]).clamp(-1, 1)
    scores = psnr(x, x_hat).tolist()
    recon = to_uint8(x_hat).cpu()
    fig, axes = plt.subplots(len(samples), 2, figsize=(6, 3 * len(samples)), squeeze=False)
    for row, (sample, rec, score) in enumerate(zip(samples, recon, scores)):
        axes[row, 0].imshow(_frames_of(sample["pixels"]))
        axes[row, 0].set_title(Path(sample["key"]).name, fontsize=8)
        axes[row, 1].imshow(_frames_of(rec))
        axes[row, 1].set_title(f"reconstruction, {score:.2f} dB", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def loss_plot(history: list[dict], path: Path) -> None:
    """PNG of every logged loss term against the step, with the stage boundary marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in PLOT_KEYS if any(k in r for r in history)]
    if not keys:
        return
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    boundary = next((r["step"] for r in history if r.get("stage") == 2), None)
    for ax, key in zip(axes[:, 0], keys):
        points = [(r["step"], r[key]) for r in history if key in r and r[key] is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.2)
        if all(p[1] > 0 for p in points):
            ax.set_yscale("log")
        ax.set_ylabel(key)
        if boundary is not None:
            ax.axvline(boundary, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def heldout_plot(state, margin_db: float, path: Path) -> None:
    """PNG of the held-out metrics at every evaluation, with the end of stage 1, the guard's floor,
    its breaches and the exported step marked (state: the guard's GuardState)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = sorted(state.evaluations, key=lambda e: e["step"])
    keys = [k for k in TRACKED_METRICS if any(k in e["metrics"] for e in evals)]
    if not evals or not keys:
        return
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 1.9 * len(keys)), sharex=True, squeeze=False)
    ref = state.reference
    for ax, key in zip(axes[:, 0], keys):
        points = [(e["step"], e["metrics"][key]) for e in evals
                  if isinstance(e["metrics"].get(key), (int, float)) and math.isfinite(e["metrics"][key])]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", lw=1.2)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if ref is not None:
            ax.axvline(ref["step"], color="grey", ls="--", lw=0.8)
            if key == "psnr" and "psnr" in ref["metrics"]:
                ax.axhline(ref["metrics"]["psnr"] - margin_db, color="tab:red", ls=":", lw=1.0,
                           label=f"guard floor ({ref.get('label', 'end of stage 1')} - {margin_db} dB)")
                for event in state.events:
                    ax.plot(event["step"], event["psnr"], "x", color="tab:red")
                ax.legend(fontsize=7, loc="lower left")
    reference = (ref or {}).get("label", "the end of stage 1")
    axes[0, 0].set_title(f"held-out metrics (dashed: {reference})", fontsize=9)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def loss_terms(trainer) -> dict[str, str]:
    """Which loss terms were active, with weights, and why any was not."""
    c = trainer.config.loss
    stage2 = trainer.config.train.stage2_steps > 0
    t = trainer.config.train
    if trainer.model_config.is_v2:
        kl = ("inactive: the latent is deterministic (architecture 'vitok-v2', a LayerNorm bottleneck), so there "
              "is no KL term")
    elif t.stage1_steps > 0:
        kl = f"active in stage 1: beta {c.kl_weight} (mean per latent element)"
    else:
        kl = "inactive: train.stage1_steps = 0 (the encoder is frozen in stage 2)"
    terms = {
        "reconstruction": f"active: {c.reconstruction} x {c.reconstruction_weight}",
        "kl": kl,
        "lpips": (f"active: eta {c.lpips_weight}" if trainer.perceptual is not None
                  else f"inactive: {trainer.perceptual_reason}"),
        "gan": (f"active in stage 2: {c.gan_loss}, lambda {c.gan_weight} (ramped in over {c.gan_warmup_steps} "
                f"steps" + (", times the adaptive weight ||grad rec|| / ||grad GAN|| at the decoder's last layer"
                            if c.adaptive_gan_weight else "") + ")" + (f", R1 {c.r1_weight} every {c.r1_every} steps" if c.r1_weight > 0 else ", no R1")
                + (f", LeCam {c.lecam_weight}" if c.lecam_weight > 0 else "")
                + f"; EMA of the decoder, decay {t.ema_decay}"
                if stage2 else "inactive: train.stage2_steps = 0"),
    }
    return terms


def stage2_summary(trainer) -> dict | None:
    """The guard's record for report.json: reference, every evaluation, breaches and what was done."""
    if trainer.config.train.stage2_steps == 0:
        return None
    g, state = trainer.config.guard, trainer.guard.state
    # Without stage 1 the reference is the starting model (model.init's weights, or the random init).
    start = "the end of stage 1" if trainer.config.train.stage1_steps > 0 else "the initial model (no stage 1)"
    rule = (f"breach: held-out PSNR more than {g.margin_db} dB below {start}; action {g.action}"
            + (f" (x{g.backoff_factor} on lambda and the stage-2 lr, at most {g.max_backoffs} times, then stop)"
               if g.action == "backoff" else ""))
    inactive = (f"inactive: no held-out PSNR of {start} (no held-out set"
                + (", or stage 1 not trained here)" if trainer.config.train.stage1_steps > 0 else ")"))
    return {"guard_rule": rule if state.reference is not None else inactive, "reference_is": start,
            "reference": state.reference, "evaluations": sorted(state.evaluations, key=lambda e: e["step"]),
            "guard_events": state.events, "gan_scale": state.gan_scale, "lr_scale": state.lr_scale}


def write_run_report(trainer, exported_eval: dict, data_info: dict, selection: dict | None = None,
                     final_eval: dict | None = None) -> dict:
    """report.json and report.md in the run folder: metrics of the exported (selected) tokenizer."""
    final_eval = final_eval if final_eval is not None else exported_eval
    config, run_dir = trainer.config, trainer.run_dir
    throughput = [r["images_per_second"] for r in trainer.history if r.get("images_per_second")]
    waits = [r["data_wait"] for r in trainer.history if "data_wait" in r]
    idles = [r["gpu_idle"] for r in trainer.history if "gpu_idle" in r]  # CUDA only: absent elsewhere
    params = trainer.model.num_params()
    init = config.model.init
    document = {
        "run": str(run_dir),
        # With model.init, model.name is not what was trained: the checkpoint's own name (or path) is.
        "model": (trainer.model_config.name or init) if init else config.model.name,
        "init": init or None,
        "architecture": trainer.model_config.architecture,
        "parameters": params,
        "tokens": trainer.model_config.num_tokens,
        "channels": trainer.model_config.channels,
        "steps": trainer.progress.step,
        "stopped_early": trainer.stopped_early,
        "stage1_steps": config.train.stage1_steps,
        "stage2_steps": config.train.stage2_steps,
        "global_batch": config.train.batch_size,
        "world_size": trainer.dist.world,
        "device": str(trainer.device),
        "precision": "bf16" if trainer.amp else "fp32",
        "metrics": exported_eval.get("metrics", {}),
        "not_computed": exported_eval.get("not_computed", {}),
        "num_eval_samples": exported_eval.get("num_samples", 0),
        "exported_step": selection["step"] if selection else trainer.progress.step,
        "selection": {k: v for k, v in selection.items() if k != "metrics"} if selection else None,
        "final_step_metrics": final_eval.get("metrics", {}),
        "stage2": stage2_summary(trainer),
        "loss_terms": loss_terms(trainer),
        "final_losses": {k: v for k, v in (trainer.history[-1] if trainer.history else {}).items() if k in LOSS_KEYS},
        "images_per_second": sum(throughput) / len(throughput) if throughput else None,
        # Share of wall time the training process waited for batches (mean over log windows).
        "data_wait": sum(waits) / len(waits) if waits else None,
        # Share of the GPU's time spent between steps (CUDA only; train/clock.py), mean over windows.
        "gpu_idle": sum(idles) / len(idles) if idles else None,
        "bad_steps": trainer.progress.bad_total,
        "skipped_files": [{"file": f, "reason": r} for f, r in trainer.progress.skipped_files.items()]
        + [s for s in final_eval.get("skipped", []) if s["file"] not in trainer.progress.skipped_files],
        "data": data_info,
        "model_folder": str(run_dir / "model"),
    }
    (run_dir / "report.json").write_text(dumps(document, indent=2) + "\n")
    (run_dir / "report.md").write_text(_markdown(document))
    return document


def _markdown(doc: dict) -> str:
    from ..eval.report import METRIC_LABELS

    lines = [f"# Training report: {doc['model']}", "",
             f"- run folder: `{doc['run']}`; tokenizer: `{doc['model_folder']}`",
             f"- initialised from: `{doc['init']}`" if doc.get("init") else "- initialised at random",
             f"- architecture: {doc.get('architecture', 'vitok')}",
             f"- steps: {doc['steps']} (stage 1: {doc['stage1_steps']}, stage 2: {doc['stage2_steps']}), "
             f"global batch {doc['global_batch']}, {doc['world_size']} process(es) on {doc['device']}, "
             f"{doc['precision']}",
             f"- parameters: {doc['parameters']['total'] / 1e6:.2f}M "
             f"(encoder {doc['parameters']['encoder'] / 1e6:.2f}M, decoder {doc['parameters']['decoder'] / 1e6:.2f}M); "
             f"L = {doc['tokens']} tokens x c = {doc['channels']}",
             *([f"- stopped early: {doc['stopped_early']}"] if doc.get("stopped_early") else []),
             f"- throughput: {doc['images_per_second'] or 0:.1f} samples/s"
             + (f" (waiting for data {doc['data_wait']:.0%} of the time)" if doc.get("data_wait") is not None else "")
             + (f"; GPU idle between steps {doc['gpu_idle']:.0%}" if doc.get("gpu_idle") is not None else "")
             + f"; non-finite steps skipped: {doc['bad_steps']}",
             "", f"## Held-out metrics of the exported tokenizer (step {doc['exported_step']}, "
                 f"{doc['num_eval_samples']} samples)", ""]
    if doc.get("selection"):
        lines += [f"Exported: step {doc['selection']['step']}, chosen by {doc['selection']['reason']}.", ""]
    lines += ["| metric | value |", "| --- | --- |"]
    for name, value in doc["metrics"].items():
        lines.append(f"| {METRIC_LABELS.get(name, name)} | {value:.4f} |")
    if doc["exported_step"] != doc["steps"] and doc.get("final_step_metrics"):
        final = doc["final_step_metrics"]
        lines += ["", f"The last step ({doc['steps']}) was not exported; its metrics: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in final.items() if k in TRACKED_METRICS)]
    if doc["not_computed"]:
        lines += ["", "Not computed:", ""]
        lines += [f"- {name}: {reason}" for name, reason in doc["not_computed"].items()]
    if doc.get("stage2"):
        lines += _stage2_markdown(doc["stage2"])
    lines += ["", "## Loss terms", ""] + [f"- {k}: {v}" for k, v in doc["loss_terms"].items()]
    lines += ["", f"## Skipped files ({len(doc['skipped_files'])})", ""]
    lines += [f"- {s['file']}: {s['reason']}" for s in doc["skipped_files"]] or ["none"]
    lines += ["", "![reconstructions](reconstructions.png)", "", "![losses](losses.png)", ""]
    if doc.get("stage2") and doc["stage2"]["evaluations"]:
        lines += ["![held-out metrics through training](heldout.png)", ""]
    return "\n".join(lines)


def _stage2_markdown(stage2: dict) -> list[str]:
    """The guard's rule, its breaches and the held-out metrics from the end of stage 1 on."""
    lines = ["", "## Stage 2 and the guard", "", f"- rule: {stage2['guard_rule']}"]
    if stage2.get("reference_is"):
        lines.append(f"- reference: {stage2['reference_is']}")
    lines += [f"- step {e['step']}: PSNR {e['psnr']:.2f} dB, {e['drop_db']:.2f} dB below the reference; "
              f"{e['action']}" for e in stage2["guard_events"]] or ["- no breach"]
    ref = stage2["reference"]
    rows = [e for e in stage2["evaluations"] if ref is not None and e["step"] >= ref["step"]]
    keys = [k for k in TRACKED_METRICS if any(k in e["metrics"] for e in rows)]
    if rows and keys:
        lines += ["", "| step | stage | " + " | ".join(keys) + " |", "| --- | --- | " + " | ".join("---" for _ in keys) + " |"]
        for e in rows:
            cells = [f"{e['metrics'][k]:.4f}" if isinstance(e["metrics"].get(k), (int, float)) else "-" for k in keys]
            lines.append(f"| {e['step']} | {e['stage']} | " + " | ".join(cells) + " |")
    return lines
