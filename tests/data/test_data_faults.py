"""Bad data a user can hand vitok: odd files in a folder, globs of the wrong kind, cut tar shards, full disks.

Each case must be read correctly or skipped and named with its reason (or refused up front with a
clear error): nothing disappears without a word, nothing hangs, nothing is half written.
"""

import errno
import io
import os
import signal
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitok.data.datasets import ImageFolder, TarShards, list_images, open_dataset, resolve_glob, shard_paths
from vitok.data.images import read_image_bytes, write_atomic
from vitok.data.training import TrainShards, make_train_loader
from vitok.data.video import list_videos, read_clip

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)


@pytest.fixture
def no_hang():
    """Fail instead of hanging (a FIFO opened for reading blocks until someone writes)."""
    def expire(signum, frame):
        raise TimeoutError("reading the folder hung")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _png16(path: Path, array: np.ndarray) -> None:
    """A 16-bit-per-sample PNG (Pillow cannot write RGB ones), from an H×W×C uint16 array."""
    h, w, c = array.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\0" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _odd_folder(root: Path, outside: Path) -> dict[str, str | None]:
    """A folder holding every kind of entry; returns {relative name: None (read) or a reason fragment (skipped)}."""
    root.mkdir()
    image = Image.fromarray(RGB)
    image.save(root / "rgb.png")
    image.convert("1").save(root / "one_bit.png")
    image.convert("CMYK").save(root / "cmyk.jpg")
    image.convert("LA").save(root / "gray_alpha.png")
    image.convert("P").save(root / "palette_transparent.png", transparency=0)
    image.convert("P").save(root / "palette.gif", transparency=0)
    Image.fromarray(np.full((12, 16), 257 * 200, dtype=np.uint16)).save(root / "gray16.png")  # mode I;16
    Image.fromarray(np.full((12, 16), 0.5, dtype=np.float32)).save(root / "float.tif")  # mode F
    _png16(root / "rgb16.png", RGB.astype(np.uint16) * 257)
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image: not listed, not reported")
    os.symlink("rgb.png", root / "link.png")
    os.symlink("missing.png", root / "broken.png")
    os.symlink("loop.png", root / "loop.png")
    os.mkfifo(root / "pipe.png")
    (root / "folder.jpg").mkdir()  # a folder named like an image is walked, not read
    image.save(root / "folder.jpg" / "inner.png")
    os.symlink("..", root / "folder.jpg" / "up")  # a folder loop: each folder is walked once
    outside.mkdir()
    image.save(outside / "elsewhere.png")
    os.symlink(outside, root / "linked")  # a linked folder is followed
    image.save(root / "unreadable.png")
    os.chmod(root / "unreadable.png", 0)
    # root reads any file whatever its mode; anyone else gets "Permission denied", a named skip.
    unreadable = None if os.geteuid() == 0 else "Permission denied"
    return {"rgb.png": None, "one_bit.png": None, "cmyk.jpg": None, "gray_alpha.png": None,
            "palette_transparent.png": None, "palette.gif": None, "gray16.png": None, "float.tif": None,
            "rgb16.png": None, "link.png": None, "folder.jpg/inner.png": None, "linked/elsewhere.png": None,
            "empty.jpg": "file is empty (0 bytes)", "broken.png": "broken symbolic link (it points to missing.png",
            "loop.png": "symbolic link loop", "pipe.png": "named pipe (FIFO)", "unreadable.png": unreadable}


def test_every_entry_of_a_folder_is_read_or_skipped_and_named(tmp_path, no_hang):
    expected = _odd_folder(tmp_path / "data", tmp_path / "outside")
    items = list(ImageFolder(tmp_path / "data", 8, upsample=True))
    seen = {}
    for item in items:
        name = Path(item.get("key") or item["skipped"]).relative_to(tmp_path / "data").as_posix()
        seen[name] = item.get("reason")
        if "pixels" in item:
            assert item["pixels"].shape == (3, 8, 8)
    assert sorted(seen) == sorted(expected), "an entry vanished or was read twice"
    for name, reason in expected.items():
        if reason is None:
            assert seen[name] is None, f"{name} was skipped: {seen[name]}"
        else:
            assert seen[name] is not None and reason in seen[name], (name, seen[name])
    # The same listing serves videos: a FIFO named .mp4 is named by read_clip, not waited on.
    os.mkfifo(tmp_path / "data" / "pipe.mp4")
    assert list_videos(tmp_path / "data") == [tmp_path / "data" / "pipe.mp4"]
    with pytest.raises(ValueError, match="pipe.mp4: not a regular file but a named pipe"):
        read_clip(tmp_path / "data" / "pipe.mp4", 2)


@pytest.mark.parametrize("name, write, expected", [
    ("gray16.png", lambda p: Image.fromarray(np.full((4, 4), 257 * 200, dtype=np.uint16)).save(p), 200),
    ("rgb16.png", lambda p: _png16(p, np.full((4, 4, 3), 257 * 77, dtype=np.uint16)), 77),
    ("float.tif", lambda p: Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(p), 128),
    ("transparent.png", lambda p: Image.new("LA", (4, 4), (0, 0)).save(p), 255),  # transparent -> white
])
def test_odd_bit_depths_decode_to_the_right_values(tmp_path, name, write, expected):
    write(tmp_path / name)
    item = ImageFolder(tmp_path, 4)[0]
    assert int(item["pixels"].float().mean().round()) == expected


def test_a_folder_that_cannot_be_listed_is_a_clear_error(tmp_path, monkeypatch):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "sub":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ValueError, match=r"cannot list the folder .*sub \(Permission denied\)"):
        list_images(tmp_path)


def test_read_image_bytes_names_what_is_wrong_with_the_path(tmp_path, no_hang):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ValueError, match="named pipe"):
        read_image_bytes(tmp_path / "pipe.png")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_image_bytes(tmp_path / "none.png")


# --- globs --------------------------------------------------------------------------------------

def _shard(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _png_bytes(value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def mixed(tmp_path):
    """imgs/ holding 3 JPEGs and a text file; shards/ holding 2 shards; both/ holding one of each kind."""
    for folder in ("imgs", "shards", "both"):
        (tmp_path / folder).mkdir()
    for i in range(3):
        Image.fromarray(RGB).save(tmp_path / "imgs" / f"{i}.jpg")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored beside images")
    for i in range(2):
        _shard(tmp_path / "shards" / f"s{i}.tar", {f"k{j}.png": _png_bytes(j) for j in range(2)})
    Image.fromarray(RGB).save(tmp_path / "both" / "a.jpg")
    _shard(tmp_path / "both" / "b.tar", {"k.png": _png_bytes()})
    return tmp_path


@pytest.mark.parametrize("pattern, kind, count", [
    ("imgs/*.jpg", "images", 3),
    ("imgs/*", "images", 3),
    ("shards/*.tar", "shards", 2),
])
def test_a_glob_is_resolved_by_what_it_matches(mixed, pattern, kind, count):
    assert resolve_glob(str(mixed / pattern)) == (kind, sorted(p for p in (mixed / pattern).parent.glob(
        Path(pattern).name) if not p.name.endswith(".txt")))
    dataset = open_dataset(str(mixed / pattern), 8, upsample=True)
    assert isinstance(dataset, ImageFolder if kind == "images" else TarShards)
    items = list(dataset)
    assert len(items) == (count if kind == "images" else count * 2) and all("pixels" in it for it in items)


@pytest.mark.parametrize("call, pattern, message", [
    (resolve_glob, "both/*", r"matches more than one kind of file: images \(a.jpg, ...\), shards \(b.tar, ...\)"),
    (resolve_glob, "none/*.jpg", r"no tar shards match .*none/\*.jpg, nor any image or video file"),
    (shard_paths, "imgs/*.jpg", r"matches images, not .tar shards; here a glob must name .tar shards: pass the "
                                r"folder that holds the images instead"),
    (lambda source: open_dataset(source, 8, frames=4), "imgs/*.jpg",
     r"video evaluation needs a folder of video files .* matches image files"),
])
def test_globs_that_cannot_be_used_are_clear_errors(mixed, call, pattern, message):
    with pytest.raises(ValueError, match=message):
        call(str(mixed / pattern))


def test_the_training_loader_reads_a_glob_of_images(mixed):
    loader, heldout, info = make_train_loader(str(mixed / "imgs" / "*.jpg"), size=8, batch_size=2, holdout=1,
                                              pin_memory=False)
    assert info["kind"] == "images" and info["train_files"] == 2 and len(heldout) == 1
    assert next(iter(loader))["pixels"].shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"matches images, but training with frames=4 reads video files"):
        make_train_loader(str(mixed / "imgs" / "*.jpg"), size=8, batch_size=2, frames=4)


# --- tar shards cut short -----------------------------------------------------------------------

def _cut_shard(path: Path, cut: str) -> tuple[Path, int]:
    """A 3-member shard cut as `cut` says; returns it and how many members survive whole."""
    _shard(path, {f"k{i}.png": _png_bytes(40 * i) for i in range(3)})
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512  # where the end-of-archive marker starts
    cuts = {"intact": (len(data), 3), "at a member boundary": (last.offset, 2), "after the last member": (end, 3),
            "inside the end marker": (end + 512, 3), "inside a member": (last.offset_data + last.size // 2, 2)}
    size, whole = cuts[cut]
    path.write_bytes(data[:size])
    return path, whole


CUTS = [("intact", None), ("at a member boundary", "no end-of-archive marker"),
        ("after the last member", "no end-of-archive marker"), ("inside the end marker", "no end-of-archive marker"),
        ("inside a member", "unreadable tar shard")]


@pytest.mark.parametrize("cut, reason", CUTS)
def test_eval_shards_report_a_cut_and_keep_the_samples_before_it(tmp_path, cut, reason):
    shard, whole = _cut_shard(tmp_path / "s.tar", cut)
    items = list(TarShards([shard], 8))
    assert [it["key"] for it in items if "pixels" in it] == [f"s.tar/k{i}.png" for i in range(whole)]
    skipped = [it for it in items if "skipped" in it]
    if reason is None:
        assert not skipped
    else:
        assert [it["skipped"] for it in skipped] == [str(shard)] and reason in skipped[0]["reason"]


@pytest.mark.parametrize("cut, reason", CUTS)
def test_training_shards_report_a_cut_and_keep_the_samples_before_it(tmp_path, cut, reason):
    shard, whole = _cut_shard(tmp_path / "s.tar", cut)
    items = list(TrainShards([shard], 8, batch_size=1).read_shard(shard))
    assert [it["key"] for it in items if "pixels" in it] == [f"s.tar/k{i}.png" for i in range(whole)]
    skipped = [it for it in items if "skipped" in it]
    if reason is None:
        assert not skipped
    else:  # a cut inside a member also names that member, whose read fails first
        assert skipped[-1]["skipped"] == str(shard) and reason in skipped[-1]["reason"]


def test_a_link_inside_a_shard_is_named_not_dropped(tmp_path):
    path = _shard(tmp_path / "s.tar", {"a.png": _png_bytes()})
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo("b.png")
        info.type, info.linkname = tarfile.SYMTYPE, "a.png"
        tar.addfile(info)
    for items in (list(TarShards([path], 8)), list(TrainShards([path], 8, batch_size=1).read_shard(path))):
        assert [it.get("key", it.get("skipped")) for it in items] == ["s.tar/a.png", "s.tar/b.png"]
        assert "a symbolic link to a.png inside the tar, not image data" in items[1]["reason"]


def test_a_fifo_shard_is_refused_not_waited_on(tmp_path, no_hang):
    os.mkfifo(tmp_path / "s.tar")
    with pytest.raises(ValueError, match=r"cannot be read as files: .*s.tar: not a regular file but a named pipe"):
        TarShards([tmp_path / "s.tar"], 8)


# --- writing --------------------------------------------------------------------------------------

def test_write_atomic_on_a_full_disk_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    target = tmp_path / "a.png"
    target.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ValueError, match=r"could not write .*a.png: No space left on device \(the disk is full\?"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_write_atomic_honours_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.bin", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640
