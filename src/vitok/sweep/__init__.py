"""Scaling sweeps: a grid of tokenizers over p, c, encoder and decoder size, trained and fitted.

`vitok sweep SPEC.yaml` reads a spec (spec.py documents the format), trains every point one
after another or one per GPU (runner.py), and writes a table, log-E fits and plots (report.py).
"""

from .fits import LinearFit, QuadraticFit, fit_linear, fit_quadratic, r_squared
from .report import collect_rows, compute_fits, write_report
from .runner import SweepOutcome, run_sweep
from .spec import Point, SweepSpec, load_spec, parse_spec, shipped_specs
from .state import PointState, read_state

__all__ = ["LinearFit", "Point", "PointState", "QuadraticFit", "SweepOutcome", "SweepSpec", "collect_rows",
           "compute_fits", "fit_linear", "fit_quadratic", "load_spec", "parse_spec", "r_squared", "read_state",
           "run_sweep", "shipped_specs", "write_report"]
