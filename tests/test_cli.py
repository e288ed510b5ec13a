"""The `vitok` command: info and reconstruct, in-process and as a real subprocess."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import tiny_config
from vitok.cli import main
from vitok.data import bundled_photos, load_image
from vitok.metrics import psnr, ssim
from vitok.data import to_tensor
from vitok.model import ViTok


def test_info_prints_every_quantity(capsys):
    assert main(["info", "S-B/16", "--channels", "16", "--image-size", "256"]) == 0
    out = capsys.readouterr().out
    for text in ("encoder 43.1M", "decoder 85.6M", "L=256 tokens", "c=16 channels", "E=4096 floats",
                 "48.0x", "encode 23.3", "decode 46.2", "GMACs = 34.7"):
        assert text in out, text


def test_info_json_and_all_variants(capsys):
    assert main(["info", "S-B/4x8", "--channels", "8", "--image-size", "128", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["grid"] == [4, 16, 16] and d["bottleneck"] == 1024 * 8
    assert main(["info", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert names == ["S-B/16", "S-L/16", "L-B/16", "S-B/8", "S-B/32", "S-B/4x8", "S-B/4x16"]


def test_info_bad_name_is_a_clear_error(capsys):
    assert main(["info", "S-Q/16"]) == 2
    assert "unknown size 'Q'" in capsys.readouterr().err


def test_reconstruct_writes_images_and_reports_metrics(tmp_path, capsys):
    model = ViTok(tiny_config())
    model.save_pretrained(tmp_path / "ckpt")
    photos = bundled_photos()[:2]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"")
    code = main(["reconstruct", str(tmp_path / "ckpt"), *map(str, photos), str(broken), "--out", str(tmp_path / "out"),
                 "--size", "64"])
    assert code == 0
    captured = capsys.readouterr()
    assert "PSNR" in captured.out and "SSIM" in captured.out and "skipped" in captured.err
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [s["file"] for s in report["skipped_files"]] == [str(broken)]
    assert len(report["images"]) == 2
    for row, photo in zip(report["images"], photos):
        written = np.asarray(Image.open(row["output"]))
        assert written.shape == (64, 64, 3)
        # The printed metrics are those of the written file against the cropped input.
        from vitok.data import resize_center_crop
        x = to_tensor(resize_center_crop(load_image(photo), 64)).unsqueeze(0)
        y = to_tensor(written).unsqueeze(0)
        assert abs(psnr(x, y).item() - row["psnr"]) < 1e-9
        assert abs(ssim(x, y).item() - row["ssim"]) < 1e-9


def test_reconstruct_keeps_native_size_cropped_to_the_patch(tmp_path):
    ViTok(tiny_config()).save_pretrained(tmp_path / "ckpt")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["reconstruct", str(tmp_path / "ckpt"), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]) == 0
    assert np.asarray(Image.open(tmp_path / "o" / "a.png")).shape == (32, 48, 3)


def test_reconstruct_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "none"), "x.png", "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_python_dash_m_vitok_runs():
    result = subprocess.run([sys.executable, "-m", "vitok", "info", "S-B/32", "--image-size", "128"],
                            capture_output=True, text=True, check=True)
    assert "S-B/32" in result.stdout and "L=16 tokens" in result.stdout


def test_weights_names_a_missing_folder_and_how_to_set_it(tmp_path, capsys):
    assert main(["weights", "--weights", str(tmp_path / "nonexistent")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'nonexistent'}" in out and "this folder does not exist" in out
    assert "--weights" in out and "$VITOK_WEIGHTS" in out
    assert main(["weights", "--weights", str(tmp_path)]) == 0
    assert "does not exist" not in capsys.readouterr().out


def test_eval_prints_notes_and_identical_count(tmp_path, capsys, monkeypatch):
    import vitok.eval.run as run

    document = {"num_samples": 3, "seconds": 1.0, "metrics": {"psnr": 30.0}, "not_computed": {},
                "notes": {"rfvd": "computed on 10-frame clips"}, "psnr_infinite": 2, "skipped_files": []}
    monkeypatch.setattr(run, "run_eval", lambda *args, **kwargs: document)
    assert main(["eval", str(tmp_path), "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "rfvd      note: computed on 10-frame clips" in out and "2 reconstruction(s) identical" in out


# --- reconstruct: bad arguments, and nothing the user has is written over ---------------------------

import errno  # noqa: E402
import os  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def recon(tmp_path):
    """(checkpoint, photos folder holding coffee.png and tea.jpg) for reconstruct tests."""
    ViTok(tiny_config()).save_pretrained(tmp_path / "ckpt")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(photos / "coffee.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(photos / "tea.jpg")
    return tmp_path / "ckpt", photos


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("extra, message", [
    (["--size", "0"], "--size must be a positive integer (the side of the square crop, in pixels), got 0"),
    (["--size", "-5"], "--size must be a positive integer (the side of the square crop, in pixels), got -5"),
    (["--size", "4"], "--size 4 is smaller than the model's patch size 8"),
    (["--device", "foo"], "--device 'foo' is not a torch device; pass cpu, cuda or cuda:N"),
    (["--device", "cuda"], "--device cuda: CUDA is not available here"),
])
def test_reconstruct_bad_arguments_are_clear_errors_before_any_work(recon, tmp_path, capsys, monkeypatch, extra,
                                                                   message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ckpt, photos = recon
    code = main(["reconstruct", str(ckpt), str(photos / "coffee.png"), "--out", str(tmp_path / "o"), *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _link(kind, photos, tmp_path):
    """An --out folder whose coffee.png is the input photos/coffee.png, reached as `kind` says."""
    if kind == "same folder":
        return photos
    out = tmp_path / kind.replace(" ", "_")
    out.mkdir()
    (os.symlink if kind == "symbolic link" else os.link)(photos / "coffee.png", out / "coffee.png")
    return out


@pytest.mark.parametrize("kind", ["same folder", "symbolic link", "hard link"])
def test_reconstruct_never_writes_over_an_input(recon, tmp_path, capsys, kind):
    ckpt, photos = recon
    out = _link(kind, photos, tmp_path)
    before = _snapshot(photos)
    code = main(["reconstruct", str(ckpt), str(photos / "coffee.png"), str(photos / "tea.jpg"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"would write {out / 'coffee.png'} over the input {photos / 'coffee.png'}" in err
    assert "pass another --out folder" in err
    assert _snapshot(photos) == before and not (out / "metrics.json").exists()


@pytest.mark.parametrize("existing, message", [
    ("tea.png", "already holds {out}/tea.png, which vitok did not write there"),
    ("metrics.json", "already holds {out}/metrics.json, which vitok did not write there"),
])
def test_reconstruct_never_writes_over_a_users_file(recon, tmp_path, capsys, existing, message):
    ckpt, photos = recon
    out = tmp_path / "o"
    out.mkdir()
    (out / existing).write_text("the user's own file")
    assert main(["reconstruct", str(ckpt), str(photos / "tea.jpg"), "--out", str(out)]) == 2
    assert message.format(out=out) in capsys.readouterr().err
    assert (out / existing).read_text() == "the user's own file"


def test_reconstruct_reruns_into_its_own_folder(recon, tmp_path):
    ckpt, photos = recon
    args = ["reconstruct", str(ckpt), str(photos / "coffee.png"), "--out", str(tmp_path / "o")]
    assert main(args) == 0 and main(args) == 0  # its own earlier outputs may be replaced
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["coffee.png", "metrics.json"]


def test_reconstruct_out_that_is_a_file_is_a_clear_error(recon, tmp_path, capsys):
    ckpt, photos = recon
    (tmp_path / "taken").write_text("x")
    assert main(["reconstruct", str(ckpt), str(photos / "coffee.png"), "--out", str(tmp_path / "taken")]) == 2
    assert "--out" in (err := capsys.readouterr().err) and "is an existing file" in err


def test_reconstruct_on_a_full_disk_says_so_and_leaves_no_partial_png(recon, tmp_path, capsys, monkeypatch):
    ckpt, photos = recon

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(["reconstruct", str(ckpt), str(photos / "coffee.png"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"could not write {tmp_path / 'o' / 'coffee.png'}: No space left on device (the disk is full?" in err
    assert list((tmp_path / "o").iterdir()) == []  # no 0-byte PNG, no temporary file


def test_reconstruct_skips_an_image_above_the_token_limit_with_the_size_that_fits(recon, tmp_path, capsys,
                                                                                 monkeypatch):
    import vitok.model.checks as checks

    ckpt, photos = recon
    monkeypatch.setattr(checks, "MAX_TOKENS_CPU", 8)  # a 32x32 photo at patch 8 makes 16 tokens
    args = ["reconstruct", str(ckpt), str(photos / "coffee.png"), "--out", str(tmp_path / "o"), "--no-tiling"]
    assert main(args) == 1  # nothing reconstructed
    err = capsys.readouterr().err
    assert "skipped" in err and "32x32 pixels make 16 tokens, above the limit of 8" in err and "--size 16" in err
    assert main(args + ["--size", "16"]) == 0
    assert (tmp_path / "o" / "coffee.png").is_file()


def test_reconstruct_announces_a_large_image_before_the_long_work(recon, tmp_path, capsys, monkeypatch):
    import vitok.cli as cli

    ckpt, photos = recon
    monkeypatch.setattr(cli, "LARGE_IMAGE_TOKENS", 8)  # a 32x32 photo at patch 8 makes 16 tokens
    assert main(["reconstruct", str(ckpt), str(photos / "coffee.png"), "--out", str(tmp_path / "o")]) == 0
    assert "note: 32x32 pixels make 16 tokens; on a CPU this takes a while" in capsys.readouterr().err


def test_reconstruct_tiles_large_images(recon, tmp_path, capsys):
    """Explicit tiles equal the Python API's tiled encode/decode; tiling flags are checked."""
    import json

    import torch

    from vitok.data.images import center_crop_to_multiple, load_image, to_tensor
    from vitok.model import ViTok
    from vitok.model.tiling import Tiling

    ckpt, photos = recon
    out = tmp_path / "t"
    assert main(["reconstruct", str(ckpt), str(photos / "coffee.png"), "--out", str(out), "--tile-size", "16",
                 "--tile-overlap", "8"]) == 0
    model = ViTok.from_pretrained(ckpt)
    x = to_tensor(center_crop_to_multiple(load_image(photos / "coffee.png"), 8)).unsqueeze(0)
    tiling = Tiling(tile_size=16, overlap=8)
    with torch.no_grad():
        want = model.decode(model.encode(x, tiling=tiling).mode(), size=tuple(x.shape[-2:]), tiling=tiling)
    from vitok.metrics.image import psnr

    assert json.loads((out / "metrics.json").read_text())["images"][0]["psnr"] == \
        pytest.approx(float(psnr(x, want)[0]), abs=1e-6)
    for flags, match in ((["--no-tiling", "--tile-size", "16"], "contradicts"), (["--tile-overlap", "8"], "needs"),
                         (["--tile-size", "12"], "multiple of the tubelet side 8")):
        assert main(["reconstruct", str(ckpt), str(photos / "coffee.png"), "--out", str(tmp_path / "e"), *flags]) == 2
        assert match in capsys.readouterr().err
