"""The generation sweep: the spec section, every phase end to end, resuming, refusing, and its report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vitok.cli import main
from vitok.sweep import load_spec, parse_spec, run_sweep, write_report
from vitok.sweep.generation import GENERATION_ERROR_FILE, parse_generation
from vitok.sweep.report import GENERATION_COLUMNS

DIT = ["model=DiT-S", "width=64", "depth=2", "heads=2", "steps=4", "batch_size=8", "compile=false"]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """gen_sweep_tiny run once, end to end, with no Inception weights anywhere."""
    root = tmp_path_factory.mktemp("gen")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VITOK_WEIGHTS", str(root / "no-weights"))
        spec = load_spec("gen_sweep_tiny", out=root / "sweep")
        lines = []
        outcome = run_sweep(spec, log=lines.append)
        write_report(spec)
        yield spec, outcome, lines


def test_tiny_generation_sweep_end_to_end(tiny_sweep):
    spec, outcome, lines = tiny_sweep
    names = [p.name for p in spec.points()]
    assert outcome.generated == names and not outcome.generation_failed
    with open(spec.out / "results.csv") as f:
        rows = {r["point"]: r for r in csv.DictReader(f)}
    assert list(rows) == names
    for name, row in rows.items():
        assert set(GENERATION_COLUMNS) <= set(row), row.keys()
        assert row["gen_status"] == "done"
        for metric in ("gen_swd", "gen_swd_class", "gen_class_acc", "gen_ceiling"):
            assert np.isfinite(float(row[metric])), (name, metric)
        assert 0 <= float(row["gen_class_acc"]) <= 1 and 0 <= float(row["gen_ceiling"]) <= 1
        assert row["gfid"] == row["gis"] == "" and row["gen_not_computed"] == "gfid gis"
        assert int(row["dit_steps"]) == 4
        document = json.loads((spec.out / name / "generation" / "generation.json").read_text())
        assert document["finished"] and document["samples"]["num"] == 4 * 3
        assert document["metrics"]["gen_swd"] == pytest.approx(float(row["gen_swd"]))
        assert "pt_inception" in document["not_computed"]["gfid"]
        samples = load_file(str(spec.out / name / "generation" / "samples.safetensors"))
        assert samples["images"].dtype == torch.uint8 and samples["images"].shape == (12, 3, 32, 32)
        assert samples["labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    # One classifier for the whole sweep, its ceiling the same in every row.
    assert len({row["gen_ceiling"] for row in rows.values()}) == 1
    fits = json.loads((spec.out / "fits.json").read_text())["e_sweep"]["metrics"]
    E = np.log10([int(rows[n]["E"]) for n in names])
    for metric in ("gen_swd", "gen_swd_class", "gen_class_acc"):
        quad = fits[metric]["quadratic"]
        ref = np.polyfit(E, [float(rows[n][metric]) for n in names], 2)
        assert (quad["a"], quad["b"], quad["c"]) == pytest.approx(tuple(ref), rel=1e-6, abs=1e-9)
        assert quad["exact"] and quad["curvature"] == pytest.approx(2 * ref[0])
        assert quad["vertex_log10"] == pytest.approx(-ref[1] / (2 * ref[0]))
        assert quad["vertex_inside"] == bool(E.min() <= quad["vertex_log10"] <= E.max())
        assert quad["turns"] == ("minimum" if ref[0] > 0 else "maximum")
    assert fits["psnr"]["quadratic"] is None  # reconstruction keeps its lines (three points: no parabola)
    for stem in ("e_sweep-recon_vs_generation", "e_sweep-gen_swd", "e_sweep-gen_class_acc", "e_sweep-psnr"):
        assert (spec.out / "plots" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (spec.out / "plots" / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    md = (spec.out / "results.md").read_text()
    assert "## Generation (the second law)" in md and "gfid not computed" in md
    assert "plots/e_sweep-recon_vs_generation.png" in md and "| gen_swd | 3 |" in md


def test_rerun_skips_every_phase_and_resumes_a_deleted_one(tiny_sweep):
    spec, _, _ = tiny_sweep
    first = spec.points()[0].name
    gen = spec.out / first / "generation"
    before = load_file(str(gen / "samples.safetensors"))
    scores = json.loads((gen / "generation.json").read_text())["metrics"]
    lines = []
    outcome = run_sweep(spec, log=lines.append)
    assert outcome.generated == [] and not any("training the DiT" in line or "encoding" in line for line in lines)
    # Lose the samples and the scores: only sampling and scoring run again, to the same samples.
    (gen / "samples.safetensors").unlink()
    (gen / "generation.json").unlink()
    lines = []
    outcome = run_sweep(spec, log=lines.append)
    assert outcome.generated == [first]
    assert any("sampling" in line for line in lines)
    assert not any("training the DiT" in line or "encoding" in line for line in lines)
    after = load_file(str(gen / "samples.safetensors"))
    assert torch.equal(after["images"], before["images"]) and torch.equal(after["labels"], before["labels"])
    assert json.loads((gen / "generation.json").read_text())["metrics"] == scores


def test_changed_generation_section_is_refused(tiny_sweep):
    spec, _, _ = tiny_sweep
    changed = load_spec("gen_sweep_tiny", ["generation.samples_per_class=4"], out=spec.out)
    with pytest.raises(ValueError, match="samples_per_class"):
        run_sweep(changed, log=lambda line: None)


def test_generation_section_errors(tmp_path):
    good = {"data": "bundled", "dit": DIT}
    assert parse_generation(good, "s").samples_per_class == 32
    for bad, match in (
        ("x", "must be a mapping"),
        ({**good, "colour": 1}, "unknown generation key"),
        ({"dit": DIT}, "data is missing"),
        ({**good, "data": "/some/train"}, "val_data is missing"),
        ({**good, "dit": "model=DiT-S"}, "list of key=value"),
        ({**good, "dit": [*DIT, "latents=/x"]}, "sets latents"),
        ({**good, "dit": [*DIT, "model=DiT-Q"]}, "generation.dit"),
        ({**good, "samples_per_class": 1}, "at least 2"),
        ({**good, "sampler": {"method": "euler"}}, "ddim or ddpm"),
        ({**good, "sampler": {"stepz": 3}}, "sampler takes"),
        ({**good, "classifier": {"size": 4}}, "classifier"),
        ({**good, "device": "tpu"}, "auto, cpu or cuda"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_generation(bad, "s")
    base = {"name": "x", "base_config": "demo", "grid": {"channels": [4]}}
    with pytest.raises(ValueError, match="has not; add a generation"):
        load_spec("tiny", ["generation.data=/x"], out=tmp_path / "a")
    spec = parse_spec({**base, "generation": good}, out=tmp_path / "b")
    assert spec.to_dict()["generation"]["data"] == "bundled"
    missing = parse_spec({**base, "generation": {**good, "data": str(tmp_path / "nope"),
                                                 "val_data": str(tmp_path / "nope")}}, out=tmp_path / "c")
    from vitok.sweep.generation import labelled_folders

    with pytest.raises(ValueError, match="is not a folder"):
        labelled_folders(missing.generation, missing.out)


def fake_generation(point_dir, metrics, steps=100, ceiling=0.9):
    gen = point_dir / "generation"
    gen.mkdir(parents=True, exist_ok=True)
    (gen / "generation.json").write_text(json.dumps({
        "metrics": {**metrics, "gfid": None, "gis": None}, "not_computed": {"gfid": "no weights", "gis": "no weights"},
        "classifier": {"val_accuracy": ceiling}, "dit": {"steps": steps, "seconds": 12.5}, "finished": True}))


def test_report_fits_the_generation_curve(tmp_path):
    """Five hand-made points on a U in log10 E: the fit finds the parabola and its best E."""
    spec = parse_spec({"name": "gen", "base_config": "demo", "overrides": ["model.image_size=32"], "study": "e_sweep",
                       "grid": {"patch_size": [8], "channels": [2, 4, 8, 16, 32]},
                       "generation": {"data": "bundled", "dit": DIT}}, out=tmp_path / "sweep")
    wobble = [0.2, -0.1, 0.15, -0.05, 0.1]
    values = {}
    for i, point in enumerate(spec.points()):
        run = spec.point_dir(point)
        run.mkdir(parents=True)
        (run / "report.json").write_text(json.dumps({"metrics": {"psnr": 20.0 + i}, "steps": 4}))
        E = 16 * point.channels
        u = (np.log10(E) - 2.2) ** 2
        values[point.name] = (E, 50 + 40 * u + wobble[i], 0.8 - 0.5 * u + 0.01 * wobble[i])
        if point.channels != 32:
            fake_generation(run, {"gen_swd": values[point.name][1], "gen_swd_class": values[point.name][1] + 1,
                                  "gen_class_acc": values[point.name][2]})
    # The last point: its tokenizer finished, its generation failed.
    last = spec.point_dir(spec.points()[-1])
    (last / "generation").mkdir()
    (last / GENERATION_ERROR_FILE).write_text("RuntimeError: CUDA out of memory\n")
    written = write_report(spec)
    rows = {row.point.name: row for row in written["rows"]}
    assert rows["p8-c32-T-T"].gen_status == "failed: RuntimeError: CUDA out of memory"
    assert "gen_swd" not in rows["p8-c32-T-T"].metrics
    fits = json.loads((spec.out / "fits.json").read_text())["e_sweep"]["metrics"]
    done = [n for n in values if n != "p8-c32-T-T"]
    x = np.log10([values[n][0] for n in done])
    for metric, k in (("gen_swd", 1), ("gen_class_acc", 2)):
        ref = np.polyfit(x, [values[n][k] for n in done], 2)
        quad = fits[metric]["quadratic"]
        assert (quad["a"], quad["b"], quad["c"]) == pytest.approx(tuple(ref))
        assert quad["vertex"] == pytest.approx(10 ** (-ref[1] / (2 * ref[0])))
        assert quad["vertex_inside"] and not quad["exact"] and fits[metric]["n"] == 4
        assert quad["vertex_log10"] == pytest.approx(2.2, abs=0.05)
    assert fits["gen_swd"]["quadratic"]["turns"] == "minimum"
    assert fits["gen_class_acc"]["quadratic"]["turns"] == "maximum"
    assert "gfid" not in fits
    with open(spec.out / "results.csv") as f:
        table = {r["point"]: r for r in csv.DictReader(f)}
    assert table["p8-c2-T-T"]["gen_ceiling"] == "0.9" and table["p8-c2-T-T"]["dit_steps"] == "100"
    assert table["p8-c32-T-T"]["gen_swd"] == "" and table["p8-c32-T-T"]["psnr"] == "24.0"
    md = (spec.out / "results.md").read_text()
    assert "points with generation scores: 4 of 5" in md and "gfid not computed: no weights" in md
    assert "| gen_swd | 4 |" in md and "(minimum) | yes |" in md
    # A point whose DiT was stopped by a time budget is said to have had fewer steps.
    fake_generation(spec.point_dir(spec.points()[0]), {"gen_swd": 60.0, "gen_class_acc": 0.5}, steps=40)
    write_report(spec)
    assert "stopped at different steps (40, 100)" in (spec.out / "results.md").read_text()


def test_generation_states(tmp_path):
    from vitok.sweep.report import generation_state

    point = tmp_path / "p"
    assert generation_state(point, False)[0] == "waiting for the tokenizer"
    assert generation_state(point, True)[0] == "not started"
    gen = point / "generation"
    (gen / "latents").mkdir(parents=True)
    assert generation_state(point, True)[0] == "encoding interrupted"
    (gen / "latents" / "index.json").write_text("{}")
    (gen / "dit").mkdir()
    (gen / "dit" / "config.yaml").write_text("")
    assert generation_state(point, True)[0] == "DiT training interrupted"
    (gen / "dit" / "report.json").write_text("{}")
    assert generation_state(point, True)[0] == "DiT trained, not sampled"
    (gen / "samples.safetensors").write_bytes(b"")
    assert generation_state(point, True)[0] == "sampled, not scored"
    (gen / "generation.json").write_text('{"finished": tr')  # killed while writing: not done
    assert generation_state(point, True)[0] == "sampled, not scored"


def test_cli_runs_a_generation_sweep_report(tiny_sweep, capsys):
    spec, _, _ = tiny_sweep
    assert main(["sweep", "gen_sweep_tiny", "--out", str(spec.out), "--report"]) == 0
    assert "gen_swd" in (spec.out / "results.csv").read_text()
