"""benchmarks/crop_set.py: class folders from file names, crop counts and sizes, worker-independent output."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "crop_set.py"
ARGS = ["--per-image", "3", "--size", "16", "--min-scale", "0.2", "--seed", "0"]


def load_script():
    """benchmarks/crop_set.py as a module (benchmarks/ is no package)."""
    if "vitok_crop_set_script" not in sys.modules:
        spec = importlib.util.spec_from_file_location("vitok_crop_set_script", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["vitok_crop_set_script"] = module  # dataclasses and worker pickling look the module up
        spec.loader.exec_module(module)
    return sys.modules["vitok_crop_set_script"]


@pytest.fixture
def photos(tmp_path):
    """Three small photos in two classes (one greyscale, one with alpha) and one file that is no image."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(src / "mate-backgrounds--Dune.jpg")
    Image.fromarray(rng.integers(0, 256, (80, 50), dtype=np.uint8)).save(src / "mate-backgrounds--Sea.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)).save(src / "unsplash--cat--1.png")
    (src / "unsplash--broken.jpg").write_bytes(b"not a jpeg")
    return src


def written(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.jpg"))}


def test_crops_by_class_independent_of_workers(photos, tmp_path):
    crop_set = load_script()
    one = crop_set.main([str(photos), str(tmp_path / "one"), *ARGS, "--workers", "1"])
    two = crop_set.main([str(photos), str(tmp_path / "two"), *ARGS, "--workers", "2"])
    assert one == two
    assert one["classes"] == {"mate-backgrounds": 6, "unsplash": 3}
    assert one["photos"] == {"mate-backgrounds": 2, "unsplash": 1}
    assert list(one["skipped"]) == ["unsplash--broken.jpg"]
    files = written(tmp_path / "one")
    assert sorted(files) == sorted([f"mate-backgrounds/mate-backgrounds--{stem}-{k}.jpg"
                                    for stem in ("Dune", "Sea") for k in range(3)]
                                   + [f"unsplash/unsplash--cat--1-{k}.jpg" for k in range(3)])
    assert files == written(tmp_path / "two")  # byte for byte
    for path in (tmp_path / "one").rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.size == (16, 16) and image.mode == "RGB"
    crop_set.main([str(photos), str(tmp_path / "other"), *ARGS[:-1], "1", "--workers", "1"])
    assert written(tmp_path / "other") != files  # another seed, other crops


def test_name_without_class_needs_a_default(photos, tmp_path):
    crop_set = load_script()
    Image.new("RGB", (20, 20)).save(photos / "plain.png")
    with pytest.raises(ValueError, match=r"plain\.png: no class.*--default-class"):
        crop_set.main([str(photos), str(tmp_path / "out"), *ARGS, "--workers", "1"])
    assert not (tmp_path / "out").exists()  # names are checked before anything is written
    summary = crop_set.main([str(photos), str(tmp_path / "out"), *ARGS, "--workers", "1", "--default-class", "misc"])
    assert summary["classes"]["misc"] == 3 and len(list((tmp_path / "out" / "misc").glob("plain-*.jpg"))) == 3


def test_class_by_photo_gives_every_photo_its_own_class(photos, tmp_path):
    crop_set = load_script()
    summary = crop_set.main([str(photos), str(tmp_path / "out"), *ARGS, "--workers", "1", "--class-by", "photo"])
    assert summary["classes"] == {"mate-backgrounds--Dune": 3, "mate-backgrounds--Sea": 3, "unsplash--cat--1": 3}
    assert (tmp_path / "out" / "mate-backgrounds--Sea" / "mate-backgrounds--Sea-2.jpg").is_file()
