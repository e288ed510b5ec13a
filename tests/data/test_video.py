"""Tests for reading clips from (and writing) small synthetic videos with PyAV."""

import random

import numpy as np
import pytest

av = pytest.importorskip("av")

from vitok.data.images import resize_center_crop  # noqa: E402
from vitok.data.video import list_videos, read_clip, write_video  # noqa: E402

N, H, W = 20, 48, 64
SQ = 8  # side of the moving square
BAR = (40, 44)  # rows of a static blue bar, identical in every frame


def synthetic(n: int = N, h: int = H, w: int = W) -> np.ndarray:
    """Grey frames with a white square at x = 2 * t + 4 (so its position encodes t) and a blue bar."""
    v = np.full((n, h, w, 3), 30, dtype=np.uint8)
    v[:, BAR[0]:BAR[1], :] = (0, 0, 200)
    for t in range(n):
        v[t, 10:10 + SQ, 2 * t + 4:2 * t + 4 + SQ] = 255
    return v


def frame_index(img: np.ndarray, scale: float = 1.0, left: float = 0.0) -> float:
    """Recover t from the square's centroid; `scale`/`left` undo a resize and crop."""
    xs = np.nonzero(img.min(axis=2) > 128)[1]
    assert xs.size > 0, "square not found"
    cx = (xs.mean() + 0.5 + left) / scale - 0.5  # back to source pixel coordinates
    return (cx - (4 + (SQ - 1) / 2)) / 2


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "square.mp4"
    write_video(path, synthetic())
    return path


def indices(clip: np.ndarray, **kw) -> np.ndarray:
    return np.array([frame_index(f, **kw) for f in clip])


def test_roundtrip_all_frames(video):
    clip = read_clip(video, N, start=0)
    assert clip.shape == (N, H, W, 3) and clip.dtype == np.uint8 and clip.flags.c_contiguous
    np.testing.assert_allclose(indices(clip), np.arange(N), atol=0.25)
    assert np.abs(clip.astype(int) - synthetic().astype(int)).mean() < 6  # lossy but close


@pytest.mark.parametrize("frames,stride,start", [(5, 1, 3), (4, 3, 2), (7, 3, 1), (1, 5, 19), (10, 2, 1)])
def test_order_and_stride(video, frames, stride, start):
    clip = read_clip(video, frames, stride=stride, start=start)
    assert clip.shape == (frames, H, W, 3)
    np.testing.assert_allclose(indices(clip), start + stride * np.arange(frames), atol=0.25)


def test_default_start_is_centred(video):
    clip = read_clip(video, 4, stride=2)  # span 7 of 20 -> start (20 - 7) // 2 = 6
    np.testing.assert_allclose(indices(clip), [6, 8, 10, 12], atol=0.25)


def test_random_start_uses_rng(video):
    starts = []
    for seed in range(12):
        a = read_clip(video, 4, stride=2, rng=random.Random(seed))
        b = read_clip(video, 4, stride=2, rng=random.Random(seed))
        np.testing.assert_array_equal(a, b)  # reproducible per seed
        idx = indices(a)
        s = int(round(idx[0]))
        assert 0 <= s <= N - 7
        np.testing.assert_allclose(idx, s + 2 * np.arange(4), atol=0.25)
        starts.append(s)
    assert len(set(starts)) > 3
    # An explicit start wins over the rng.
    np.testing.assert_allclose(indices(read_clip(video, 2, start=5, rng=random.Random(0))), [5, 6], atol=0.25)


def test_resize_and_consistent_crop(video):
    size = 32
    full = read_clip(video, 6, stride=3, start=1)
    clip = read_clip(video, 6, stride=3, start=1, size=size)
    assert clip.shape == (6, size, size, 3) and clip.dtype == np.uint8
    # Same pixels as resizing each full frame (shorter side 48 -> 32, width 64 -> 43, crop 5 px left).
    np.testing.assert_array_equal(clip, np.stack([resize_center_crop(f, size) for f in full]))
    scale, left = size / H, (round(W * size / H) - size) // 2
    np.testing.assert_allclose(indices(clip, scale=scale, left=left), 1 + 3 * np.arange(6), atol=0.3)
    # The static bar lands on the same rows in every frame, i.e. one crop for all frames.
    bar_rows = [tuple(np.nonzero(f[..., 2].mean(axis=1) > 100)[0]) for f in clip]
    assert len(set(bar_rows)) == 1 and len(bar_rows[0]) > 0


def test_matroska_without_frame_count(tmp_path):
    path = tmp_path / "square.MKV"
    write_video(path, synthetic())
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # count comes from demuxed packets
    np.testing.assert_allclose(indices(read_clip(path, 4, stride=5)), [2, 7, 12, 17], atol=0.25)
    with pytest.raises(ValueError, match="has 20 frames"):
        read_clip(path, 11, stride=2)


def test_too_short(video):
    with pytest.raises(ValueError, match=r"square\.mp4.*has 20 frames.*need at least 22"):
        read_clip(video, 8, stride=3)
    with pytest.raises(ValueError, match=r"has 20 frames.*need at least 21"):
        read_clip(video, 21)
    with pytest.raises(ValueError, match=r"has 20 frames.*need at least 23"):
        read_clip(video, 4, stride=2, start=16)
    read_clip(video, 7, stride=3)  # exactly (7 - 1) * 3 + 1 = 19 <= 20 frames is fine


def test_bad_files(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.mp4.*0 bytes"):
        read_clip(empty, 1)
    text = tmp_path / "notes.mp4"
    text.write_text("definitely not a video\n" * 20)
    for kw in ({}, {"start": 0}):
        with pytest.raises(ValueError, match=r"notes\.mp4"):
            read_clip(text, 1, **kw)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 16)
    with pytest.raises(ValueError, match=r"truncated\.mp4"):
        read_clip(truncated, 1)
    with pytest.raises(FileNotFoundError):
        read_clip(tmp_path / "missing.mp4", 1)


def test_argument_checks(video):
    for kw in ({"frames": 0}, {"frames": 2, "stride": 0}, {"frames": 2, "start": -1}, {"frames": 2, "size": 0}):
        with pytest.raises(ValueError):
            read_clip(video, **kw)


def test_write_video_checks_and_fallback(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="T×H×W×3"):
        write_video(tmp_path / "g.mp4", np.zeros((16, 16, 3), np.uint8))
    # Without libx264 the helper falls back to MPEG-4 Part 2.
    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})
    path = tmp_path / "sub" / "mpeg4.mp4"
    write_video(path, synthetic(), fps=12)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "mpeg4" and s.average_rate == 12
    np.testing.assert_allclose(indices(read_clip(path, N, start=0)), np.arange(N), atol=0.3)


def test_list_videos(tmp_path):
    for rel in ["b/clip.MP4", "a.webm", "b/c/deep.avi", "z.mkv", "y.Mov", "notes.txt", "x.mp4.txt", "img.png"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    (tmp_path / "dir.mp4").mkdir()  # a directory with a video suffix is not a video
    got = [p.relative_to(tmp_path).as_posix() for p in list_videos(tmp_path)]
    assert got == ["a.webm", "b/c/deep.avi", "b/clip.MP4", "y.Mov", "z.mkv"]
    with pytest.raises(NotADirectoryError):
        list_videos(tmp_path / "missing")
