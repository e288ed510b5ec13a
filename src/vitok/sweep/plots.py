"""Figures of a sweep: the points on a log x axis, coloured by p, with the fits.

One figure per study and metric (plot_fit), and one of several metrics side by side (plot_panels):
reconstruction and generation against E, as in the paper's figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fits import LinearFit, QuadraticFit


def plot_fit(x: np.ndarray, y: np.ndarray, patch_sizes: list[int], labels: list[str], linear: LinearFit,
             quadratic: QuadraticFit | None, xlabel: str, ylabel: str, stem: Path) -> list[Path]:
    """Write stem.png and stem.pdf; the fits are in log10(x), drawn over the points' range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    _draw(ax, x, y, patch_sizes, labels, linear, quadratic)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, stem)


def plot_panels(panels: list[dict], xlabel: str, stem: Path) -> list[Path]:
    """Write stem.png and stem.pdf: one panel per dict (title, x, y, patch_sizes, labels, linear, quadratic,
    ylabel; either fit may be None), in one row sharing the x label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        _draw(ax, panel["x"], panel["y"], panel["patch_sizes"], panel["labels"], panel["linear"], panel["quadratic"])
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(panel["ylabel"])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    return _save(fig, stem)


def _draw(ax, x, y, patch_sizes: list[int], labels: list[str], linear: LinearFit | None,
          quadratic: QuadraticFit | None) -> None:
    """The points (coloured by p, labelled) and the fits, in log10(x), drawn over the points' range."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    colours = plt.get_cmap("tab10")
    for i, p in enumerate(sorted(set(patch_sizes))):
        mine = np.array([q == p for q in patch_sizes])
        ax.scatter(x[mine], y[mine], color=colours(i % 10), label=f"p = {p}", zorder=3)
    # Colour gives p; the label gives the rest (c, or a size letter), so every point can be told apart.
    for xi, yi, label in zip(x, y, labels):
        ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7, color="0.35")
    dense = np.logspace(np.log10(x.min()), np.log10(x.max()), 200)
    if linear is not None:
        ax.plot(dense, linear.predict(np.log10(dense)), color="black", lw=1.2,
                label=f"least-squares line, R² = {linear.r2:.3f}")
    if quadratic is not None:
        ax.plot(dense, quadratic.predict(np.log10(dense)), color="black", lw=1.2, ls="--",
                label=f"least-squares parabola, R² = {quadratic.r2:.3f}")
    ax.set_xscale("log")
    # Ticks at the sweep's own values read better than decades, which a small sweep may not even span.
    ax.set_xticks(np.unique(x), [_compact(v) for v in np.unique(x)], rotation=45 if len(np.unique(x)) > 6 else 0)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _save(fig, stem: Path) -> list[Path]:
    fig.tight_layout()
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=120)
    fig.savefig(paths[1])
    import matplotlib.pyplot as plt  # loaded (with the Agg backend) by the caller

    plt.close(fig)
    return paths


def _compact(value: float) -> str:
    """4096 -> "4096", 16384 -> "16.4k", 85_600_000 -> "85.6M"."""
    if value < 1e4:
        return f"{value:.4g}"
    scale, suffix = next((scale, suffix) for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if value >= scale)
    return f"{value / scale:.3g}{suffix}"
