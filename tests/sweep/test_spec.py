"""Sweep specs: the shipped ones, point names and configs, and every rejection before training."""

import pytest
import yaml

from vitok.sweep import Point, load_spec, parse_spec, shipped_specs
from vitok.sweep.spec import resolve_spec_path


def tiny_dict(**changes) -> dict:
    """The shipped tiny spec as a dict, with top-level keys replaced."""
    data = yaml.safe_load(resolve_spec_path("tiny").read_text())
    data.update(changes)
    return data


def test_point_names_and_model_names():
    image = Point(encoder="S", decoder="B", temporal_patch=None, patch_size=16, channels=8)
    video = Point(encoder="S", decoder="L", temporal_patch=4, patch_size=8, channels=16)
    assert (image.name, image.model_name) == ("p16-c8-S-B", "S-B/16")
    assert (video.name, video.model_name) == ("q4-p8-c16-S-L", "S-L/4x8")


def test_shipped_specs_hold_the_papers_grids():
    assert set(shipped_specs()) == {"e_sweep", "e_sweep_small", "encoder", "encoder_small", "decoder",
                                    "decoder_small", "tiny", "gen_sweep_small", "gen_sweep_tiny"}
    e = load_spec("e_sweep")
    assert e.study == "e_sweep" and len(e.points()) == 15
    assert {(p.patch_size, p.channels) for p in e.points()} == {(p, c) for p in (8, 16, 32) for c in (4, 8, 16, 32, 64)}
    assert {p.model_name for p in e.points()} == {"S-B/8", "S-B/16", "S-B/32"}
    assert [p.name for p in load_spec("encoder").points()] == ["p16-c16-S-B", "p16-c16-B-B", "p16-c16-L-B"]
    assert [p.name for p in load_spec("decoder").points()] == ["p16-c16-S-S", "p16-c16-S-B", "p16-c16-S-L"]
    for name in ("e_sweep_small", "encoder_small", "decoder_small"):
        small = load_spec(name)
        assert small.point_config(small.points()[0]).model.image_size == 128, name
    assert [p.name for p in load_spec("tiny").points()] == ["p8-c4-T-T", "p8-c8-T-T", "p16-c4-T-T", "p16-c8-T-T"]


def test_point_config_layers_base_spec_command_line_then_point(tmp_path):
    spec = load_spec("e_sweep", ["train.batch_size=64", "data.source=/data/x"], out=tmp_path / "sw")
    point = next(p for p in spec.points() if p.name == "p8-c32-S-B")
    config = spec.point_config(point)
    assert config.model.name == "S-B/8" and config.model.channels == 32
    assert config.name == "e_sweep-p8-c32-S-B"
    assert config.train.batch_size == 64 and config.data.source == "/data/x"  # command line
    assert config.train.stage1_steps == 100_000 and config.model.image_size == 256  # base config
    assert spec.point_dir(point) == tmp_path / "sw" / "p8-c32-S-B"
    assert load_spec("e_sweep").out.as_posix() == "sweeps/e_sweep"


def test_omitted_axes_keep_the_base_configs_values():
    spec = parse_spec({"name": "c_only", "base_config": "demo", "grid": {"channels": [4, 16]}})
    assert [p.name for p in spec.points()] == ["p8-c4-T-T", "p8-c16-T-T"]  # demo is T-T/8
    assert spec.to_dict()["grid"] == {"encoder": ["T"], "decoder": ["T"], "patch_size": [8], "channels": [4, 16]}
    again = parse_spec(spec.to_dict())
    assert again.points() == spec.points()


def test_video_points_carry_the_temporal_stride():
    spec = parse_spec({"name": "video", "base_config": "sb4x8_video", "study": "grid",
                       "grid": {"temporal_patch": [2, 4], "patch_size": [8]}})
    assert [p.name for p in spec.points()] == ["q2-p8-c16-S-B", "q4-p8-c16-S-B"]
    config = spec.point_config(spec.points()[1])
    assert config.model.name == "S-B/4x8" and config.model.frames == 16


@pytest.mark.parametrize("changes, message", [
    ({"patch_size": [8]}, "unknown key(s) patch_size (grid axes go under grid:)"),
    ({"grid": {}}, "grid is empty"),
    ({"grid": {"patch_size": []}}, "grid.patch_size is empty"),
    ({"grid": {"kernel": [3]}}, "unknown grid axis kernel"),
    ({"grid": {"encoder": ["T", "X"]}, "study": "grid"}, "grid.encoder has 'X'; sizes are T, S, B, L, H"),
    ({"grid": {"channels": [4, "8"]}}, "grid.channels values must be positive integers, got '8'"),
    ({"grid": {"channels": [4, 4]}}, "grid.channels lists a value twice"),
    ({"grid": {"patch_size": [8, 12], "channels": [4]}}, "grid point p12-c4-T-T is impossible: model section: image_size 32 is not "
                                        "divisible by patch_size 12; use 24 or 36"),
    ({"study": "e"}, "study is 'e'; choose one of e_sweep, encoder, decoder, grid"),
    ({"grid": {"channels": [4], "encoder": ["T", "S"]}}, "study e_sweep varies E = L·c at one encoder"),
    ({"grid": {"channels": [4]}}, "study e_sweep needs at least two bottleneck sizes"),
    ({"study": "encoder", "grid": {"encoder": ["T"]}}, "study encoder needs at least two sizes in grid.encoder"),
    ({"study": "decoder", "grid": {"encoder": ["T", "S"], "decoder": ["T", "S"]}},
     "study decoder varies the decoder at one encoder"),
    ({"overrides": ["model.channels=4"]}, "sets model.channels, which the grid sets per point; list the values "
                                          "in grid.channels"),
    ({"overrides": ["model.encoder_width=64"]}, "sets model.encoder_width"),
    ({"overrides": ["train.nope=1"]}, "unknown config key train.nope"),
    ({"overrides": "train.batch_size=2"}, "overrides must be a list"),
    ({"base_config": None}, "give base_config"),
    ({"base_config": "no_such_config"}, "config file no_such_config does not exist"),
    ({"name": "a/b"}, "name must be a folder-safe string"),
])
def test_bad_specs_are_rejected_with_the_fix(changes, message):
    data = tiny_dict(**changes)
    with pytest.raises(ValueError) as err:
        parse_spec(data, "spec.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("spec.yaml: ")


def test_explicit_sizes_in_the_base_config_are_rejected(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"model": {"name": "T-T/8", "image_size": 32, "encoder_width": 64,
                                              "encoder_heads": 2}}))
    with pytest.raises(ValueError, match="sets model.encoder_width=64, which would override every point's"):
        parse_spec({"name": "x", "base_config": str(base), "grid": {"channels": [4, 8]}})


def test_missing_spec_names_the_shipped_ones(tmp_path):
    with pytest.raises(ValueError, match="shipped specs: decoder, decoder_small, e_sweep"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_spec(bad)
