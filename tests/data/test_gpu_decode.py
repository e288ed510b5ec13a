"""data.decode=gpu: crop plans in the workers, decoding + crop/resize in the training process.

nvJPEG itself needs CUDA and torchvision (tested on the GPU machine); here the batch decoder is
Pillow's, so everything around it (plans, EXIF orientation, crop, resize, flip, fallbacks, skips,
the background thread, the trainer's wiring) is checked against the CPU path on CPU.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from vitok.data.datasets import collate
from vitok.data.gpu_decode import GpuDecoder, Plan, crop_resize, gpu_decode_problem, orient, plan_jpeg
from vitok.data.images import bundled_photos, load_image
from vitok.data.training import TrainImages, TrainShards, make_train_loader
from vitok.data.transforms import TrainAugment, random_crop_box, sample_rng


def pillow_batch(datas, device):
    """The GpuDecoder's batch decoder, with Pillow standing in for nvJPEG: pixels as stored, no EXIF turn."""
    out = []
    for data in datas:
        try:
            with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
                out.append(torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1).to(device))
        except OSError:
            out.append(None)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse) if mse else np.inf


def write_jpeg(path: Path, img: Image.Image, orientation: int = 1, **kw) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, format="JPEG", quality=95, exif=exif, **kw)
    return path


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(load_image(bundled_photos()[0])).resize((160, 120), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow_exif_transpose(orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    want = np.asarray(ImageOps.exif_transpose(img))
    got = orient(torch.from_numpy(stored).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("box, size", [((10, 20, 90, 120), 32), ((0, 0, 120, 160), 64), ((5, 7, 20, 24), 48)])
def test_crop_resize_matches_pillow_bicubic(photo, box, size):
    # Down- and upscaling: torch's antialiased bicubic is Pillow's kernel up to rounding.
    top, left, h, w = box
    arr = np.asarray(photo)
    want = np.asarray(photo.crop((left, top, left + w, top + h)).resize((size, size), Image.Resampling.BICUBIC))
    for flip in (False, True):
        got = crop_resize(torch.from_numpy(arr.copy()).permute(2, 0, 1), Plan(top, left, h, w, flip), size)
        got = got.permute(1, 2, 0).numpy()
        ref = want[:, ::-1] if flip else want
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 4  # Pillow rounds to 8 bits between passes
        assert psnr(got, ref) > 45


def test_plan_draws_what_the_cpu_path_draws(tmp_path, photo):
    data = write_jpeg(tmp_path / "a.jpg", photo, orientation=6).read_bytes()
    augment = TrainAugment(32, scale=(0.3, 1.0))
    plan = plan_jpeg(data, augment, sample_rng(3, 1, 0))
    ref = sample_rng(3, 1, 0)
    box = random_crop_box(160, 120, (0.3, 1.0), (3 / 4, 4 / 3), ref)  # orientation 6: upright is 160 x 120
    assert (plan.top, plan.left, plan.height, plan.width) == box and plan.flip == bool(ref.random() < 0.5) and plan.orientation == 6


def test_plan_leaves_other_files_to_the_cpu(tmp_path, photo):
    augment = TrainAugment(32)
    png = io.BytesIO()
    photo.save(png, format="PNG")
    cmyk = io.BytesIO()
    photo.convert("CMYK").save(cmyk, format="JPEG")
    jpeg = write_jpeg(tmp_path / "a.jpg", photo).read_bytes()
    for data in (png.getvalue(), cmyk.getvalue(), b"", b"\xff\xd8garbage", jpeg[:40]):
        rng = sample_rng(0)
        assert plan_jpeg(data, augment, rng) is None
        assert rng.random() == sample_rng(0).random()  # nothing drawn: the CPU path draws the same box
    assert plan_jpeg(jpeg, TrainAugment(32, crop="center"), sample_rng(0)) is None
    assert plan_jpeg(jpeg, augment, sample_rng(0)) is not None


@pytest.fixture()
def mixed_folder(tmp_path, photo) -> Path:
    """JPEGs in several orientations and in greyscale, a PNG, a CMYK JPEG and two broken files."""
    root = tmp_path / "imgs"
    root.mkdir()
    for k, orientation in enumerate((1, 3, 6, 8)):
        write_jpeg(root / f"o{k}.jpg", photo.rotate(15 * k), orientation)
    write_jpeg(root / "grey.jpg", photo.convert("L"))
    photo.save(root / "lossless.png")
    photo.convert("CMYK").save(root / "cmyk.jpg", format="JPEG")
    (root / "empty.jpg").write_bytes(b"")
    full = (root / "o0.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(full[: len(full) // 3])  # header intact, scan data cut short
    return root


def test_gpu_path_matches_cpu_path_batch_for_batch(mixed_folder):
    files = sorted(mixed_folder.iterdir())
    cpu = TrainImages(files, 48, scale=(0.4, 1.0), seed=5)
    gpu = TrainImages(files, 48, scale=(0.4, 1.0), seed=5, gpu_jpeg=True)
    decoder = GpuDecoder(48, "cpu", decode=pillow_batch)
    for epoch in range(3):
        want = collate([cpu[(i, epoch)] for i in range(len(files))])
        pending = collate([gpu[(i, epoch)] for i in range(len(files))])
        kinds = {Path(it["key"]).name: "jpeg" if "span" in it else "pixels" for it in pending["pending"]}
        assert kinds["lossless.png"] == kinds["cmyk.jpg"] == "pixels" and kinds["o2.jpg"] == kinds["grey.jpg"] == "jpeg"
        got = decoder(pending)
        # The cut JPEG: its header plans, Pillow refuses the scan in both paths.
        assert got["keys"] == want["keys"]
        assert sorted(s["file"] for s in got["skipped"]) == sorted(s["file"] for s in want["skipped"])
        assert {Path(s["file"]).name for s in got["skipped"]} == {"empty.jpg", "cut.jpg"}
        assert got["pixels"].dtype == torch.uint8 and got["pixels"].shape == want["pixels"].shape
        augment = TrainAugment(48, scale=(0.4, 1.0))
        for key, a, cpu_pixels in zip(got["keys"], got["pixels"], want["pixels"]):
            if kinds[Path(key).name] == "pixels":  # decoded by the worker: the CPU path itself
                assert torch.equal(a, cpu_pixels), key
                continue
            # The reference: the same rng through a full-size decode (the CPU path decodes JPEGs at a
            # reduced DCT scale when the box allows, which alone costs 25-30 dB on these sharp edges).
            index = files.index(Path(key))
            b = augment(load_image(key), sample_rng(5, epoch, index))
            # Same box and flip: only resampling rounding differs (a wrong box or a missed EXIF turn
            # scores near 15 dB).
            assert psnr(a.permute(1, 2, 0).numpy(), b) > 38, key


def test_refused_jpeg_falls_back_to_pillow(mixed_folder):
    files = [mixed_folder / "o2.jpg", mixed_folder / "o3.jpg"]
    items = [TrainImages(files, 32, seed=1, gpu_jpeg=True)[(i, 0)] for i in range(2)]
    refuse_all = GpuDecoder(32, "cpu", decode=lambda datas, device: [None] * len(datas))
    nvjpeg_like = GpuDecoder(32, "cpu", decode=pillow_batch)
    with pytest.warns(RuntimeWarning, match="data.decode=cpu"):
        a = refuse_all(collate(items))
    b = nvjpeg_like(collate(items))
    assert refuse_all.fallbacks == 2 and nvjpeg_like.fallbacks == 0
    assert torch.equal(a["pixels"], b["pixels"])  # Pillow applies the EXIF turn itself in the fallback


def test_decode_groups_bound_count_and_pixels(mixed_folder):
    files = sorted(p for p in mixed_folder.iterdir() if p.name.startswith("o"))  # 4 JPEGs of 160x120
    items = [TrainImages(files, 32, seed=1, gpu_jpeg=True)[(i, 0)] for i in range(4)]
    assert all(it["plan"].pixels == 160 * 120 for it in items)
    calls = []

    def counting(datas, device):
        calls.append(len(datas))
        return pillow_batch(datas, device)

    whole = GpuDecoder(32, "cpu", decode=pillow_batch)(collate(items))
    for decoder, want in ((GpuDecoder(32, "cpu", decode=counting, group=3), [3, 1]),
                          (GpuDecoder(32, "cpu", decode=counting, group_pixels=2 * 160 * 120), [2, 2]),
                          (GpuDecoder(32, "cpu", decode=counting, group_pixels=1), [1, 1, 1, 1])):
        calls.clear()
        out = decoder(collate(items))
        assert calls == want and torch.equal(out["pixels"], whole["pixels"]) and out["keys"] == whole["keys"]


def test_decoded_size_disagreeing_with_header_is_skipped(mixed_folder):
    item = TrainImages([mixed_folder / "o0.jpg"], 32, seed=1, gpu_jpeg=True)[(0, 0)]
    tiny = GpuDecoder(32, "cpu", decode=lambda datas, device: [torch.zeros(3, 4, 4, dtype=torch.uint8)])
    out = tiny(collate([item]))
    assert out["pixels"] is None and "damaged" in out["skipped"][0]["reason"]


def test_shards_plan_like_folders(tmp_path, photo):
    shard = tmp_path / "s-000.tar"
    with tarfile.open(shard, "w") as tar:
        for k in range(4):
            write_jpeg(tmp_path / "x.jpg", photo.rotate(20 * k), orientation=1 + 2 * k)
            data = (tmp_path / "x.jpg").read_bytes()
            info = tarfile.TarInfo(f"{k:04d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cpu = next(iter(TrainShards([shard], 40, 4, seed=2)))
    gpu = next(iter(TrainShards([shard], 40, 4, seed=2, gpu_jpeg=True)))
    assert "pending" in gpu and all("span" in it for it in gpu["pending"])
    out = GpuDecoder(40, "cpu", decode=pillow_batch)(gpu)
    assert out["keys"] == cpu["keys"]
    for a, b in zip(out["pixels"], cpu["pixels"]):
        assert psnr(a.numpy(), b.numpy()) > 38


def test_ahead_yields_the_batches_in_order_and_raises_errors(mixed_folder):
    loader, _, _ = make_train_loader(mixed_folder, size=32, batch_size=3, workers=0, seed=4, gpu_jpeg=True)
    decoder = GpuDecoder(32, "cpu", decode=pillow_batch)
    it = iter(loader)
    direct = [decoder(next(it)) for _ in range(4)]
    loader2, _, _ = make_train_loader(mixed_folder, size=32, batch_size=3, workers=0, seed=4, gpu_jpeg=True)
    ahead = decoder.ahead(iter(loader2))
    for want in direct:
        got = next(ahead)
        assert got["keys"] == want["keys"] and got["skipped"] == want["skipped"]
        assert (got["pixels"] is None) == (want["pixels"] is None)
        if got["pixels"] is not None:
            assert torch.equal(got["pixels"], want["pixels"])

    def broken():
        yield collate([])
        raise RuntimeError("loader worker died")

    failing = GpuDecoder(32, "cpu", decode=pillow_batch).ahead(broken())
    next(failing)
    with pytest.raises(RuntimeError, match="loader worker died"):
        next(failing)


def test_gpu_decode_refused_off_cuda_and_for_video():
    assert "data.decode=cpu" in gpu_decode_problem(torch.device("cpu"))
    with pytest.raises(ValueError, match="video"):
        make_train_loader("unused", size=32, batch_size=2, frames=4, gpu_jpeg=True)


@pytest.mark.skipif(not torch.cuda.is_available() or gpu_decode_problem(torch.device("cuda")) is not None,
                    reason="nvJPEG needs CUDA and a matching torchvision (run on the GPU machine)")
def test_nvjpeg_decodes_like_pillow_and_isolates_a_bad_file(mixed_folder):
    from vitok.data.gpu_decode import _nvjpeg

    device = torch.device("cuda")
    names = ["o0.jpg", "o2.jpg", "grey.jpg", "cut.jpg"]
    datas = [torch.frombuffer(bytearray((mixed_folder / n).read_bytes()), dtype=torch.uint8) for n in names]
    decoded = _nvjpeg(datas, device)
    reference = pillow_batch(datas, "cpu")
    for name, got, want in zip(names[:3], decoded, reference):
        assert got.device.type == "cuda" and got.shape == want.shape, name
        assert psnr(got.cpu().numpy(), want.numpy()) > 35, name  # two IDCTs, two colour conversions
    # The cut file: refused (None) or decoded to the header's size (nvJPEG may pad a short scan);
    # either way the good files of the batch came through.
    assert decoded[3] is None or decoded[3].shape[-2:] == reference[0].shape[-2:]
    items = [TrainImages([mixed_folder / n for n in names], 48, seed=0, gpu_jpeg=True)[(i, 0)] for i in range(4)]
    out = GpuDecoder(48, device)(collate(items))
    assert out["pixels"].is_cuda and out["pixels"].shape[1:] == (3, 48, 48)


def test_collate_packs_a_batch_of_jpegs_into_one_buffer(mixed_folder):
    files = sorted(mixed_folder.iterdir())
    gpu = TrainImages(files, 32, seed=1, gpu_jpeg=True)
    batch = collate([gpu[(i, 0)] for i in range(len(files))])
    packed = batch["jpegs"]
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    spans = [it["span"] for it in batch["pending"] if "span" in it]
    assert len(spans) == 6 and spans[0][0] == 0 and spans[-1][1] == packed.numel()
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # end to end, in batch order
    for it in batch["pending"]:
        if "span" in it:
            assert "jpeg" not in it
            assert packed[slice(*it["span"])].numpy().tobytes() == Path(it["key"]).read_bytes()


def test_batched_finish_equals_each_crop_finished_alone(mixed_folder):
    """GpuDecoder rounds, clamps and flips the whole batch at once; each crop must be what
    crop_resize gives for that sample alone."""
    from vitok.data.gpu_decode import _pillow_decode

    files = sorted(mixed_folder.iterdir())
    gpu = TrainImages(files, 40, scale=(0.3, 1.0), seed=9, gpu_jpeg=True)
    flips = 0
    for epoch in range(3):
        batch = collate([gpu[(i, epoch)] for i in range(len(files))])
        got = GpuDecoder(40, "cpu", decode=pillow_batch)(batch)
        kept = [it for it in batch["pending"] if not it["key"].endswith("cut.jpg")]  # cut.jpg: skipped
        assert got["keys"] == [it["key"] for it in kept]
        for it, pixels in zip(kept, got["pixels"]):
            if "span" not in it:
                assert torch.equal(pixels, it["pixels"])  # a worker's crop passes through unchanged
                continue
            upright = _pillow_decode(batch["jpegs"][slice(*it["span"])], it["key"])  # upright already
            assert torch.equal(pixels, crop_resize(upright, it["plan"], 40)), it["key"]
            flips += it["plan"].flip
    assert flips > 0
