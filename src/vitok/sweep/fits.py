"""Least-squares fits of a metric against x (the sweep uses x = log10 of E or of a model size).

The paper reports reconstruction metrics as linear in log E (R² 0.92-0.98) and generation
metrics as a second-order curve in log E with a best E; both fits are ordinary least squares,
solved here with numpy so that production code needs no scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class LinearFit:
    """y ≈ slope·x + intercept over n points."""

    slope: float
    intercept: float
    r2: float  # NaN when y is constant (R² is undefined there)
    n: int

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.slope * np.asarray(x, dtype=float) + self.intercept


@dataclass
class QuadraticFit:
    """y ≈ a·x² + b·x + c over n points; the extremum sits at x = -b / (2a)."""

    a: float
    b: float
    c: float
    r2: float
    n: int

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return (self.a * x + self.b) * x + self.c

    @property
    def extremum_x(self) -> float | None:
        """Where the curve turns (a best E for a metric like gFID); None for a straight line."""
        return -self.b / (2 * self.a) if self.a != 0 else None


def r_squared(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot; NaN when y has no variance."""
    y, y_hat = np.asarray(y, dtype=float), np.asarray(y_hat, dtype=float)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return math.nan
    return 1.0 - float(np.sum((y - y_hat) ** 2)) / ss_tot


def _least_squares(x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    """Coefficients, highest power first, of the degree-`degree` polynomial closest to y."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D and of one length, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite; drop the points without a value first")
    distinct = len(np.unique(x))
    if distinct <= degree:
        raise ValueError(f"a degree-{degree} fit needs at least {degree + 1} distinct x values, got {distinct}")
    # lstsq solves through an SVD, stable for the few, well-spread x values of a sweep.
    design = np.vander(x, degree + 1)  # n×(degree+1): columns x^degree ... x, 1
    return np.linalg.lstsq(design, y, rcond=None)[0]


def fit_linear(x: np.ndarray, y: np.ndarray) -> LinearFit:
    """Ordinary least squares line through (x, y); needs two distinct x."""
    slope, intercept = _least_squares(x, y, 1)
    fit = LinearFit(float(slope), float(intercept), math.nan, len(x))
    fit.r2 = r_squared(y, fit.predict(x))
    return fit


def fit_quadratic(x: np.ndarray, y: np.ndarray) -> QuadraticFit:
    """Ordinary least squares parabola through (x, y); needs three distinct x."""
    a, b, c = _least_squares(x, y, 2)
    fit = QuadraticFit(float(a), float(b), float(c), math.nan, len(x))
    fit.r2 = r_squared(y, fit.predict(x))
    return fit
