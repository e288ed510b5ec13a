"""Tests for vitok.data.images: bundled photos, robust loading, tensor conversion, cropping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitok.data import (
    bundled_photos,
    center_crop_to_multiple,
    from_tensor,
    load_image,
    resize_center_crop,
    to_tensor,
)


# --- bundled photos -----------------------------------------------------------------------------

def test_bundled_photos_exist_and_load() -> None:
    paths = bundled_photos()
    assert len(paths) >= 7
    assert paths == sorted(paths)
    names = {p.stem for p in paths}
    assert {"astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "ihc", "retina"} <= names
    for p in paths:
        img = load_image(p)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert min(img.shape[:2]) == 256
        assert img.std() > 10  # a real photo, not a flat placeholder


def test_bundled_photos_licenses_present() -> None:
    licenses = bundled_photos()[0].parent / "LICENSES.md"
    text = licenses.read_text(encoding="utf-8")
    for p in bundled_photos():
        assert p.name in text


# --- mode conversion ----------------------------------------------------------------------------

def test_rgb_png_roundtrip(tmp_path) -> None:
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png"), a)


def test_rgba_half_transparent_red_over_white(tmp_path) -> None:
    a = np.zeros((4, 6, 4), dtype=np.uint8)
    a[..., 0] = 255
    a[..., 3] = 128  # half-transparent red
    a[0, 0] = (0, 0, 0, 0)  # fully transparent black must become white, not black
    a[0, 1] = (10, 20, 30, 255)  # opaque pixels keep their colour
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    img = load_image(tmp_path / "rgba.png")
    assert img.shape == (4, 6, 3) and img.dtype == np.uint8
    assert tuple(img[2, 3]) == (255, 127, 127)
    assert tuple(img[0, 0]) == (255, 255, 255)
    assert tuple(img[0, 1]) == (10, 20, 30)


def test_la_composited_on_white(tmp_path) -> None:
    a = np.zeros((3, 3, 2), dtype=np.uint8)
    a[..., 0] = 0
    a[..., 1] = 255
    a[1, 1] = (0, 0)  # transparent black -> white
    a[2, 2] = (100, 51)  # 20% opaque grey 100 -> 100*0.2 + 255*0.8 = 224
    Image.fromarray(a, "LA").save(tmp_path / "la.png")
    img = load_image(tmp_path / "la.png")
    assert tuple(img[0, 0]) == (0, 0, 0)
    assert tuple(img[1, 1]) == (255, 255, 255)
    assert tuple(img[2, 2]) == (224, 224, 224)


def _palette_image() -> Image.Image:
    im = Image.new("P", (4, 2))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2, 0, 1, 2, 0, 1])
    return im


def test_palette_without_transparency(tmp_path) -> None:
    _palette_image().save(tmp_path / "p.png")
    img = load_image(tmp_path / "p.png")
    assert tuple(img[0, 0]) == (255, 0, 0)
    assert tuple(img[0, 1]) == (0, 255, 0)
    assert tuple(img[0, 2]) == (0, 0, 255)


def test_palette_with_transparency(tmp_path) -> None:
    im = _palette_image()
    im.save(tmp_path / "pt.png", transparency=1)  # index 1 (green) fully transparent
    assert Image.open(tmp_path / "pt.png").mode == "P"
    img = load_image(tmp_path / "pt.png")
    assert tuple(img[0, 0]) == (255, 0, 0)
    assert tuple(img[0, 1]) == (255, 255, 255)
    assert tuple(img[0, 2]) == (0, 0, 255)


def test_grayscale_l(tmp_path) -> None:
    a = np.array([[0, 64], [128, 255]], dtype=np.uint8)
    Image.fromarray(a, "L").save(tmp_path / "l.png")
    img = load_image(tmp_path / "l.png")
    assert img.shape == (2, 2, 3)
    np.testing.assert_array_equal(img, np.repeat(a[..., None], 3, axis=2))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grayscale_scaled_not_clipped(tmp_path, suffix) -> None:
    a = np.array([[0, 257, 32768], [65535, 5000, 1000]], dtype=np.uint16)
    path = tmp_path / f"g16{suffix}"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I;16")
    img = load_image(path)
    expected = np.round(a / 257.0).astype(np.uint8)  # 0, 1, 128, 255, 19, 4
    np.testing.assert_array_equal(img[..., 0], expected)
    np.testing.assert_array_equal(img[..., 0], img[..., 2])


def test_32bit_int_mode_treated_as_16bit(tmp_path) -> None:
    a = np.array([[0, 65535], [32896, 257]], dtype=np.int32)
    Image.fromarray(a, "I").save(tmp_path / "i32.tif")
    img = load_image(tmp_path / "i32.tif")
    np.testing.assert_array_equal(img[..., 1], [[0, 255], [128, 1]])


def test_float_mode_unit_range(tmp_path) -> None:
    a = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    Image.fromarray(a, "F").save(tmp_path / "f.tif")
    img = load_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(img[..., 0], [[0, 128], [255, 64]])


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk(tmp_path, fmt) -> None:
    im = Image.new("CMYK", (8, 8), (255, 0, 0, 0))  # pure cyan
    path = tmp_path / f"cmyk.{fmt.lower()}"
    im.save(path, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    assert Image.open(path).mode == "CMYK"
    img = load_image(path)
    tol = 0 if fmt == "TIFF" else 3
    np.testing.assert_allclose(img[4, 4].astype(int), (0, 255, 255), atol=tol)


def test_exif_orientation_6_rotates(tmp_path) -> None:
    # Stored landscape 6 wide x 4 tall with a red top-left pixel; tag 6 = rotate 90° clockwise
    # to display, so the result is 4 wide x 6 tall with the red pixel at the top-right.
    a = np.zeros((4, 6, 3), dtype=np.uint8)
    a[0, 0] = (255, 0, 0)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "rot.png", exif=exif)
    img = load_image(tmp_path / "rot.png")
    assert img.shape == (6, 4, 3)
    assert tuple(img[0, 3]) == (255, 0, 0)
    assert img.sum() == 255


# --- failures -----------------------------------------------------------------------------------

def test_zero_byte_file_raises(tmp_path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.jpg"):
        load_image(path)


def test_truncated_jpeg_raises(tmp_path) -> None:
    a = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(a).save(full, quality=90)
    data = full.read_bytes()
    cut = tmp_path / "cut_in_half.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut_in_half.jpg"):
        load_image(cut)


def test_truncated_jpeg_raises_even_if_global_flag_set(tmp_path, monkeypatch) -> None:
    from PIL import ImageFile

    a = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(a).save(full)
    cut = tmp_path / "half.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ValueError, match="half.jpg"):
        load_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # caller's setting restored


def test_text_file_named_png_raises(tmp_path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ValueError, match="notes.png"):
        load_image(path)


def test_missing_file_raises(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


# --- tensor conversion --------------------------------------------------------------------------

def test_tensor_round_trip_exact_for_all_uint8_values() -> None:
    a = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3) % 256
    a = a.astype(np.uint8)
    x = to_tensor(a)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    back = from_tensor(x)
    assert back.dtype == np.uint8 and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


def test_to_tensor_channel_layout() -> None:
    a = np.zeros((2, 3, 3), dtype=np.uint8)
    a[..., 0] = 255
    x = to_tensor(a)
    assert torch.all(x[0] == 1.0) and torch.all(x[1] == -1.0) and torch.all(x[2] == -1.0)


def test_from_tensor_clamps_and_rounds() -> None:
    x = torch.tensor([-2.0, 2.0, 0.0, -1.0 + 1.4 / 127.5]).reshape(1, 1, 4).expand(3, 1, 4)
    out = from_tensor(x)
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 128, 1])


def test_tensor_helpers_reject_bad_input() -> None:
    with pytest.raises(ValueError):
        to_tensor(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        to_tensor(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        from_tensor(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError):
        from_tensor(torch.zeros(4, 4, 3))


# --- cropping -----------------------------------------------------------------------------------

def test_center_crop_to_multiple_shapes_and_centring() -> None:
    a = np.arange(37 * 50).reshape(37, 50)[..., None].repeat(3, axis=2)
    out = center_crop_to_multiple(a, 16)
    assert out.shape == (32, 48, 3)
    # 37 -> 32 drops 5 rows: 2 top, 3 bottom; 50 -> 48 drops 1 column each side.
    np.testing.assert_array_equal(out, a[2:34, 1:49])
    assert center_crop_to_multiple(a, 1).shape == a.shape


def test_center_crop_to_multiple_errors() -> None:
    a = np.zeros((10, 40, 3), dtype=np.uint8)
    with pytest.raises(ValueError):
        center_crop_to_multiple(a, 16)
    with pytest.raises(ValueError):
        center_crop_to_multiple(a, 0)


@pytest.mark.parametrize("shape", [(300, 451, 3), (451, 300, 3), (256, 256, 3), (100, 140, 3)])
def test_resize_center_crop_shapes(shape) -> None:
    a = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    out = resize_center_crop(a, 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8


def test_resize_center_crop_keeps_constant_colour_and_centre() -> None:
    a = np.full((200, 400, 3), 90, dtype=np.uint8)
    a[:, :60] = 0  # dark left strip: cropped away when centre-cropping 100x200 -> 100x100
    out = resize_center_crop(a, 100)
    assert out.shape == (100, 100, 3)
    assert np.all(np.abs(out.astype(int) - 90) <= 1)


def test_resize_center_crop_errors() -> None:
    with pytest.raises(ValueError):
        resize_center_crop(np.zeros((10, 10), dtype=np.uint8), 8)
    with pytest.raises(ValueError):
        resize_center_crop(np.zeros((10, 10, 3), dtype=np.uint8), 0)
