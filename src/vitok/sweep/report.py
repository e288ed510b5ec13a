"""The sweep's results: a table of every point, fits against log10 of E or of model size, plots.

Written into the sweep folder (any time, from whatever runs have finished)::

    results.csv, results.md    one row per point: E = L·c, L, c, p (q), encoder, decoder,
                               parameters, GFLOPs (2 per multiply-add), status, every metric
    fits.json                  {study: {"x": ..., "metrics": {metric: {n, slope, intercept, r2,
                                quadratic: {a, b, c, r2, curvature, vertex, vertex_log10,
                                vertex_inside, turns, exact}}}}}
    plots/<study>-<metric>.png and .pdf
    plots/e_sweep-recon_vs_generation.png and .pdf   with a generation section: reconstruction
                               and generation against E side by side, as in the paper's figure

With a spec's `generation:` section (generation.py) every row also carries the point's
generation scores (gen_swd, gen_swd_class, gen_class_acc, gfid, gis), the classifier's
held-out accuracy (gen_ceiling, the best gen_class_acc can be), the DiT's steps and seconds,
and gen_status; metrics that could not be computed are listed with the reason. Generation
metrics get the quadratic from three distinct E on (the issue's second law is a curve, and three
points are what a small sweep has; `exact` says when the parabola passes through every point).

The studies are the paper's: `e_sweep` fits each metric against log10(E), `encoder` and
`decoder` against log10 of that side's parameter count. A study is fitted whenever its
variable takes two or more values over the finished points, whatever the spec's `study`.
Only finished points enter the fits, so every fitted point had the same training budget.
The slope is the change per tenfold E (or size); `vertex` is where the quadratic turns,
in the variable's own units (a best E for curves like gFID's), `curvature` its second
derivative 2a in log10 units, `turns` "minimum" or "maximum", `vertex_inside` whether the
turn lies within the measured range (a vertex outside it is an extrapolation, not a best E).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..eval.report import METRIC_LABELS
from ..info import describe
from ..train.config import resolve_model_config
from ..train.report import dumps
from .fits import LinearFit, QuadraticFit, fit_linear, fit_quadratic
from .generation import GENERATION_DIR, GENERATION_ERROR_FILE, SAMPLES_FILE, read_generation_document
from .plots import plot_fit, plot_panels
from .spec import Point, SweepSpec
from .state import read_state

METRIC_ORDER = ("psnr", "ssim", "lpips", "rfid", "ris", "rfvd")
# Metrics the paper (finding 2) or the FID family show as a curve with a best E: their plots add the quadratic.
SECOND_ORDER = ("rfid", "rfvd", "gfid", "gis", "gfvd")
# The generation phase's scores, in the order of its columns; all pixel space, all comparable across points.
GENERATION_METRICS = ("gen_swd", "gen_swd_class", "gen_class_acc", "gfid", "gis")
GENERATION_LABELS = {
    "gen_swd": "gen SWD x1e3 (samples vs held-out real images, Laplacian-pyramid 7x7 patches; lower is "
               "better)",
    "gen_swd_class": "gen SWD x1e3, class mean (gen_swd within each class, averaged over classes; lower is better)",
    "gen_class_acc": "gen class accuracy (of the samples, by a pixel classifier trained on the real training images; higher "
                     "is better)",
    "gfid": "gFID (Inception-v3, samples vs held-out real images; lower is better)",
    "gis": "gIS (Inception-v3; higher is better)",
}
# Reconstruction panels of the side-by-side figure, in order of preference.
RECON_PANELS = ("rfid", "psnr", "ssim", "lpips")


@dataclass(frozen=True)
class StudyAxis:
    """What a study fits against, and what must take two values over the points for it to exist."""

    attribute: str  # the Row attribute whose log10 is x
    label: str
    # Parameter counts move a little with p and c (the patch embedding), so size studies key on the letters.
    varies: Callable[["Row"], object]


STUDY_AXES = {
    "e_sweep": StudyAxis("bottleneck", "E = L·c (latent floats per sample)", lambda row: row.bottleneck),
    "encoder": StudyAxis("params_encoder", "encoder parameters", lambda row: row.point.encoder),
    "decoder": StudyAxis("params_decoder", "decoder parameters", lambda row: row.point.decoder),
}


@dataclass
class Row:
    """One point of the sweep with its model accounting and, once finished, its metrics."""

    point: Point
    status: str
    finished: bool
    tokens: int  # L
    bottleneck: int  # E = L·c
    params_encoder: int
    params_decoder: int
    params_total: int
    gflops_encode: float
    gflops_decode: float
    gflops_total: float
    steps: int | None
    metrics: dict[str, float]  # reconstruction, and generation's once that phase has finished
    gen_status: str | None = None  # None when the sweep has no generation section
    generation: dict | None = None  # generation.json of a finished generation phase

    @property
    def gen_finished(self) -> bool:
        return bool(self.generation and self.generation.get("finished"))

    def label(self, study: str) -> str:
        """What tells this point apart on a study's plot, besides its colour (p)."""
        return {"encoder": self.point.encoder, "decoder": self.point.decoder}.get(study, f"c{self.point.channels}")


def collect_rows(spec: SweepSpec) -> list[Row]:
    """A row for every point: sizes and FLOPs from its config, status and metrics from its folder."""
    rows = []
    for point in spec.points():
        config = spec.point_config(point)
        info = describe(resolve_model_config(config))  # model.init runs: the checkpoint's own sizes
        state = read_state(spec.point_dir(point))
        report = state.report or {}
        metrics = {k: float(v) for k, v in report.get("metrics", {}).items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        row = Row(point, state.describe(), state.finished, info["tokens"], info["bottleneck"],
                  info["params_encoder"], info["params_decoder"], info["params_total"],
                  info["gflops_encode"], info["gflops_decode"], info["gflops_total"], report.get("steps"), metrics)
        if spec.generation is not None:
            row.gen_status, row.generation = generation_state(spec.point_dir(point), state.finished)
            if row.gen_finished:
                found = row.generation.get("metrics", {})
                row.metrics.update({k: float(found[k]) for k in GENERATION_METRICS
                                    if isinstance(found.get(k), (int, float)) and math.isfinite(found[k])})
        rows.append(row)
    return rows


def generation_state(point_dir: Path, tokenizer_finished: bool) -> tuple[str, dict | None]:
    """A point's generation phase in words (the furthest phase its folder shows), and generation.json once done."""
    document = read_generation_document(point_dir)
    if document and document.get("finished"):
        return "done", document
    error = point_dir / GENERATION_ERROR_FILE
    if error.is_file():
        lines = error.read_text().strip().splitlines()
        return f"failed: {lines[0] if lines else 'no reason recorded'}", None
    gen = point_dir / GENERATION_DIR
    if (gen / SAMPLES_FILE).is_file():
        return "sampled, not scored", None
    if (gen / "dit" / "report.json").is_file():
        return "DiT trained, not sampled", None
    if (gen / "dit" / "config.yaml").is_file():
        return "DiT training interrupted", None
    if (gen / "latents").is_dir():
        return "encoding interrupted" if not (gen / "latents" / "index.json").is_file() else "encoded", None
    return ("not started" if tokenizer_finished else "waiting for the tokenizer"), None


def metric_names(rows: list[Row]) -> list[str]:
    """Every metric any finished point has: the usual reconstruction ones, the others, then generation's."""
    found = {m for row in rows for m in row.metrics}
    rest = sorted(found - set(METRIC_ORDER) - set(GENERATION_METRICS))
    return [m for m in METRIC_ORDER if m in found] + rest + [m for m in GENERATION_METRICS if m in found]


def quadratic_from(metric: str) -> int:
    """How many distinct x values a metric needs for its quadratic.

    A parabola through three points fits them exactly (R² = 1 says nothing), so reconstruction
    metrics ask for four; generation's curve is the point of its sweep, so three give it (marked exact)."""
    return 3 if metric in GENERATION_METRICS else 4


def study_points(rows: list[Row], study: str, metric: str) -> tuple[np.ndarray, np.ndarray, list[Row]]:
    """x (the study's variable) and y (the metric) over the finished points that have the metric."""
    attribute = STUDY_AXES[study].attribute
    used = [row for row in rows if row.finished and metric in row.metrics]
    return (np.array([getattr(row, attribute) for row in used], dtype=float),
            np.array([row.metrics[metric] for row in used], dtype=float), used)


def compute_fits(rows: list[Row]) -> dict[str, dict[str, tuple[LinearFit, QuadraticFit | None]]]:
    """{study: {metric: (linear fit, quadratic fit or None)}} in log10 of the study's variable."""
    fits: dict[str, dict] = {}
    for study in STUDY_AXES:
        for metric in metric_names(rows):
            x, y, used = study_points(rows, study, metric)
            if len({STUDY_AXES[study].varies(row) for row in used}) < 2:
                continue
            logx = np.log10(x)
            quadratic = fit_quadratic(logx, y) if len(np.unique(x)) >= quadratic_from(metric) else None
            fits.setdefault(study, {})[metric] = (fit_linear(logx, y), quadratic)
    return fits


def quadratic_summary(quadratic: QuadraticFit, logx: np.ndarray) -> dict:
    """A quadratic's coefficients and where and how it turns, relative to the measured log10 x range."""
    turn = quadratic.extremum_x  # in log10 units; 10**turn overflows a float past ~308
    return {"a": quadratic.a, "b": quadratic.b, "c": quadratic.c, "r2": quadratic.r2,
            "curvature": 2.0 * quadratic.a,
            "vertex": 10.0 ** turn if turn is not None and abs(turn) < 300 else None,
            "vertex_log10": turn,
            "vertex_inside": bool(turn is not None and float(np.min(logx)) <= turn <= float(np.max(logx))),
            "turns": None if quadratic.a == 0 else ("minimum" if quadratic.a > 0 else "maximum"),
            "exact": len(np.unique(logx)) == 3}


def fits_document(fits: dict, rows: list[Row]) -> dict:
    """fits.json's content."""
    document = {}
    for study, by_metric in fits.items():
        metrics = {}
        for metric, (linear, quadratic) in by_metric.items():
            entry = {"n": linear.n, "slope": linear.slope, "intercept": linear.intercept, "r2": linear.r2,
                     "quadratic": None}
            if quadratic is not None:
                x, _, _ = study_points(rows, study, metric)
                entry["quadratic"] = quadratic_summary(quadratic, np.log10(x))
            metrics[metric] = entry
        document[study] = {"x": f"log10({STUDY_AXES[study].label})", "metrics": metrics}
    return document


def write_report(spec: SweepSpec) -> dict:
    """Write results.csv/md, fits.json and the plots into the sweep folder; return what was written."""
    rows = collect_rows(spec)
    metrics = metric_names(rows)
    fits = compute_fits(rows)
    spec.out.mkdir(parents=True, exist_ok=True)
    _write_csv(rows, metrics, spec.out / "results.csv")
    document = fits_document(fits, rows)
    (spec.out / "fits.json").write_text(dumps(document, indent=2) + "\n")
    # Plots are rebuilt from scratch, so none is left over from a study or metric that no longer applies.
    for stale in [*spec.out.glob("plots/*.png"), *spec.out.glob("plots/*.pdf")]:
        stale.unlink()
    plots = []
    for study, by_metric in fits.items():
        for metric, (linear, quadratic) in by_metric.items():
            x, y, used = study_points(rows, study, metric)
            plots += plot_fit(x, y, [r.point.patch_size for r in used], [r.label(study) for r in used], linear,
                              quadratic if metric in SECOND_ORDER + GENERATION_METRICS else None,
                              STUDY_AXES[study].label, short_label(metric), spec.out / "plots" / f"{study}-{metric}")
    if spec.generation is not None:
        plots += _side_by_side(rows, fits.get("e_sweep", {}), spec.out / "plots" / "e_sweep-recon_vs_generation")
    (spec.out / "results.md").write_text(_markdown(spec, rows, metrics, fits, document))
    return {"rows": rows, "fits": fits, "files": [spec.out / "results.csv", spec.out / "results.md",
                                                  spec.out / "fits.json", *plots]}


def _side_by_side(rows: list[Row], fits: dict, stem: Path) -> list[Path]:
    """Reconstruction (lines) and generation (parabolas) against E in one figure; [] before two E values."""
    panels = []
    recon = [m for m in RECON_PANELS if m in fits][:3]
    for group, metrics in (("reconstruction", recon), ("generation", [m for m in GENERATION_METRICS if m in fits])):
        for metric in metrics:
            linear, quadratic = fits[metric]
            x, y, used = study_points(rows, "e_sweep", metric)
            curve = quadratic if (group == "generation" or metric in SECOND_ORDER) and quadratic is not None else None
            panels.append({"title": f"{group}: {short_label(metric)}", "x": x, "y": y,
                           "patch_sizes": [r.point.patch_size for r in used],
                           "labels": [r.label("e_sweep") for r in used],
                           "linear": None if curve is not None else linear, "quadratic": curve,
                           "ylabel": short_label(metric)})
    if not any(p["title"].startswith("generation") for p in panels):
        return []
    return plot_panels(panels, STUDY_AXES["e_sweep"].label, stem)


def short_label(metric: str) -> str:
    """"PSNR" for psnr: the eval report's label without its parenthesised details."""
    return {**METRIC_LABELS, **GENERATION_LABELS}.get(metric, metric).split(" (")[0]


GENERATION_COLUMNS = ("gen_status", *GENERATION_METRICS, "gen_ceiling", "dit_steps", "dit_seconds",
                      "gen_not_computed")


def _columns(rows: list[Row], metrics: list[str]) -> list[str]:
    video = any(row.point.temporal_patch is not None for row in rows)
    generation = any(row.gen_status is not None for row in rows)
    recon = [m for m in metrics if m not in GENERATION_METRICS]
    return ["point", "status", "encoder", "decoder", *(["q"] if video else []), "p", "c", "L", "E",
            "params_encoder", "params_decoder", "params_total", "gflops_encode", "gflops_decode", "gflops_total",
            "steps", *recon, *(GENERATION_COLUMNS if generation else ())]


def _values(row: Row) -> dict:
    p = row.point
    values = {"point": p.name, "status": row.status, "encoder": p.encoder, "decoder": p.decoder,
              "q": p.temporal_patch, "p": p.patch_size, "c": p.channels, "L": row.tokens, "E": row.bottleneck,
              "params_encoder": row.params_encoder, "params_decoder": row.params_decoder,
              "params_total": row.params_total, "gflops_encode": row.gflops_encode,
              "gflops_decode": row.gflops_decode, "gflops_total": row.gflops_total, "steps": row.steps, **row.metrics}
    if row.gen_status is not None:
        values["gen_status"] = row.gen_status
    if row.gen_finished:
        g = row.generation
        values["gen_ceiling"] = (g.get("classifier") or {}).get("val_accuracy")
        values["dit_steps"] = (g.get("dit") or {}).get("steps")
        values["dit_seconds"] = (g.get("dit") or {}).get("seconds")
        values["gen_not_computed"] = " ".join(sorted(g.get("not_computed") or {})) or None
    return values


def _write_csv(rows: list[Row], metrics: list[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_columns(rows, metrics), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in _values(row).items()})


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key.startswith("params_"):
        return f"{value / 1e6:.1f}M"
    if key == "dit_seconds":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown(spec: SweepSpec, rows: list[Row], metrics: list[str], fits: dict, document: dict) -> str:
    config = spec.point_config(spec.points()[0])
    t, d = config.train, config.data
    heldout = (f"data.val_source {d.val_source}" if d.val_source
               else f"{d.holdout} files held out of {d.source or 'the bundled photos'}")
    done = sum(row.finished for row in rows)
    lines = [f"# Sweep {spec.name} (study: {spec.study})", "",
             f"- base config: {spec.base_config}; overrides: {', '.join(f'`{o}`' for o in spec.overrides) or 'none'}",
             f"- budget per point: {t.stage1_steps} + {t.stage2_steps} steps (stage 1 + stage 2) at global batch "
             f"{t.batch_size}, {config.model.image_size}px",
             f"- held-out set (the same for every point): {heldout}, at most {d.eval_limit or 'all'} samples",
             f"- points: {len(rows)}, finished: {done}", "", "## Points", ""]
    columns = _columns(rows, metrics)
    header = [c if c in GENERATION_METRICS else short_label(c) if c in metrics else c for c in columns]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        values = _values(row)
        lines.append("| " + " | ".join(_cell(c, values.get(c)) for c in columns) + " |")
    for study, by_metric in fits.items():
        lines += ["", f"## Study {study}: metrics against log10({STUDY_AXES[study].label})", "",
                  "| metric | n | slope | intercept | R² | quadratic R² |", "| --- | --- | --- | --- | --- | --- |"]
        for metric, (linear, quadratic) in by_metric.items():
            q = f"{quadratic.r2:.3f}" if quadratic is not None else ""
            lines.append(f"| {short_label(metric)} | {linear.n} | {linear.slope:.4g} | {linear.intercept:.4g} "
                         f"| {linear.r2:.3f} | {q} |")
        lines.append("")
        lines += [f"![{study} {metric}](plots/{study}-{metric}.png)" for metric in by_metric]
    if not fits:
        lines += ["", "No fits yet: a study needs finished points at two or more values of its variable."]
    if spec.generation is not None:
        lines += _generation_markdown(spec, rows, document)
    return "\n".join(lines) + "\n"


def _generation_markdown(spec: SweepSpec, rows: list[Row], document: dict) -> list[str]:
    """The generation section of results.md; its quadratic fits are fits.json's (`document`)."""
    g = spec.generation
    s = g.sampler
    done = [row for row in rows if row.gen_finished]
    lines = ["", "## Generation (the second law)", "",
             f"- every point: a DiT trained on its latents of {g.data} ({', '.join(g.dit) or 'the defaults'}), "
             f"{g.samples_per_class} samples per class ({s.method}, {s.steps} steps, cfg {s.cfg}, seed {g.seed}), "
             f"decoded and scored in pixel space against {g.val_data or 'the held-out crops'}",
             f"- points with generation scores: {len(done)} of {len(rows)}"]
    ceilings = {round(float(r.generation["classifier"]["val_accuracy"]), 6) for r in done
                if isinstance((r.generation.get("classifier") or {}).get("val_accuracy"), (int, float))}
    if ceilings:
        lines.append(f"- classifier accuracy on held-out real images (the ceiling of gen_class_acc): "
                     f"{', '.join(f'{c:.3f}' for c in sorted(ceilings))}")
    steps = {(r.generation.get("dit") or {}).get("steps") for r in done}
    if len(steps) > 1:
        lines.append(f"- the DiTs stopped at different steps ({', '.join(str(x) for x in sorted(steps))}): "
                     f"a time budget, so points with more steps had more training")
    reasons = {}
    for row in done:
        for name, why in (row.generation.get("not_computed") or {}).items():
            reasons.setdefault(name, why)
    for name, why in reasons.items():
        lines.append(f"- {name} not computed: {why}")
    lines += ["", "| metric | meaning |", "| --- | --- |"]
    lines += [f"| {m} | {GENERATION_LABELS[m]} |" for m in GENERATION_METRICS if m not in reasons]
    fitted = document.get("e_sweep", {}).get("metrics", {})
    quadratics = [(m, fitted[m]) for m in GENERATION_METRICS if (fitted.get(m) or {}).get("quadratic") is not None]
    if quadratics:
        lines += ["", "Quadratic fits against log10(E):", "",
                  "| metric | n | curvature 2a | turns at E | inside the range | R² |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for metric, entry in quadratics:
            q = entry["quadratic"]
            vertex = f"{q['vertex']:.4g} ({q['turns']})" if q["vertex"] is not None else "never"
            exact = " (exact: 3 points)" if q["exact"] else ""
            lines.append(f"| {metric} | {entry['n']} | {q['curvature']:.4g} | {vertex} | "
                         f"{'yes' if q['vertex_inside'] else 'no'} | {q['r2']:.3f}{exact} |")
    if (spec.out / "plots" / "e_sweep-recon_vs_generation.png").is_file():
        lines += ["", "![reconstruction and generation against E](plots/e_sweep-recon_vs_generation.png)"]
    return lines
