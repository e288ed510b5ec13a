"""The sweep's results: a table of every point, fits against log10 of E or of model size, plots.

Written into the sweep folder (any time, from whatever runs have finished)::

    results.csv, results.md    one row per point: E = L·c, L, c, p (q), encoder, decoder,
                               parameters, GFLOPs (2 per multiply-add), status, every metric
    fits.json                  {study: {"x": ..., "metrics": {metric: {n, slope, intercept, r2,
                                quadratic: {a, b, c, r2, vertex}}}}}
    plots/<study>-<metric>.png and .pdf

The studies are the paper's: `e_sweep` fits each metric against log10(E), `encoder` and
`decoder` against log10 of that side's parameter count. A study is fitted whenever its
variable takes two or more values over the finished points, whatever the spec's `study`.
Only finished points enter the fits, so every fitted point had the same training budget.
The slope is the change per tenfold E (or size); `vertex` is where the quadratic turns,
in the variable's own units (a best E for curves like gFID's).
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
from ..model import config_from_name
from ..train.report import dumps
from .fits import LinearFit, QuadraticFit, fit_linear, fit_quadratic
from .plots import plot_fit
from .spec import Point, SweepSpec
from .state import read_state

METRIC_ORDER = ("psnr", "ssim", "lpips", "rfid", "ris", "rfvd")
# Metrics the paper (finding 2) or the FID family show as a curve with a best E: their plots add the quadratic.
SECOND_ORDER = ("rfid", "rfvd", "gfid", "gis", "gfvd")
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
    metrics: dict[str, float]

    def label(self, study: str) -> str:
        """What tells this point apart on a study's plot, besides its colour (p)."""
        return {"encoder": self.point.encoder, "decoder": self.point.decoder}.get(study, f"c{self.point.channels}")


def collect_rows(spec: SweepSpec) -> list[Row]:
    """A row for every point: sizes and FLOPs from its config, status and metrics from its folder."""
    rows = []
    for point in spec.points():
        config = spec.point_config(point)
        info = describe(config_from_name(config.model.name, **config.model_overrides()))
        state = read_state(spec.point_dir(point))
        report = state.report or {}
        metrics = {k: float(v) for k, v in report.get("metrics", {}).items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        rows.append(Row(point, state.describe(), state.finished, info["tokens"], info["bottleneck"],
                        info["params_encoder"], info["params_decoder"], info["params_total"],
                        info["gflops_encode"], info["gflops_decode"], info["gflops_total"],
                        report.get("steps"), metrics))
    return rows


def metric_names(rows: list[Row]) -> list[str]:
    """Every metric any finished point has, the usual ones first."""
    found = {m for row in rows for m in row.metrics}
    return [m for m in METRIC_ORDER if m in found] + sorted(found - set(METRIC_ORDER))


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
            # A parabola through three points fits them exactly (R² = 1 says nothing): ask for four.
            quadratic = fit_quadratic(logx, y) if len(np.unique(x)) >= 4 else None
            fits.setdefault(study, {})[metric] = (fit_linear(logx, y), quadratic)
    return fits


def fits_document(fits: dict) -> dict:
    """fits.json's content."""
    document = {}
    for study, by_metric in fits.items():
        metrics = {}
        for metric, (linear, quadratic) in by_metric.items():
            entry = {"n": linear.n, "slope": linear.slope, "intercept": linear.intercept, "r2": linear.r2,
                     "quadratic": None}
            if quadratic is not None:
                turn = quadratic.extremum_x  # in log10 units; 10**turn overflows a float past ~308
                entry["quadratic"] = {"a": quadratic.a, "b": quadratic.b, "c": quadratic.c, "r2": quadratic.r2,
                                      "vertex": 10.0 ** turn if turn is not None and abs(turn) < 300 else None}
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
    (spec.out / "fits.json").write_text(dumps(fits_document(fits), indent=2) + "\n")
    # Plots are rebuilt from scratch, so none is left over from a study or metric that no longer applies.
    for stale in [*spec.out.glob("plots/*.png"), *spec.out.glob("plots/*.pdf")]:
        stale.unlink()
    plots = []
    for study, by_metric in fits.items():
        for metric, (linear, quadratic) in by_metric.items():
            x, y, used = study_points(rows, study, metric)
            plots += plot_fit(x, y, [r.point.patch_size for r in used], [r.label(study) for r in used], linear,
                              quadratic if metric in SECOND_ORDER else None, STUDY_AXES[study].label,
                              short_label(metric), spec.out / "plots" / f"{study}-{metric}")
    (spec.out / "results.md").write_text(_markdown(spec, rows, metrics, fits))
    return {"rows": rows, "fits": fits, "files": [spec.out / "results.csv", spec.out / "results.md",
                                                  spec.out / "fits.json", *plots]}


def short_label(metric: str) -> str:
    """"PSNR" for psnr: the eval report's label without its parenthesised details."""
    return METRIC_LABELS.get(metric, metric).split(" (")[0]


def _columns(rows: list[Row], metrics: list[str]) -> list[str]:
    video = any(row.point.temporal_patch is not None for row in rows)
    return ["point", "status", "encoder", "decoder", *(["q"] if video else []), "p", "c", "L", "E",
            "params_encoder", "params_decoder", "params_total", "gflops_encode", "gflops_decode", "gflops_total",
            "steps", *metrics]


def _values(row: Row) -> dict:
    p = row.point
    return {"point": p.name, "status": row.status, "encoder": p.encoder, "decoder": p.decoder, "q": p.temporal_patch,
            "p": p.patch_size, "c": p.channels, "L": row.tokens, "E": row.bottleneck,
            "params_encoder": row.params_encoder, "params_decoder": row.params_decoder,
            "params_total": row.params_total, "gflops_encode": row.gflops_encode,
            "gflops_decode": row.gflops_decode, "gflops_total": row.gflops_total, "steps": row.steps, **row.metrics}


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
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown(spec: SweepSpec, rows: list[Row], metrics: list[str], fits: dict) -> str:
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
    header = [short_label(c) if c in metrics else c for c in columns]
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
    return "\n".join(lines) + "\n"
