"""ONNX export of a ViTok image tokenizer: an encoder graph and a decoder graph, checked with onnxruntime.

    from vitok.integrations.onnx import export_onnx
    result = export_onnx("ckpt/", "ckpt-onnx/")       # or a ViTok instance

writes into the output folder

- ``encoder.onnx``: input ``pixels`` float32 B×3×H×W in [-1, 1] -> output ``latents`` float32 B×L×c, the
  posterior mean (``model.encode(x).mode()``; a v2 model's deterministic z).
- ``decoder.onnx``: inputs ``latents`` float32 B×L×c and, when the spatial size is dynamic, ``size`` int64
  [H, W] (the image size in pixels, as ``decode(z, size=(H, W))`` takes it) -> output ``pixels`` float32
  B×3×H×W. A fixed-size decoder has no ``size`` input: it decodes the export size's grid.
- ``onnx.json``: vitok, torch and onnx versions, the model config, every input's and output's name, dtype
  and shape (symbolic axes named as in the graphs), the opset, and the check's results.

The graphs come from the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, through torch.export):
the TorchScript exporter has no ONNX symbolic for ``aten::rms_norm``, which every ViTok block uses, and it
would freeze the rotary tables at the traced size. Batch is always dynamic. Height and width are dynamic
by default: the rotary (cos, sin) tables, which ViTok caches per token grid outside the module tree
(``model._rope``), are computed inside the graph from the input's shape instead (the same
``rope_angles`` code, float64 angles, float32 tables), so one graph serves every size. For the paper's
architecture H and W must be multiples of the patch size p; a v2 model's encoder takes any H, W and pads
them to whole patches at the bottom and right, as its PyTorch encode does, and its decoder crops to ``size``.

The check runs both graphs with onnxruntime on the CPU on real photos (the bundled ones by default) and
compares them with PyTorch float32: max |difference| of the latents and of the reconstructions, the PSNR
of the ONNX reconstruction against PyTorch's (float, no 8-bit rounding), and CPU milliseconds per image
for torch eager and onnxruntime at the same batch and thread count.

The graphs attend over the whole image: any tiling that encode/decode do for very large images is not
part of them (the check compares with untiled PyTorch). Video models are refused: the export covers
image tokenizers (B×3×H×W).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import json
import logging
import math
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
META_FILE = "onnx.json"
FORMAT = "vitok-onnx"
FORMAT_VERSION = 1
# The dynamo exporter writes opset 18 and later (earlier opsets would need a version conversion).
MIN_OPSET = 18
# Largest grid side the dynamic axes admit (torch.export's Dim bounds): 65,536 tokens per side is far
# above anything that fits in memory; the bound only has to be finite.
MAX_SIDE = 65536
MAX_BATCH = 1 << 20
INSTALL_HINT = "pip install 'vitok[onnx]' (onnx, onnxruntime and onnxscript)"

__all__ = ["ENCODER_FILE", "DECODER_FILE", "META_FILE", "check_onnx", "export_onnx", "load_photos", "summary_lines"]


# ---- optional dependencies ----------------------------------------------------------------------

def _require(*names: str) -> dict:
    """Import the optional packages the export needs, or a ValueError naming the missing ones and the fix."""
    modules, missing = {}, []
    for name in names:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ValueError(f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                         f"not installed; {INSTALL_HINT}")
    return modules


# ---- the modules that get exported -------------------------------------------------------------

class _GraphRope:
    """Stands in for ViTok's RopeCache while exporting: the rotary tables are computed from the grid on
    every call, so torch.export records the computation (with symbolic sizes) instead of a cached
    constant for one grid. Same function as the cache calls, so the tables are the same numbers."""

    def __init__(self, theta: float) -> None:
        self.theta = theta

    def __call__(self, grid, head_dim, device):
        from ..model.blocks import rope_angles, rope_tables

        return rope_tables(rope_angles(grid, head_dim, self.theta, device=device))

    def clear(self) -> None:
        pass


class _Encoder(nn.Module):
    """pixels B×3×H×W -> latents B×L×c: the posterior mean (v2: the deterministic z)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.model.config.is_v2:
            # v2 pads to whole patches (encode does so too); written without a branch on the size so
            # that one graph takes any H and W.
            p = self.model.config.patch_size
            H, W = pixels.shape[-2:]
            pixels = F.pad(pixels, (0, (p - W % p) % p, 0, (p - H % p) % p))
        # The untiled path (encode(x, check=False) on one whole image): no branch on the input's size,
        # which a symbolic shape could not take.
        out, _ = self.model._encode(pixels)
        return self.model._latent(out).mode()


class _FixedDecoder(nn.Module):
    """latents B×L×c -> pixels B×3×H×W on the grid of one fixed size."""

    def __init__(self, model, grid: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.grid = grid

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model._decode(latents, self.grid)


class _SizedDecoder(nn.Module):
    """(latents B×L×c, size int64 [H, W]) -> pixels B×3×H'×W'.

    The grid is (H/p, W/p) for the paper's architecture (H, W multiples of p) and (ceil(H/p),
    ceil(W/p)) for v2, whose output is then cropped to H×W, as decode(z, size=(H, W)) does.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, latents: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        p = self.model.config.patch_size
        H, W = size.tolist()
        torch._check(H >= 1)
        torch._check(W >= 1)
        if self.model.config.is_v2:
            h, w = (H + p - 1) // p, (W + p - 1) // p
        else:
            h, w = H // p, W // p
        torch._check(h >= 1)
        torch._check(w >= 1)
        torch._check(h * w == latents.shape[1])
        # Restated with the grid's own sizes, so that the exporter knows L = h·w and the output's
        # channel axis comes out as a constant 3 rather than an expression in L, h and w.
        latents = latents.reshape(latents.shape[0], h * w, latents.shape[2])
        pixels = self.model._decode(latents, (h, w))
        if self.model.config.is_v2:
            pixels = pixels[:, :, :H, :W]
        return pixels


@contextlib.contextmanager
def _export_ready(model):
    """The model as the exporter must see it: eval mode, no autocast, rotary tables computed in-graph.
    Everything is put back afterwards."""
    saved = (model._rope, model.amp_dtype, model.training)
    model._rope, model.amp_dtype = _GraphRope(model.config.rope_theta), None
    model.eval()
    try:
        yield model
    finally:
        model._rope, model.amp_dtype = saved[0], saved[1]
        model.train(saved[2])


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's chatter (progress lines, torchvision registration warnings, deprecation
    warnings); VITOK_ONNX_VERBOSE=1 shows it."""
    if os.environ.get("VITOK_ONNX_VERBOSE"):
        yield
        return
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            dynamic_shapes: dict, opset: int | None) -> None:
    """torch.onnx.export through torch.export (dynamo=True), saved to path (weights external if > 2 GB)."""
    options = dict(dynamo=True, input_names=input_names, output_names=output_names,
                   dynamic_shapes=dynamic_shapes, verbose=False)
    if opset is not None:
        options["opset_version"] = opset
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(module, args, **options)
    except Exception as err:  # the exporter's errors run to pages: name the graph, keep the first and last lines
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        brief = "\n".join(lines if len(lines) <= 8 else [*lines[:2], "...", *lines[-5:]])
        raise RuntimeError(f"torch.onnx.export failed for {path.name} ({type(err).__name__}); "
                           f"VITOK_ONNX_VERBOSE=1 shows the exporter's log:\n{brief}") from err
    program.save(str(path))


# ---- export --------------------------------------------------------------------------------------

def export_onnx(model_or_folder, out_dir: str | os.PathLike, *, image_size: int | None = None,
                opset: int | None = None, dynamic_spatial: bool = True, check: bool = True,
                photos: list | None = None, overwrite: bool = False, batch: int = 4,
                threads: int | None = None, repeats: int = 3) -> dict:
    """Export a ViTok image tokenizer to out_dir/encoder.onnx and out_dir/decoder.onnx; returns a summary dict.

    model_or_folder: a ViTok, or a folder written by save_pretrained (or a released name that
    ViTok.from_pretrained accepts). image_size: the size the graphs are traced at and checked at
    (default the config's nominal size; a multiple of p); with dynamic_spatial=False it is the only
    size the graphs take. opset: ONNX opset (default: the exporter's; at least 18).

    check=True runs both graphs with onnxruntime on the CPU on `photos` (default: the bundled photos;
    `batch` of them, resized and centre-cropped to image_size) against PyTorch float32, and times both
    with `threads` CPU threads (default torch.get_num_threads()), the median of `repeats` runs after a
    warm-up. The results go into onnx.json and the returned dict (key "check").

    Writes encoder.onnx, decoder.onnx and onnx.json; an out_dir that already holds files is refused
    unless overwrite=True (then those three files, and their external-weight files, are replaced).
    """
    from .. import __version__

    modules = _require("onnx", "onnxscript", *(("onnxruntime",) if check else ()))
    model = _load(model_or_folder)
    c = model.config
    if c.is_video:
        raise ValueError("ONNX export covers image tokenizers (B×3×H×W); this is a video model "
                         f"(frames={c.frames}, temporal_patch={c.temporal_patch}), whose graphs would need a time "
                         "axis as well: export an image model, or run the video model in PyTorch")
    size = _check_size(c.image_size if image_size is None else image_size, c.patch_size, "image_size")
    opset = _check_opset(opset)
    if not isinstance(dynamic_spatial, bool):
        raise ValueError(f"dynamic_spatial must be True or False, got {dynamic_spatial!r}")
    if check:  # before anything is written or exported: a bad photo list or batch fails at once
        batch, threads, repeats = _check_counts(batch, threads, repeats)
        photo_paths = _photo_paths(photos)
    out = _prepare_out_dir(out_dir, overwrite)

    p = c.patch_size
    # The example inputs the graphs are traced with. torch.export specialises an axis whose example is 1,
    # so a dynamic graph is traced with a batch of 2 and at least 2×2 tokens.
    trace = size if not dynamic_spatial else max(size, 2 * p)
    grid = (trace // p, trace // p)
    started = time.perf_counter()
    with _export_ready(model):
        pixels = torch.zeros(2, 3, trace, trace)
        latents = torch.zeros(2, grid[0] * grid[1], c.channels)
        B = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        if dynamic_spatial:
            if c.is_v2:  # any size: padded in the graph
                h, w = torch.export.Dim("height", min=1, max=MAX_SIDE * p), torch.export.Dim("width", min=1,
                                                                                             max=MAX_SIDE * p)
                spatial = {2: h, 3: w}
            else:
                h, w = torch.export.Dim("h", min=1, max=MAX_SIDE), torch.export.Dim("w", min=1, max=MAX_SIDE)
                spatial = {2: p * h, 3: p * w}
            L = torch.export.Dim("tokens", min=1, max=MAX_SIDE * MAX_SIDE)
            _export(_Encoder(model).eval(), (pixels,), out / ENCODER_FILE, ["pixels"], ["latents"],
                    {"pixels": {0: B, **spatial}}, opset)
            _export(_SizedDecoder(model).eval(), (latents, torch.tensor([trace, trace], dtype=torch.int64)),
                    out / DECODER_FILE, ["latents", "size"], ["pixels"], {"latents": {0: B, 1: L}, "size": None},
                    opset)
        else:
            _export(_Encoder(model).eval(), (pixels,), out / ENCODER_FILE, ["pixels"], ["latents"],
                    {"pixels": {0: B}}, opset)
            _export(_FixedDecoder(model, grid).eval(), (latents,), out / DECODER_FILE, ["latents"], ["pixels"],
                    {"latents": {0: B}}, opset)
    export_seconds = time.perf_counter() - started

    onnx = modules["onnx"]
    for name in (ENCODER_FILE, DECODER_FILE):
        _name_axes(onnx, out / name)
    encoder_io, enc_opset = _graph_io(onnx, out / ENCODER_FILE)
    decoder_io, dec_opset = _graph_io(onnx, out / DECODER_FILE)
    result = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "out_dir": str(out),
        "vitok_version": __version__,
        "torch_version": torch.__version__,
        "onnx_version": modules["onnx"].__version__,
        "onnxscript_version": getattr(modules["onnxscript"], "__version__", None),
        "onnxruntime_version": modules["onnxruntime"].__version__ if "onnxruntime" in modules else None,
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": enc_opset,
        "config": c.to_dict(),
        # The encoder returns raw latents; these (from `vitok stats`, if computed) normalise them.
        "latent_stats": model.latent_stats.to_dict() if model.latent_stats is not None else None,
        "image_size": size,
        "dynamic_batch": True,
        "dynamic_spatial": dynamic_spatial,
        "export_seconds": round(export_seconds, 2),
        "encoder": {"file": ENCODER_FILE, **encoder_io, "files": _graph_files(out, ENCODER_FILE)},
        "decoder": {"file": DECODER_FILE, **decoder_io, "files": _graph_files(out, DECODER_FILE)},
        "notes": _notes(c, size, dynamic_spatial),
        "check": None,
    }
    if dec_opset != enc_opset:  # not expected: both graphs come from one exporter call pattern
        result["decoder"]["opset"] = dec_opset
    _write_meta(out, result)
    if check:
        result["check"] = check_onnx(model, out, photos=photo_paths, image_size=size, batch=batch,
                                     threads=threads, repeats=repeats)
        _write_meta(out, result)
    return result


def _load(model_or_folder):
    from ..model import ViTok

    if isinstance(model_or_folder, ViTok):
        model = model_or_folder
    elif isinstance(model_or_folder, (str, os.PathLike)):
        model = ViTok.from_pretrained(model_or_folder)
    else:
        raise ValueError(f"export_onnx takes a ViTok or a checkpoint folder path, got {type(model_or_folder).__name__}")
    weight = model.from_latent.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        # The graphs hold float32 weights and are checked on the CPU; the caller's model stays as it is.
        model = copy.deepcopy(model).to("cpu", torch.float32)
    return model


def _check_size(size, p: int, name: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError(f"{name} must be a whole number of pixels, got {size!r}")
    if size < p or size % p:
        lo, hi = max(p, size // p * p), max(p, -(-size // p) * p)
        fix = f"{lo}" if lo == hi else f"{lo} or {hi}"
        raise ValueError(f"{name} {size} is not a positive multiple of the patch size p={p}; use {fix}")
    return size


def _check_opset(opset) -> int | None:
    if opset is None:
        return None
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset {opset!r}: the dynamo exporter writes ONNX opset {MIN_OPSET} or later; pass "
                         f"an opset >= {MIN_OPSET}, or leave it out for the exporter's default")
    return opset


def _check_counts(batch, threads, repeats) -> tuple[int, int, int]:
    for name, value in (("batch", batch), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if threads is None:
        threads = torch.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return batch, threads, repeats


def _prepare_out_dir(out_dir, overwrite: bool) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is an existing file, not a folder; pass a folder path for the ONNX files")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out} already holds files; pass overwrite=True (vitok export --overwrite) to "
                             f"replace its {ENCODER_FILE}, {DECODER_FILE} and {META_FILE}, or choose a new folder")
        for name in (ENCODER_FILE, DECODER_FILE, META_FILE):  # stale files of an earlier export
            for stale in out.glob(name + "*"):
                if stale.is_file():
                    stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _graph_files(out: Path, name: str) -> list[str]:
    """The graph file and the external-weight files the exporter wrote next to it (models over 2 GB)."""
    return sorted(p.name for p in out.glob(name + "*") if p.is_file())


# The axes of every graph input and output: a name for a symbolic axis, a number for a fixed one, None
# to leave an axis as the exporter wrote it. The exporter names symbolic axes after its internal symbols
# ("s39*s94", "Min(u0, 8*(((u0 + 7)//8)))"), and it cannot prove that the decoder's channel axis is 3
# (it writes "(3*tokens)//(h·w)"): these read better, and they are what the graphs compute.
AXES = {"pixels": ["batch", 3, "height", "width"], "latents": ["batch", "tokens", None]}


def _name_axes(onnx, path: Path) -> None:
    """Set the declared axes of the graph's inputs and outputs (AXES) where the exporter left them
    symbolic; fixed axes are never changed, and the weights are not touched (external-weight files stay
    where they are and keep their references)."""
    proto = onnx.load(str(path), load_external_data=False)
    changed = False
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim, want in zip(value.type.tensor_type.shape.dim, AXES.get(value.name, [])):
            if want is None or dim.HasField("dim_value"):
                continue
            if isinstance(want, int):
                dim.dim_value = want
            elif dim.dim_param != want:
                dim.dim_param = want
            else:
                continue
            changed = True
    if changed:
        onnx.save(proto, str(path))


def _graph_io(onnx, path: Path) -> tuple[dict, int]:
    """Inputs and outputs of a saved graph (names, dtypes, shapes with symbolic axes named) and its opset."""
    proto = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[dict]:
        items = []
        for value in values:
            tensor = value.type.tensor_type
            shape, dynamic = [], {}
            for axis, dim in enumerate(tensor.shape.dim):
                if dim.HasField("dim_value"):
                    shape.append(int(dim.dim_value))
                else:
                    shape.append(dim.dim_param or "?")
                    dynamic[str(axis)] = dim.dim_param or "?"
            items.append({"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                          "shape": shape, "dynamic_axes": dynamic})
        return items

    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return {"inputs": describe(proto.graph.input), "outputs": describe(proto.graph.output)}, int(opset)


def _notes(c, size: int, dynamic_spatial: bool) -> list[str]:
    p = c.patch_size
    notes = ["pixels are float32 RGB in [-1, 1] (x / 127.5 - 1 for 8-bit images), layout B×3×H×W",
             "latents are the posterior mean (encode(x).mode())" + ("; v2: the deterministic z" if c.is_v2 else
                                                                    ", not a sample")
             + ", not normalised (latent_stats, when present, normalise them)",
             "batch is dynamic in both graphs",
             "the graphs attend over the whole image (no tiling): memory and time grow with the square of L"]
    if not dynamic_spatial:
        notes.append(f"fixed spatial size: the encoder takes {size}×{size} pixels only; the decoder takes "
                     f"{(size // p) ** 2} tokens and decodes the {size // p}×{size // p} grid of {size}×{size} "
                     f"pixels")
    elif c.is_v2:
        notes.append(f"any H and W: the encoder pads to whole {p}×{p} patches (bottom and right), giving "
                     f"L = ceil(H/{p})·ceil(W/{p}) tokens; the decoder's int64 input size = [H, W] gives the grid "
                     f"and its output is cropped to H×W")
    else:
        notes.append(f"H and W must be multiples of p={p}: L = (H/{p})·(W/{p}) tokens; the decoder's int64 input "
                     f"size = [H, W] gives the grid (L must equal (H/{p})·(W/{p}))")
    return notes


def _write_meta(out: Path, result: dict) -> None:
    from ..model.pretrained import atomic_write

    text = json.dumps(_jsonable(result), indent=2) + "\n"
    atomic_write(out / META_FILE, lambda tmp: Path(tmp).write_text(text))


def _jsonable(value):
    """inf/nan (an exact-match PSNR) as strings: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# ---- the check: onnxruntime against PyTorch on real photos --------------------------------------

def _photo_paths(photos) -> list[Path]:
    if photos is None:
        from ..data import bundled_photos

        return bundled_photos()
    if isinstance(photos, (str, os.PathLike)):
        photos = [photos]
    paths = [Path(p) for p in photos]
    if not paths:
        raise ValueError("photos is empty; pass image files, or leave it out for the bundled photos")
    for path in paths:
        if not path.is_file():
            raise ValueError(f"photo {path} is not a readable file; pass image files, or leave photos out for "
                             f"the bundled photos")
    return paths


def load_photos(paths: list, height: int, width: int) -> torch.Tensor:
    """Images -> N×3×height×width float32 in [-1, 1]: resized (bicubic, antialiased) to cover the size,
    then centre-cropped."""
    from PIL import Image

    from ..data import load_image, to_tensor

    tensors = []
    for path in paths:
        img = load_image(path)
        h, w = img.shape[:2]
        scale = max(height / h, width / w)
        nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
        resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BICUBIC))
        top, left = (nh - height) // 2, (nw - width) // 2
        tensors.append(to_tensor(np.ascontiguousarray(resized[top:top + height, left:left + width])))
    return torch.stack(tensors)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# Between timed blocks: lets the other framework's worker threads stop spinning (onnxruntime's pool and
# OpenMP's both busy-wait for a while after a run), so that neither is timed against the other's spinning.
PAUSE_SECONDS = 0.2


def _median_seconds(fn, repeats: int, min_seconds: float = 0.3, max_runs: int = 100) -> float:
    """Median wall time of fn after a warm-up: `repeats` runs, more (up to max_runs) while they add up
    to less than min_seconds, so that a small model's milliseconds are not one scheduler hiccup."""
    time.sleep(PAUSE_SECONDS)
    fn()  # warm-up
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Float PSNR in dB of two [-1, 1] tensors (peak-to-peak 2), over all their values, no 8-bit rounding."""
    mse = float((x.double() - y.double()).square().mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


def check_onnx(model, out_dir, *, photos=None, image_size: int | None = None, batch: int = 4,
               threads: int | None = None, repeats: int = 3, sizes: list | None = None) -> dict:
    """Run out_dir's graphs with onnxruntime (CPU) on real photos against `model` in PyTorch float32.

    At the export size (image_size, default the size recorded in onnx.json): `batch` photos, max
    |difference| of latents and of reconstructions (ONNX encoder -> ONNX decoder against PyTorch's encode
    -> decode; and the ONNX decoder on PyTorch's latents), float PSNR of the ONNX reconstruction against
    PyTorch's (worst image), the number of 8-bit values that differ, and milliseconds per image (the median
    of at least `repeats` runs after a warm-up, and of more while they add up to under 0.3 s; same batch,
    `threads` threads for both, a pause between the timed blocks). For graphs with dynamic spatial
    size the same comparison (without timing) also runs at `sizes` ((H, W) pairs; default one non-square
    size) and at batch 1.
    """
    _require("onnxruntime")
    model = _load(model)
    out = Path(out_dir)
    if not (out / META_FILE).is_file():
        raise ValueError(f"{out} holds no {META_FILE}: it is not a folder written by export_onnx; export first")
    meta = json.loads((out / META_FILE).read_text())
    size = image_size or meta["image_size"]
    dynamic = meta["dynamic_spatial"]
    batch, threads, repeats = _check_counts(batch, threads, repeats)
    paths = _photo_paths(photos)
    paths = [paths[i % len(paths)] for i in range(batch)]  # fewer photos than the batch: repeated
    p = model.config.patch_size
    if sizes is None:
        # one non-square size; for v2 also not whole patches (its encoder pads, its decoder crops)
        other = size // 2 + 3 if model.config.is_v2 else max(p, size // 2 // p * p)
        sizes = [(size, other)] if dynamic else []
    sizes = [(int(h), int(w)) for h, w in sizes]
    for h, w in sizes:
        if not model.config.is_v2:
            _check_size(h, p, "check height")
            _check_size(w, p, "check width")
        if not dynamic and (h, w) != (size, size):
            raise ValueError(f"the graphs in {out} take {size}×{size} pixels only (exported with a fixed size); "
                             f"check them at that size")

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        encoder, decoder = _session(out / ENCODER_FILE, threads), _session(out / DECODER_FILE, threads)
        runs = {"export_size": _compare(model, encoder, decoder, load_photos(paths, size, size), dynamic,
                                        repeats=repeats)}
        runs["other_sizes"] = [_compare(model, encoder, decoder, load_photos(paths[:1], h, w), dynamic, repeats=0)
                               for h, w in sizes]
    finally:
        torch.set_num_threads(saved_threads)
    main = runs["export_size"]
    worst = [main, *runs["other_sizes"]]
    return {
        "photos": [Path(p).name for p in paths],
        "threads": threads,
        "repeats": repeats,
        "max_abs_latents": max(r["max_abs_latents"] for r in worst),
        "max_abs_pixels": max(r["max_abs_pixels"] for r in worst),
        "psnr_db": min(r["psnr_db"] for r in worst),
        "torch_ms_per_image": main["torch_ms_per_image"],
        "onnxruntime_ms_per_image": main["onnxruntime_ms_per_image"],
        "runs": [main, *runs["other_sizes"]],
    }


def _untiled(model) -> dict:
    """encode/decode's keyword for attending over the whole image, where this vitok has tiling: the
    graphs never tile, so neither does the reference."""
    return {"tiling": None} if "tiling" in inspect.signature(model.encode).parameters else {}


def _compare(model, encoder, decoder, x: torch.Tensor, dynamic: bool, repeats: int) -> dict:
    """One batch through PyTorch and onnxruntime: differences, PSNR and (repeats > 0) timings."""
    H, W = x.shape[-2:]
    x_np = x.numpy()
    size_np = np.array([H, W], dtype=np.int64)

    untiled = _untiled(model)

    def torch_encode():
        with torch.inference_mode():
            return model.encode(x, check=False, **untiled).mode()

    def torch_decode(z):
        with torch.inference_mode():
            return model.decode(z, size=(H, W), check=False, **untiled)

    def ort_encode():
        return encoder.run(None, {"pixels": x_np})[0]

    def ort_decode(z: np.ndarray):
        feeds = {"latents": z, "size": size_np} if dynamic else {"latents": z}
        return decoder.run(None, feeds)[0]

    z_torch = torch_encode()
    x_torch = torch_decode(z_torch)
    z_ort = ort_encode()
    x_ort = torch.from_numpy(ort_decode(z_ort))
    x_ort_same_z = torch.from_numpy(ort_decode(z_torch.numpy()))
    if tuple(x_ort.shape) != tuple(x_torch.shape):
        raise RuntimeError(f"the ONNX decoder returned shape {tuple(x_ort.shape)}, PyTorch {tuple(x_torch.shape)}")
    from ..metrics.image import to_uint8

    result = {
        "batch": int(x.shape[0]),
        "height": int(H),
        "width": int(W),
        "tokens": int(z_torch.shape[1]),
        "max_abs_latents": float((torch.from_numpy(z_ort) - z_torch).abs().max()),
        "max_abs_pixels": float((x_ort - x_torch).abs().max()),
        "max_abs_pixels_same_latents": float((x_ort_same_z - x_torch).abs().max()),
        "psnr_db": min(_psnr(a, b) for a, b in zip(x_ort, x_torch)),
        "uint8_values_differing": int((to_uint8(x_ort) != to_uint8(x_torch)).sum()),
        "uint8_values": int(x_torch.numel()),
    }
    if repeats:
        n = x.shape[0]
        t_enc = _median_seconds(torch_encode, repeats)
        t_dec = _median_seconds(lambda: torch_decode(z_torch), repeats)
        o_enc = _median_seconds(ort_encode, repeats)
        z_np = z_torch.numpy()
        o_dec = _median_seconds(lambda: ort_decode(z_np), repeats)
        result["torch_ms_per_image"] = {"encode": 1e3 * t_enc / n, "decode": 1e3 * t_dec / n,
                                        "total": 1e3 * (t_enc + t_dec) / n}
        result["onnxruntime_ms_per_image"] = {"encode": 1e3 * o_enc / n, "decode": 1e3 * o_dec / n,
                                              "total": 1e3 * (o_enc + o_dec) / n}
    return result


# ---- printing ------------------------------------------------------------------------------------

def summary_lines(result: dict) -> list[str]:
    """A few lines for the command line: what was written, the graphs' signatures, the check's numbers."""
    c = result["config"]
    out = Path(result["out_dir"])
    spatial = "dynamic batch and spatial size" if result["dynamic_spatial"] else \
        f"dynamic batch, fixed size {result['image_size']}×{result['image_size']}"
    lines = [f"wrote {out / ENCODER_FILE}, {out / DECODER_FILE} and {out / META_FILE} "
             f"(opset {result['opset']}, {spatial}; exported in {result['export_seconds']:.1f} s)"]

    def signature(graph: dict) -> str:
        def one(v):
            return f"{v['name']} {v['dtype']}[{', '.join(str(d) for d in v['shape'])}]"
        return f"{', '.join(one(v) for v in graph['inputs'])} -> {', '.join(one(v) for v in graph['outputs'])}"

    lines.append(f"  encoder  {signature(result['encoder'])}")
    lines.append(f"  decoder  {signature(result['decoder'])}")
    lines.append(f"  model    {c.get('name') or 'unnamed'} ({c['architecture']}), p={c['patch_size']}, "
                 f"c={c['channels']}")
    check = result.get("check")
    if not check:
        lines.append("  not checked with onnxruntime")
        return lines
    main = check["runs"][0]
    sizes = ", ".join(f"{r['batch']}×{r['height']}×{r['width']}" for r in check["runs"])
    lines.append(f"  check    onnxruntime (CPU) vs PyTorch float32 on {len(set(check['photos']))} real photo(s), "
                 f"batches {sizes}")
    lines.append(f"           max |diff| latents {check['max_abs_latents']:.2g}, pixels {check['max_abs_pixels']:.2g}; "
                 f"PSNR ONNX vs PyTorch reconstruction {_db(check['psnr_db'])} (worst image)")
    t, o = check["torch_ms_per_image"], check["onnxruntime_ms_per_image"]
    lines.append(f"  CPU time per image at batch {main['batch']}, {check['threads']} thread(s): "
                 f"torch {t['encode']:.1f} + {t['decode']:.1f} = {t['total']:.1f} ms, onnxruntime "
                 f"{o['encode']:.1f} + {o['decode']:.1f} = {o['total']:.1f} ms (encode + decode)")
    return lines


def _db(value) -> str:
    value = float(value)
    return "inf dB (identical)" if math.isinf(value) else f"{value:.1f} dB"
