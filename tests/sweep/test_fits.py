"""Least-squares fits against independent references: scipy.stats.linregress and numpy.polyfit."""

import math

import numpy as np
import pytest
from scipy import stats

from vitok.sweep import fit_linear, fit_quadratic, r_squared


def sweep_like_data(seed: int, n: int = 15):
    """x = log10(E) over the paper's E range, y a noisy line (like rPSNR against log E)."""
    rng = np.random.default_rng(seed)
    x = np.log10(rng.choice([256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536], size=n))
    return x, 4.2 * x + 11.0 + rng.normal(0, 0.6, size=n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_fit_matches_linregress(seed):
    x, y = sweep_like_data(seed)
    fit, ref = fit_linear(x, y), stats.linregress(x, y)
    assert fit.slope == pytest.approx(ref.slope, rel=1e-10)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-10, abs=1e-10)
    assert fit.r2 == pytest.approx(ref.rvalue ** 2, rel=1e-10)
    assert fit.n == len(x)


def test_noise_free_line_is_recovered_exactly():
    x = np.log10([1024, 2048, 4096, 8192])
    fit = fit_linear(x, -3.5 * x + 40.0)
    assert (fit.slope, fit.intercept, fit.r2) == pytest.approx((-3.5, 40.0, 1.0), rel=1e-12)
    assert fit.predict(np.log10(16384)) == pytest.approx(-3.5 * np.log10(16384) + 40.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_quadratic_fit_matches_polyfit(seed):
    x, _ = sweep_like_data(seed)
    # gFID-like: a best E at log10(E) = 3.6, noise on top.
    y = 2.0 * (x - 3.6) ** 2 + 5.0 + np.random.default_rng(seed).normal(0, 0.3, size=len(x))
    fit, ref = fit_quadratic(x, y), np.polyfit(x, y, 2)
    assert (fit.a, fit.b, fit.c) == pytest.approx(tuple(ref), rel=1e-8)
    # For least squares with an intercept, R² is the squared correlation of y with the fitted values.
    assert fit.r2 == pytest.approx(np.corrcoef(y, np.polyval(ref, x))[0, 1] ** 2, rel=1e-10)
    assert fit.extremum_x == pytest.approx(-ref[1] / (2 * ref[0]), rel=1e-8)


def test_noise_free_parabola_gives_its_vertex():
    x = np.log10([256, 1024, 4096, 16384, 65536])
    fit = fit_quadratic(x, 1.5 * (x - 3.2) ** 2 + 7.0)
    assert fit.extremum_x == pytest.approx(3.2) and fit.r2 == pytest.approx(1.0)


def test_degenerate_inputs():
    with pytest.raises(ValueError, match="at least 2 distinct x values, got 1"):
        fit_linear(np.array([3.0, 3.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="at least 3 distinct x values, got 2"):
        fit_quadratic(np.array([1.0, 2.0, 2.0]), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="must be finite"):
        fit_linear(np.array([1.0, 2.0, 3.0]), np.array([1.0, np.nan, 3.0]))
    with pytest.raises(ValueError, match="one length"):
        fit_linear(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0]))
    flat = fit_linear(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0]))
    assert flat.slope == pytest.approx(0.0, abs=1e-12) and math.isnan(flat.r2)
    assert math.isnan(r_squared(np.ones(3), np.ones(3)))
