"""Sweep specs: the YAML that names a scaling study, its grid of points and each point's config.

A spec is a small YAML file::

    name: e_sweep                   # folder-safe; the sweep folder is sweeps/<name>/ by default
    base_config: sb16_256           # a shipped training config's name, or a YAML path
    overrides:                      # section.field=value, applied to every point (optional)
      - data.source=/data/imagenet/train
      - train.stage1_steps=20000
    study: e_sweep                  # e_sweep | encoder | decoder | grid (default grid)
    grid:                           # every axis is a list; an omitted axis keeps the base config's value
      patch_size: [8, 16, 32]       # p
      channels: [4, 8, 16, 32, 64]  # c
      encoder: [S]                  # size letters from vitok.model.variants.SIZES
      decoder: [B]
      # temporal_patch: [2, 4]      # q, video only: a base config that trains on clips (model.frames > 1)
    out: sweeps/e_sweep             # optional; relative to the current folder
    generation:                     # optional: also measure generation at every point (generation.py)
      data: /data/labelled/train    # class sub-folders; the DiT's training set and the classifier's
      val_data: /data/labelled/val  # held-out real images of the same classes
      dit: [model=DiT-S, steps=5000, batch_size=256, lr=2e-4]   # `vitok dit train` settings
      samples_per_class: 64
      sampler: {method: ddim, steps: 50, cfg: 2.0}

The points are the product of the axes. Each gets a folder named after it, ``p16-c8-S-B``
(``q4-p8-c16-S-B`` for video), holding an ordinary training run whose config is the base
config, then the spec's overrides, then those given on the command line (`vitok sweep SPEC
data.source=/data/train`), then the point's own ``model.name`` (``S-B/16`` or ``S-B/4x8``),
``model.channels`` and ``name``. The grid owns those keys, so overrides may not
set them, nor the explicit ``model.encoder_*``/``decoder_*``/``patch_size``/``temporal_patch``
sizes that would silently replace the letters.

``study`` says what the sweep is for and is checked against the grid: ``e_sweep`` varies
E = L·c at one encoder and one decoder (the paper's p × c sweep), ``encoder`` varies the
encoder at one decoder, ``decoder`` the decoder at one encoder, ``grid`` anything. Every
point shares the data section, so every point is evaluated on the same held-out set.

A spec is checked completely before any training: unknown keys, empty axes, unknown sizes
and impossible points (an image size that p does not divide) are errors naming the fix.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..model import SIZES, parse_name
from ..train.config import TrainConfig, load_config, parse_override, read_yaml, resolve_model_config, resolve_shipped
from .generation import GenerationSection, parse_generation

SPEC_KEYS = ("name", "base_config", "overrides", "study", "grid", "out", "generation")
STUDIES = ("e_sweep", "encoder", "decoder", "grid")
AXES = ("encoder", "decoder", "temporal_patch", "patch_size", "channels")
SHIPPED_SPECS = Path(__file__).resolve().parent.parent / "configs" / "sweeps"

# Explicit model sizes would replace every point's letters and p, so a sweep leaves them null.
EXPLICIT_SIZES = ("patch_size", "temporal_patch", *(f"{part}_{dim}" for part in ("encoder", "decoder")
                                                    for dim in ("width", "depth", "heads")))
# Keys each point sets itself, and where an override of them belongs instead.
GRID_OWNED = {
    "name": "each point's run is named <sweep name>-<point name>",
    "model.name": "list sizes in grid.encoder / grid.decoder and p in grid.patch_size",
    "model.channels": "list the values in grid.channels",
    **{f"model.{key}": "the grid's size letters and grid.patch_size / grid.temporal_patch set it"
       for key in EXPLICIT_SIZES},
}

_FOLDER_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Point:
    """One tokenizer of the grid."""

    encoder: str  # size letter, e.g. "S"
    decoder: str
    temporal_patch: int | None  # q; None for image models
    patch_size: int  # p
    channels: int  # c

    @property
    def name(self) -> str:
        """Folder name: "p16-c8-S-B", or "q4-p8-c16-S-B" for video."""
        q = f"q{self.temporal_patch}-" if self.temporal_patch is not None else ""
        return f"{q}p{self.patch_size}-c{self.channels}-{self.encoder}-{self.decoder}"

    @property
    def model_name(self) -> str:
        """The variant name model.name takes: "S-B/16" or "S-B/4x8"."""
        q = f"{self.temporal_patch}x" if self.temporal_patch is not None else ""
        return f"{self.encoder}-{self.decoder}/{q}{self.patch_size}"


@dataclass
class SweepSpec:
    """A validated sweep; build it with load_spec or parse_spec, which check every point."""

    name: str
    base_config: str
    overrides: list[str]  # the spec's, then the command line's
    study: str
    grid: dict[str, list]  # every axis of AXES, omitted ones filled from the base config
    out: Path
    generation: GenerationSection | None = None  # the generation phase of every point, if any

    def points(self) -> list[Point]:
        """Every point, in the order of the axes' lists (encoder, decoder, q, p, c)."""
        return [Point(*values) for values in itertools.product(*(self.grid[axis] for axis in AXES))]

    def point_dir(self, point: Point) -> Path:
        return self.out / point.name

    def point_overrides(self, point: Point) -> list[str]:
        """The overrides of one point: the spec's, then the point's model and run name."""
        return [*self.overrides, f"model.name={point.model_name}", f"model.channels={point.channels}",
                f"name={self.name}-{point.name}"]

    def point_config(self, point: Point) -> TrainConfig:
        """The full training config of one point (validated)."""
        return load_config(self.base_config, self.point_overrides(point))

    def to_dict(self) -> dict:
        """The resolved spec, as sweep.yaml records it."""
        grid = {axis: values for axis, values in self.grid.items() if values != [None]}
        document = {"name": self.name, "base_config": self.base_config, "overrides": list(self.overrides),
                    "study": self.study, "grid": grid, "out": str(self.out)}
        if self.generation is not None:
            document["generation"] = self.generation.to_dict()
        return document


def shipped_specs() -> list[str]:
    """Names of the sweep specs that ship with vitok (usable as `vitok sweep NAME`)."""
    return sorted(p.stem for p in SHIPPED_SPECS.glob("*.yaml"))


def resolve_spec_path(path: str | Path) -> Path:
    """A YAML path, or the name of a shipped spec ("e_sweep", "tiny", ...)."""
    return resolve_shipped(path, SHIPPED_SPECS, "sweep spec", "specs")


def load_spec(path: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None) -> SweepSpec:
    """Read and validate a spec file (or shipped spec); `overrides` and `out` win over the file's."""
    path = resolve_spec_path(path)
    return parse_spec(read_yaml(path, "sweep spec"), str(path), overrides, out)


def parse_spec(data: object, origin: str = "sweep spec", overrides: Sequence[str] = (),
               out: str | Path | None = None) -> SweepSpec:
    """Validate a spec given as a dict (what the YAML holds) and build every point's config once."""
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: a sweep spec is a mapping with keys {', '.join(SPEC_KEYS)}, "
                         f"got {type(data).__name__}")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        hint = " (grid axes go under grid:)" if set(unknown) & set(AXES) else ""
        raise ValueError(f"{origin}: unknown key(s) {', '.join(unknown)}{hint}; a sweep spec has "
                         f"{', '.join(SPEC_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not _FOLDER_SAFE.match(name):
        raise ValueError(f"{origin}: name must be a folder-safe string (letters, digits, '-', '_', '.'), "
                         f"got {name!r}")
    base = data.get("base_config")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{origin}: give base_config: a shipped training config (demo, sb16_256, sb4x8_video) "
                         f"or a YAML path, got {base!r}")
    spec_overrides = data.get("overrides") or []
    if not isinstance(spec_overrides, list) or not all(isinstance(t, str) for t in spec_overrides):
        raise ValueError(f"{origin}: overrides must be a list of 'section.field=value' strings, "
                         f"got {spec_overrides!r}")
    # generation.KEY=VALUE on the command line sets a scalar of the generation section (its data folders,
    # say), not a training field.
    generation_overrides = [t for t in overrides if t.strip().startswith("generation.")]
    all_overrides = [*spec_overrides, *(t for t in overrides if t not in generation_overrides)]
    for text in all_overrides:
        _check_override(text, origin)
    study = data.get("study", "grid")
    if study not in STUDIES:
        raise ValueError(f"{origin}: study is {study!r}; choose one of {', '.join(STUDIES)}")
    try:
        base_config = load_config(base, all_overrides)
    except ValueError as err:
        raise ValueError(f"{origin}: base config {base} with the overrides: {err}") from None
    _check_explicit_sizes(base_config, base, origin)
    out_dir = Path(out if out is not None else data.get("out") or Path("sweeps") / name)
    raw_generation = data.get("generation")
    if generation_overrides:
        if raw_generation is None:
            raise ValueError(f"{origin}: {generation_overrides[0]!r} sets the generation section, which this spec "
                             f"has not; add a generation: section to the spec")
        raw_generation = apply_generation_overrides(raw_generation, generation_overrides, origin)
    generation = parse_generation(raw_generation, origin) if raw_generation is not None else None
    spec = SweepSpec(name, base, all_overrides, study, _parse_grid(data.get("grid"), base_config, origin), out_dir,
                     generation)
    bottlenecks = set()
    for point in spec.points():
        try:
            config = spec.point_config(point)
        except ValueError as err:
            raise ValueError(f"{origin}: grid point {point.name} is impossible: {err}; change the grid "
                             f"or the overrides") from None
        model = resolve_model_config(config)  # with model.init: the checkpoint's sizes, not model.name's
        bottlenecks.add(model.num_tokens * model.channels)
    _check_study(spec, len(bottlenecks), origin)
    return spec


def apply_generation_overrides(raw: object, overrides: list[str], origin: str) -> dict:
    """The spec's generation section with generation.KEY=VALUE overrides applied (values parsed as YAML)."""
    import yaml

    if not isinstance(raw, dict):
        return raw  # parse_generation names the problem
    raw = dict(raw)
    for text in overrides:
        key, sep, value = text.strip().partition("=")
        field = key[len("generation."):]
        if not sep or not field or "." in field:
            raise ValueError(f"{origin}: override {text!r} must look like generation.KEY=VALUE, e.g. "
                             f"generation.data=/data/labelled/train")
        raw[field] = yaml.safe_load(value) if value.strip() else ""
    return raw


def _check_override(text: str, origin: str) -> None:
    try:
        parsed = parse_override(text)
    except ValueError as err:
        raise ValueError(f"{origin}: {err}") from None
    for section, fields in parsed.items():
        keys = ["name"] if section == "name" else [f"{section}.{f}" for f in fields]
        for key in keys:
            if key in GRID_OWNED:
                raise ValueError(f"{origin}: override {text!r} sets {key}, which the grid sets per point; "
                                 f"{GRID_OWNED[key]}")


def _check_explicit_sizes(config: TrainConfig, base: str, origin: str) -> None:
    for key in EXPLICIT_SIZES:
        value = getattr(config.model, key)
        if value is not None:
            raise ValueError(f"{origin}: base config {base} sets model.{key}={value}, which would override "
                             f"every point's model.name; set it to null there or use another base config")


def _name_parts(name: str) -> dict[str, object]:
    """"S-B/4x8" -> encoder "S", decoder "B", temporal_patch 4, patch_size 8 (q None for images)."""
    fields = parse_name(name)
    encoder, decoder = name.strip().split("/")[0].split("-")
    return {"encoder": encoder, "decoder": decoder, "temporal_patch": fields.get("temporal_patch"),
            "patch_size": fields["patch_size"]}


def _parse_grid(raw: object, base: TrainConfig, origin: str) -> dict[str, list]:
    if not raw:
        raise ValueError(f"{origin}: grid is empty; give at least one axis of {', '.join(AXES)}, "
                         f"e.g. grid: {{patch_size: [8, 16], channels: [4, 8]}}")
    if not isinstance(raw, dict):
        raise ValueError(f"{origin}: grid must be a mapping of axis -> list of values, got {raw!r}")
    unknown = sorted(set(raw) - set(AXES))
    if unknown:
        raise ValueError(f"{origin}: unknown grid axis {', '.join(unknown)}; axes are {', '.join(AXES)}")
    defaults = {**_name_parts(base.model.name), "channels": base.model.channels}
    grid = {}
    for axis in AXES:
        if axis not in raw:
            grid[axis] = [defaults[axis]]
            continue
        values = raw[axis] if isinstance(raw[axis], list) else [raw[axis]]
        if not values:
            raise ValueError(f"{origin}: grid.{axis} is empty; list at least one value, or leave the axis out "
                             f"to keep the base config's {defaults[axis]}")
        for value in values:
            if axis in ("encoder", "decoder"):
                if value not in SIZES:
                    raise ValueError(f"{origin}: grid.{axis} has {value!r}; sizes are {', '.join(SIZES)}")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{origin}: grid.{axis} values must be positive integers, got {value!r}")
        if len(set(values)) != len(values):
            raise ValueError(f"{origin}: grid.{axis} lists a value twice: {values}; list each once")
        grid[axis] = list(values)
    return grid


def _check_study(spec: SweepSpec, bottlenecks: int, origin: str) -> None:
    """The grid must vary what the study is about, and hold fixed what it holds fixed."""
    g = spec.grid
    if spec.study == "e_sweep":
        for axis in ("encoder", "decoder"):
            if len(g[axis]) > 1:
                raise ValueError(f"{origin}: study e_sweep varies E = L·c at one encoder and one decoder, but "
                                 f"grid.{axis} has {g[axis]}; keep one size, or use study: grid")
        if bottlenecks < 2:
            raise ValueError(f"{origin}: study e_sweep needs at least two bottleneck sizes E = L·c; list more "
                             f"values in grid.patch_size or grid.channels")
    elif spec.study in ("encoder", "decoder"):
        other = "decoder" if spec.study == "encoder" else "encoder"
        if len(g[spec.study]) < 2:
            raise ValueError(f"{origin}: study {spec.study} needs at least two sizes in grid.{spec.study}, "
                             f"got {g[spec.study]}")
        if len(g[other]) > 1:
            raise ValueError(f"{origin}: study {spec.study} varies the {spec.study} at one {other}, but "
                             f"grid.{other} has {g[other]}; keep one size, or use study: grid")
