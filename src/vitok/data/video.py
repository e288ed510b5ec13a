"""Reading fixed-length clips from video files, and writing small videos, with PyAV.

Frames are addressed by their index in presentation (display) order, counting from 0 at the
first decoded frame; timestamps are ignored, so variable-frame-rate files are treated as a
plain sequence of frames. Rotation metadata and non-square pixel aspect ratios are not
applied: frames come out exactly as coded.
"""

from __future__ import annotations

import os
import random
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .images import file_problem, list_files, resize_center_crop

__all__ = ["VIDEO_EXTENSIONS", "VideoWriter", "iter_frames", "list_videos", "read_clip", "video_info", "write_video"]

VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".avi", ".mkv", ".mov"})


def _av() -> Any:
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("video support needs PyAV: pip install av") from e
    return av


def list_videos(root: str | os.PathLike[str]) -> list[Path]:
    """All files under `root` (recursively) with a video extension, case-insensitive, sorted.

    Extensions: .mp4 .webm .avi .mkv .mov. Files are not opened, so the list may include
    unreadable ones (broken links, FIFOs, ...: see images.list_files); :func:`read_clip` reports those.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    return list_files(root, VIDEO_EXTENSIONS)


def _open(path: Path) -> Any:
    """Open `path` with PyAV, turning every decoder/container failure into a ValueError."""
    av = _av()
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable video ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path}: file has no video stream")
    return container


def _count_frames(path: Path) -> int:
    """Number of frames in the first video stream: the container's count, else demuxed packets."""
    av = _av()
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.frames > 0:
            return int(stream.frames)
        # Matroska/WebM and some AVIs carry no frame count; count packets without decoding them
        # (the demuxer ends with an empty flush packet, which is not a frame).
        try:
            return sum(1 for pkt in container.demux(stream) if pkt.size > 0)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable video ({type(e).__name__}: {e})") from e


def read_clip(
    path: str | os.PathLike[str],
    frames: int,
    stride: int = 1,
    start: int | None = None,
    size: int | None = None,
    rng: random.Random | None = None,
) -> np.ndarray:
    """Decode `frames` frames start, start+stride, ... of a video as a T×H×W×3 uint8 RGB array.

    The clip spans ``(frames - 1) * stride + 1`` source frames. `start` (0-based frame index):
    when None, it is drawn uniformly from every valid start with ``rng.randint`` if `rng` is
    given, otherwise the clip is centred in the video (``(N - span) // 2`` for N frames); pass
    ``start=0`` for the first frames. With `size`, each frame's shorter side is resized to
    `size` (Pillow bicubic, antialiased) and the centre size×size is cropped; all frames share
    one resolution, hence exactly the same crop.

    Decoding starts at the first frame (no seeking, so indices are exact) and stops after the
    last frame needed. Raises FileNotFoundError for a missing file and ValueError naming the
    file for empty, unreadable or non-video files and for videos shorter than the clip span.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if start is not None and start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    path = Path(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path}: no such file")
    problem = file_problem(path)  # checked without opening: a FIFO would block
    if problem is not None:
        raise ValueError(f"{path}: {problem}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: file is empty (0 bytes)")

    span = (frames - 1) * stride + 1
    if start is None:
        total = _count_frames(path)
        if total < span:
            raise ValueError(
                f"{path}: video has {total} frames, but {frames} frames at stride {stride} "
                f"need at least {span}"
            )
        start = rng.randint(0, total - span) if rng is not None else (total - span) // 2
    last = start + span - 1

    out: list[np.ndarray] = []
    decoded = 0
    for frame in _decoded(path):
        index = decoded
        decoded += 1
        if index >= start and (index - start) % stride == 0:
            img = frame.to_ndarray(format="rgb24")
            out.append(resize_center_crop(img, size) if size is not None else img)
        if index >= last:
            break
    if len(out) < frames:
        raise ValueError(
            f"{path}: video has {decoded} frames, but {frames} frames at stride {stride} "
            f"from frame {start} need at least {last + 1}"
        )
    return np.ascontiguousarray(np.stack(out))


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: int | float | Fraction = 8) -> None:
    """Write T×H×W×3 uint8 RGB frames as H.264 (libx264, CRF 17) or else MPEG-4 Part 2 video.

    The container follows the file suffix (.mp4 intended; .mkv/.mov/.avi also work); parent
    directories are created. H and W must be even (yuv420p). The codec is lossy.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected T×H×W×3 frames, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got dtype {frames.dtype}")
    t, h, w, _ = frames.shape
    if t == 0 or h == 0 or w == 0:
        raise ValueError(f"frames must be non-empty, got shape {frames.shape}")
    if h % 2 or w % 2:
        raise ValueError(f"height and width must be even for yuv420p video, got {h}x{w}")
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")

    with VideoWriter(path, w, h, rate) as writer:
        for img in frames:
            writer.write(img)


class VideoWriter:
    """Write RGB frames one at a time (H.264 CRF 17, else MPEG-4 Part 2), so a long video never sits in memory.

    with VideoWriter("out.mp4", width, height, fps) as w: w.write(frame)  # H×W×3 uint8 each
    """

    def __init__(self, path: str | os.PathLike[str], width: int, height: int, fps: int | float | Fraction = 8) -> None:
        if height % 2 or width % 2 or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive and even for yuv420p video, got {height}x{width}")
        rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
        if rate <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        av = _av()
        self._av, self.path, self.size = av, Path(path), (height, width)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), mode="w")
        if "libx264" in av.codecs_available:
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.options = {"crf": "17", "preset": "medium"}
        else:
            self.stream = self.container.add_stream("mpeg4", rate=rate)
            self.stream.bit_rate = 8_000_000
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.frames = 0

    def write(self, img: np.ndarray) -> None:
        img = np.asarray(img)
        if img.shape != (*self.size, 3) or img.dtype != np.uint8:
            raise ValueError(f"expected a {self.size[0]}x{self.size[1]}x3 uint8 frame, got {img.shape} {img.dtype}")
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self.stream.encode():  # flush delayed frames
            self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def video_info(path: str | os.PathLike[str]) -> tuple[int, Fraction]:
    """(frame count, frames per second) of a video's first stream."""
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    return _count_frames(path), Fraction(rate)


def _decoded(path: Path):
    """The decoded frames (PyAV VideoFrames) of a video's first stream, in order; a decoder failure is a
    ValueError naming the file. The container closes when the caller stops iterating."""
    av = _av()
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            yield from container.decode(stream)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable video ({type(e).__name__}: {e})") from e


def iter_frames(path: str | os.PathLike[str], size: int | None = None, limit: int | None = None):
    """Yield the frames of a video one by one (H×W×3 uint8 RGB; `size`: shorter side resized to it and
    the centre size×size cropped), at most `limit` of them: a long video is never held whole."""
    for count, frame in enumerate(_decoded(Path(path))):
        if limit is not None and count >= limit:
            break
        img = frame.to_ndarray(format="rgb24")
        yield resize_center_crop(img, size) if size is not None else img
