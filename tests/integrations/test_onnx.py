"""ONNX export (vitok.integrations.onnx): tiny random tokenizers exported, run with onnxruntime on the CPU
on real photos, and compared with PyTorch float32."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from conftest import tiny_config  # noqa: E402

from vitok import ViTok  # noqa: E402
from vitok.data import bundled_photos  # noqa: E402
from vitok.integrations import onnx as vonnx  # noqa: E402

# float32 rounding only: measured max |diff| about 1e-7 on latents and 1e-6 on pixels.
ATOL = 1e-4
MIN_PSNR = 60.0


def photos(n: int) -> list:
    return bundled_photos()[:n]


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Float PSNR in dB of [-1, 1] images (peak-to-peak 2), the worst image of the batch."""
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return min(math.inf if float(m) == 0 else 10 * math.log10(4 / float(m)) for m in mse)


def run_onnx(folder, x: torch.Tensor, dynamic: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels -> (latents, reconstruction) through encoder.onnx and decoder.onnx."""
    z = session(folder / "encoder.onnx").run(None, {"pixels": x.numpy()})[0]
    feeds = {"latents": z}
    if dynamic:
        feeds["size"] = np.array(x.shape[-2:], dtype=np.int64)
    x_hat = session(folder / "decoder.onnx").run(None, feeds)[0]
    return torch.from_numpy(z), torch.from_numpy(x_hat)


def run_torch(model: ViTok, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        z = model.encode(x).mode()
        return z, model.decode(z, size=tuple(x.shape[-2:]))


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    """The paper's architecture, dynamic batch and spatial size, checked on 3 bundled photos."""
    torch.manual_seed(0)
    model = ViTok(tiny_config()).eval()
    out = tmp_path_factory.mktemp("onnx") / "v1"
    result = vonnx.export_onnx(model, out, photos=photos(3), batch=3, repeats=1)
    return model, out, result


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    """The v2 architecture, exported from a checkpoint folder. LayerScale is raised from its 1e-4 init so
    the blocks do more than pass their input through, and the un-embedding scaled so that the output
    spans the pixel range as a trained model's does (at init its std is 0.005)."""
    torch.manual_seed(1)
    model = ViTok(tiny_config(architecture="vitok-v2", qk_norm=True)).eval()
    with torch.no_grad():
        for block in [*model.encoder.blocks, *model.decoder.blocks]:
            block.layer_scale.uniform_(0.3, 1.0)
        model.unembed.weight.mul_(100.0)
    folder = tmp_path_factory.mktemp("onnx") / "v2-ckpt"
    model.save_pretrained(folder)
    out = folder.parent / "v2"
    result = vonnx.export_onnx(str(folder), out, photos=photos(2), batch=2, repeats=1)
    return ViTok.from_pretrained(folder), out, result


@pytest.mark.parametrize("which", ["v1", "v2"])
@pytest.mark.parametrize("batch", [1, 3])
def test_graphs_match_pytorch_on_real_photos(request, which, batch):
    model, out, _ = request.getfixturevalue(which)
    x = vonnx.load_photos(photos(batch), 32, 32)
    z_ref, x_ref = run_torch(model, x)
    z, x_hat = run_onnx(out, x)
    assert z.shape == z_ref.shape == (batch, 16, 4)
    assert x_hat.shape == x_ref.shape == (batch, 3, 32, 32)
    assert float((z - z_ref).abs().max()) < ATOL
    assert float((x_hat - x_ref).abs().max()) < ATOL
    assert psnr(x_hat, x_ref) > MIN_PSNR
    assert float(x_ref.std()) > 0.1  # differences measured on outputs that span the pixel range


@pytest.mark.parametrize("which, size", [("v1", (48, 24)), ("v2", (27, 45))])
def test_one_graph_serves_other_sizes(request, which, size):
    # v1: any multiple of p; v2: any size at all (padded to whole patches, cropped back)
    model, out, _ = request.getfixturevalue(which)
    x = vonnx.load_photos(photos(3)[1:], *size)
    z_ref, x_ref = run_torch(model, x)
    z, x_hat = run_onnx(out, x)
    p = model.config.patch_size
    assert z.shape == (2, math.ceil(size[0] / p) * math.ceil(size[1] / p), 4)
    assert x_hat.shape == (2, 3, *size)
    assert float((z - z_ref).abs().max()) < ATOL
    assert psnr(x_hat, x_ref) > MIN_PSNR


def test_decoder_refuses_a_size_that_does_not_fit_the_latents(v1):
    _, out, _ = v1
    z = np.zeros((1, 16, 4), dtype=np.float32)
    decoder = session(out / "decoder.onnx")
    assert decoder.run(None, {"latents": z, "size": np.array([16, 64])})[0].shape == (1, 3, 16, 64)
    with pytest.raises(Exception, match="Reshape|reshape"):
        decoder.run(None, {"latents": z, "size": np.array([32, 40])})


def test_onnx_json_records_the_graphs_and_the_check(v1):
    model, out, result = v1
    meta = json.loads((out / "onnx.json").read_text())
    assert meta["format"] == "vitok-onnx"
    assert meta["vitok_version"] and meta["torch_version"] == torch.__version__
    assert meta["exporter"] == "torch.onnx.export(dynamo=True)"
    assert meta["config"] == model.config.to_dict() and meta["latent_stats"] is None
    assert meta["dynamic_batch"] and meta["dynamic_spatial"] and meta["image_size"] == 32
    # the opset recorded is the one in the files
    for name in ("encoder.onnx", "decoder.onnx"):
        proto = onnx.load(str(out / name))
        assert meta["opset"] == next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    enc, dec = meta["encoder"], meta["decoder"]
    assert enc["inputs"] == [{"name": "pixels", "dtype": "float32", "shape": ["batch", 3, "height", "width"],
                              "dynamic_axes": {"0": "batch", "2": "height", "3": "width"}}]
    assert enc["outputs"] == [{"name": "latents", "dtype": "float32", "shape": ["batch", "tokens", 4],
                               "dynamic_axes": {"0": "batch", "1": "tokens"}}]
    assert [(v["name"], v["dtype"], v["shape"]) for v in dec["inputs"]] == [
        ("latents", "float32", ["batch", "tokens", 4]), ("size", "int64", [2])]
    assert [(v["name"], v["shape"]) for v in dec["outputs"]] == [("pixels", ["batch", 3, "height", "width"])]
    check = meta["check"]
    assert check["photos"] == [p.name for p in photos(3)]
    assert check["max_abs_latents"] < ATOL and check["max_abs_pixels"] < ATOL
    assert check["psnr_db"] == "inf" or check["psnr_db"] > MIN_PSNR
    assert [(r["batch"], r["height"], r["width"]) for r in check["runs"]] == [(3, 32, 32), (1, 32, 16)]
    for key in ("torch_ms_per_image", "onnxruntime_ms_per_image"):
        assert check[key]["total"] > 0
        assert check[key]["total"] == pytest.approx(check[key]["encode"] + check[key]["decode"])
    assert check["threads"] >= 1
    # the returned dict is what was written
    assert json.loads(json.dumps(vonnx._jsonable(result))) == meta


def test_v2_check_covers_a_size_that_is_not_whole_patches(v2):
    _, out, result = v2
    runs = result["check"]["runs"]
    assert [(r["height"], r["width"]) for r in runs] == [(32, 32), (32, 19)]
    assert max(r["max_abs_latents"] for r in runs) < ATOL
    assert min(r["psnr_db"] for r in runs) > MIN_PSNR
    assert result["config"]["architecture"] == "vitok-v2"
    assert any("pads" in note for note in result["notes"])


def test_summary_lines(v1):
    _, out, result = v1
    text = "\n".join(vonnx.summary_lines(result))
    assert str(out / "encoder.onnx") in text and "dynamic batch and spatial size" in text
    assert "pixels float32[batch, 3, height, width] -> latents float32[batch, tokens, 4]" in text
    assert "size int64[2]" in text and "PSNR" in text and "onnxruntime" in text and "ms" in text


def test_fixed_size_export_into_a_folder_with_files(tmp_path):
    torch.manual_seed(2)
    model = ViTok(tiny_config()).eval()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds files.*overwrite=True"):
        vonnx.export_onnx(model, tmp_path, check=False)
    result = vonnx.export_onnx(model, tmp_path, dynamic_spatial=False, check=False, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the export's own files are replaced
    assert result["check"] is None and not result["dynamic_spatial"]
    assert result["encoder"]["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert [v["name"] for v in result["decoder"]["inputs"]] == ["latents"]  # the grid is the nominal one
    assert result["decoder"]["outputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert any("fixed spatial size" in note for note in result["notes"])
    x = vonnx.load_photos(photos(2), 32, 32)
    z_ref, x_ref = run_torch(model, x)
    z, x_hat = run_onnx(tmp_path, x, dynamic=False)
    assert float((z - z_ref).abs().max()) < ATOL and psnr(x_hat, x_ref) > MIN_PSNR
    with pytest.raises(Exception):  # a fixed-size graph takes its size only
        run_onnx(tmp_path, vonnx.load_photos(photos(1), 48, 48), dynamic=False)


def test_bad_requests_are_refused_before_any_export(tmp_path, monkeypatch):
    model = ViTok(tiny_config()).eval()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="image_size 36 is not a positive multiple of the patch size p=8; "
                                         "use 32 or 40"):
        vonnx.export_onnx(model, out, image_size=36)
    with pytest.raises(ValueError, match="video model"):
        vonnx.export_onnx(ViTok(tiny_config(temporal_patch=2, frames=4)), out)
    with pytest.raises(ValueError, match="opset >= 18"):
        vonnx.export_onnx(model, out, opset=13)
    with pytest.raises(ValueError, match="ViTok or a checkpoint folder"):
        vonnx.export_onnx(object(), out)
    with pytest.raises(ValueError, match="photos is empty"):
        vonnx.export_onnx(model, out, photos=[])
    with pytest.raises(ValueError, match="not a readable file"):
        vonnx.export_onnx(model, out, photos=[tmp_path / "missing.jpg"])
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="existing file, not a folder"):
        vonnx.export_onnx(model, tmp_path / "file")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"needs onnxruntime.*pip install 'vitok\[onnx\]'"):
        vonnx.export_onnx(model, out)
    assert not out.exists()  # nothing was written by any of these


def _cli_has_export() -> bool:
    from vitok.cli import build_parser

    return any(isinstance(action.choices, dict) and "export" in action.choices for action in build_parser()._actions)


@pytest.mark.skipif(not _cli_has_export(), reason="`vitok export` is not wired into cli.py yet")
def test_cli_export_reports_bad_requests(tmp_path, capsys):
    from vitok.cli import main

    torch.manual_seed(0)
    ViTok(tiny_config()).save_pretrained(tmp_path / "ckpt")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.txt").write_text("")
    assert main(["export", str(tmp_path / "ckpt"), "--onnx", str(tmp_path / "out")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "ckpt"), "--onnx", str(tmp_path / "new"), "--image-size", "36"]) == 2
    assert "use 32 or 40" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
