"""The sweep report from hand-written run folders: table, fits, plots, point states and the CLI."""

import csv
import json

import numpy as np
import pytest
import yaml
from scipy import stats

from vitok.cli import main
from vitok.sweep import parse_spec, read_state, write_report
from vitok.sweep.state import ERROR_FILE


def fake_run(run_dir, metrics=None, stopped_early=None, checkpoint_step=None, error=None):
    """A run folder as training leaves it: report.json, a checkpoint, or a recorded failure."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if metrics is not None:
        (run_dir / "report.json").write_text(json.dumps({"metrics": metrics, "steps": 4,
                                                         "stopped_early": stopped_early}))
    if checkpoint_step is not None:
        step = run_dir / "checkpoints" / f"step_{checkpoint_step:08d}"
        step.mkdir(parents=True)
        (step / "state.pt").write_bytes(b"")
    if error is not None:
        (run_dir / ERROR_FILE).write_text(error + "\n")


def e_spec(tmp_path):
    """6 points of T-T at 32px: p in {8, 16}, c in {4, 8, 16}; L = 16 or 4 tokens."""
    return parse_spec({"name": "fake", "base_config": "demo", "overrides": ["model.image_size=32"],
                       "study": "e_sweep", "grid": {"patch_size": [8, 16], "channels": [4, 8, 16]}},
                      out=tmp_path / "sweep")


def psnr_of(E):
    return 12.0 + 5.0 * np.log10(E)


def rfid_of(E):
    return 3.0 * (np.log10(E) - 1.9) ** 2 + 1.0


def test_report_from_fake_runs(tmp_path):
    spec = e_spec(tmp_path)
    E = {f"p{p}-c{c}-T-T": (32 // p) ** 2 * c for p in (8, 16) for c in (4, 8, 16)}
    wobble = dict(zip(E, [0.3, -0.2, 0.1, -0.4, 0.25, 0.0]))
    finished = ["p8-c4-T-T", "p8-c8-T-T", "p8-c16-T-T", "p16-c4-T-T"]
    for name in finished:
        fake_run(spec.out / name, {"psnr": psnr_of(E[name]) + wobble[name], "ssim": 0.5 + 0.01 * wobble[name],
                                   "rfid": rfid_of(E[name]) + wobble[name]})
    # Not finished: stopped by the time limit (its metrics are partial), and interrupted.
    fake_run(spec.out / "p16-c8-T-T", {"psnr": 99.0}, stopped_early="time limit", checkpoint_step=2)
    fake_run(spec.out / "p16-c16-T-T", checkpoint_step=3)

    written = write_report(spec)
    out = spec.out
    with open(out / "results.csv") as f:
        rows = {r["point"]: r for r in csv.DictReader(f)}
    assert list(rows) == list(E)
    for name, row in rows.items():
        p, c = int(row["p"]), int(row["c"])
        assert int(row["L"]) == (32 // p) ** 2 and int(row["E"]) == E[name] == int(row["L"]) * c
        assert (row["encoder"], row["decoder"]) == ("T", "T")
        assert int(row["params_total"]) == int(row["params_encoder"]) + int(row["params_decoder"]) > 0
        assert float(row["gflops_total"]) == pytest.approx(float(row["gflops_encode"]) + float(row["gflops_decode"]))
    assert rows["p8-c4-T-T"]["status"] == "done" and float(rows["p8-c4-T-T"]["psnr"]) > 0
    assert rows["p16-c8-T-T"]["status"] == "stopped early at step 2" and rows["p16-c8-T-T"]["psnr"] == ""
    assert rows["p16-c16-T-T"]["status"] == "interrupted at step 3"
    assert "q" not in rows["p8-c4-T-T"]  # image sweeps have no temporal column

    fits = json.loads((out / "fits.json").read_text())
    assert set(fits) == {"e_sweep"}  # one encoder and one decoder: no size study
    x = np.log10([E[n] for n in finished])
    y = np.array([psnr_of(E[n]) + wobble[n] for n in finished])
    ref = stats.linregress(x, y)
    psnr = fits["e_sweep"]["metrics"]["psnr"]
    assert psnr["n"] == 4 and fits["e_sweep"]["x"].startswith("log10(E")
    assert (psnr["slope"], psnr["intercept"], psnr["r2"]) == pytest.approx((ref.slope, ref.intercept, ref.rvalue ** 2))
    quad = fits["e_sweep"]["metrics"]["rfid"]["quadratic"]
    ref_q = np.polyfit(x, [rfid_of(E[n]) + wobble[n] for n in finished], 2)
    assert (quad["a"], quad["b"], quad["c"]) == pytest.approx(tuple(ref_q))
    assert quad["vertex"] == pytest.approx(10 ** (-ref_q[1] / (2 * ref_q[0])))

    for metric in ("psnr", "ssim", "rfid"):
        png, pdf = out / "plots" / f"e_sweep-{metric}.png", out / "plots" / f"e_sweep-{metric}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
        assert png in written["files"] and pdf in written["files"]
    md = (out / "results.md").read_text()
    assert "| p8-c16-T-T | done |" in md and "## Study e_sweep" in md and "R²" in md
    assert "![e_sweep rfid](plots/e_sweep-rfid.png)" in md and "points: 6, finished: 4" in md


def test_size_study_fits_against_parameters(tmp_path):
    spec = parse_spec({"name": "enc", "base_config": "demo", "overrides": ["model.image_size=32"],
                       "study": "encoder", "grid": {"encoder": ["T", "S", "B"]}}, out=tmp_path / "enc")
    for i, point in enumerate(spec.points()):
        fake_run(spec.point_dir(point), {"psnr": 20.0 + i})
    written = write_report(spec)
    assert set(written["fits"]) == {"encoder"}  # E and the decoder are fixed
    params = [row.params_encoder for row in written["rows"]]
    linear, quadratic = written["fits"]["encoder"]["psnr"]
    ref = stats.linregress(np.log10(params), [20.0, 21.0, 22.0])
    assert linear.slope == pytest.approx(ref.slope) and linear.r2 == pytest.approx(ref.rvalue ** 2)
    assert quadratic is None  # three sizes: a parabola would fit exactly
    assert (spec.out / "plots" / "encoder-psnr.pdf").is_file()


def test_point_states(tmp_path):
    assert read_state(tmp_path / "absent").describe() == "not started"
    fake_run(tmp_path / "a", {"psnr": 1.0})
    assert read_state(tmp_path / "a").finished
    fake_run(tmp_path / "b", checkpoint_step=7, error="TrainingDiverged: 5 non-finite steps\nmore")
    state = read_state(tmp_path / "b")
    assert state.resumable and state.describe() == "failed: TrainingDiverged: 5 non-finite steps"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "report.json").write_text('{"metrics": {"ps')  # killed while writing
    assert not read_state(tmp_path / "c").finished


def test_cli_report_only_trains_nothing(tmp_path, capsys):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"name": "fake", "base_config": "demo", "overrides": ["model.image_size=32"],
                                         "study": "e_sweep", "grid": {"patch_size": [8, 16], "channels": [4, 8]}}))
    out = tmp_path / "sweep"
    for name, E in (("p8-c4-T-T", 64), ("p8-c8-T-T", 128), ("p16-c4-T-T", 16)):
        fake_run(out / name, {"psnr": psnr_of(E)})
    assert main(["sweep", str(spec_file), "--report", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 of 4 points finished" in printed and "e_sweep  psnr   slope +5 per tenfold  R² 1.000  (n=3)" in printed
    assert not (out / "p16-c8-T-T").exists() and (out / "results.md").is_file()
    assert main(["sweep", str(spec_file), "model.channels=4", "--report"]) == 2
    assert "which the grid sets per point" in capsys.readouterr().err


def test_points_initialised_from_a_checkpoint_are_sized_by_it(tmp_path):
    """model.init fixes the architecture: the table counts the checkpoint's parameters, not model.name's."""
    import torch

    from conftest import tiny_config
    from vitok.model import ViTok

    torch.manual_seed(0)
    tok = ViTok(tiny_config(channels=8))
    tok.save_pretrained(tmp_path / "init")
    spec = parse_spec({"name": "init", "base_config": "demo",
                       "overrides": ["model.image_size=32", f"model.init={tmp_path / 'init'}"],
                       "study": "grid", "grid": {"channels": [8]}}, out=tmp_path / "sweep")
    (row,) = write_report(spec)["rows"]
    assert row.params_total == sum(p.numel() for p in tok.parameters())
    assert (row.tokens, row.bottleneck) == (16, 16 * 8)
