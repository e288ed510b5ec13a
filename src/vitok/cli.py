"""The `vitok` command: parses arguments, then calls one function per subcommand."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import ViTokConfig


def cmd_info(args: argparse.Namespace) -> int:
    """Print parameters, bottleneck and FLOPs of one variant, or of every paper variant."""
    from .info import describe, format_description, released_config
    from .model import PAPER_VARIANTS, config_from_name
    from .model.variants import MAX_SIZES
    from .model.vitok_v2 import PREFIX, RELEASED

    # Named after the options (the config's own errors name its fields): checked before any model.
    for option, value, field in (("--image-size", args.image_size, "image_size"), ("--frames", args.frames, "frames"),
                                 ("--channels", args.channels, "channels")):
        if value is not None and not 1 <= value <= MAX_SIZES[field]:
            raise ValueError(f"{option} {value} is out of range; info describes models with {option} from 1 to "
                             f"{MAX_SIZES[field]:,}: pass a value in that range")

    if args.name and (args.name.startswith(PREFIX) or args.name in RELEASED):
        # A released v2 checkpoint: its sizes come from vitok_v2.RELEASED, so nothing is downloaded.
        results = [describe(released_config(args.name, args.image_size, args.channels, args.frames))]
    else:
        results = []
        for name in [args.name] if args.name else list(PAPER_VARIANTS):
            overrides = {"channels": 16 if args.channels is None else args.channels}
            video = "x" in name.split("/")[-1] or (args.frames or 1) > 1
            if args.image_size is not None:
                overrides["image_size"] = args.image_size
            elif args.name is None:
                overrides["image_size"] = 128 if video else 256
            if args.frames is not None:
                overrides["frames"] = args.frames
            results.append(describe(config_from_name(name, **overrides)))
    if args.json:
        print(json.dumps(results if args.name is None else results[0], indent=2))
    else:
        print("\n\n".join(format_description(r) for r in results))
    return 0


def _convert_vitok_v2(src: str, dst: Path, image_size: int, name: str, revision: str | None) -> ViTokConfig:
    """The authors' v2 weights (a folder, one file, or a released name) -> vitok folder `dst`; its config."""
    from .model import vitok_v2

    if Path(src).exists():
        if revision is not None:
            raise ValueError(f"--revision picks a version of a released checkpoint; {src} is a local path: "
                             f"drop --revision")
        return vitok_v2.convert(src, dst, image_size, name)
    if src.startswith(vitok_v2.PREFIX) or src in vitok_v2.RELEASED:
        short = vitok_v2.released_name(src)
        # Converted from the Hub snapshot straight into DST, not through the load cache: --image-size and
        # --name land in DST's config.json, and a 5B checkpoint is not written twice.
        snapshot = vitok_v2.download_released(short, revision)
        return vitok_v2.convert(snapshot, dst, image_size, name or vitok_v2.PREFIX + short)
    raise ValueError(f"SRC {src} does not exist; pass a folder holding {vitok_v2.ENCODER_FILE} and "
                     f"{vitok_v2.DECODER_FILE}, one .safetensors file holding both, or a released checkpoint's "
                     f"name ({', '.join(vitok_v2.PREFIX + n for n in vitok_v2.RELEASED)})")


# Source formats `vitok convert` reads: the first positional argument picks one.
CONVERTERS = {"vitok-v2": _convert_vitok_v2}


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert another implementation's tokenizer weights into a vitok checkpoint folder; print what it holds."""
    import math

    from .arguments import check_out_folder
    from .model.pretrained import CONFIG_FILE, WEIGHTS_FILE, inspect_checkpoint
    from .model.variants import MAX_SIZES

    # Checked before anything is read or downloaded.
    if not 1 <= args.image_size <= MAX_SIZES["image_size"]:
        raise ValueError(f"--image-size {args.image_size} is out of range; pass a value from 1 to "
                         f"{MAX_SIZES['image_size']:,} (the nominal size recorded in config.json; any size runs)")
    dst = check_out_folder(args.dst, flag="DST")
    config = CONVERTERS[args.source](args.src, dst, args.image_size, args.name, args.revision)
    # Counted from the written file's header, so the number printed is what DST holds.
    _, shapes = inspect_checkpoint(dst)
    params = sum(math.prod(shape) for shape in shapes.values())
    c = config
    print(f"wrote {dst / CONFIG_FILE} and {dst / WEIGHTS_FILE}: {c.name or 'unnamed'} ({c.architecture})")
    print(f"  encoder  {c.encoder_width} wide x {c.encoder_depth} blocks, {c.encoder_heads} heads")
    print(f"  decoder  {c.decoder_width} wide x {c.decoder_depth} blocks, {c.decoder_heads} heads")
    print(f"  patch p={c.patch_size}  channels c={c.channels}  nominal image size {c.image_size}")
    print(f"  parameters {params:,} ({params / 1e6:.1f}M)")
    return 0


# Above this many tokens an image takes long enough on a CPU that reconstruct says so before starting.
LARGE_IMAGE_TOKENS = 4096


def tiling_of(args: argparse.Namespace, chunks: bool = False):
    """--tile-size / --tile-overlap / --no-tiling (and, with chunks, --chunk / --chunk-overlap) as encode's
    and decode's `tiling`."""
    from .model.tiling import Tiling

    chunk = getattr(args, "chunk", None) if chunks else None
    chunk_overlap = getattr(args, "chunk_overlap", None) if chunks else None
    if args.no_tiling:
        if args.tile_size is not None or args.tile_overlap is not None or chunk is not None:
            raise ValueError("--no-tiling contradicts --tile-size/--tile-overlap/--chunk: pass one or the other")
        return None
    if args.tile_overlap is not None and args.tile_size is None:
        raise ValueError("--tile-overlap needs --tile-size (the automatic tiling picks its own overlap)")
    if chunk_overlap is not None and chunk is None:
        raise ValueError("--chunk-overlap needs --chunk (the automatic chunking picks its own overlap)")
    if args.tile_size is None and chunk is None:
        return "auto"
    return Tiling(tile_size=args.tile_size, overlap=args.tile_overlap, chunk=chunk, chunk_overlap=chunk_overlap)


def add_tiling_arguments(parser: argparse.ArgumentParser, chunk_help: str | None = None) -> None:
    """--tile-size, --tile-overlap, --no-tiling; with chunk_help also --chunk and --chunk-overlap (tiling_of)."""
    parser.add_argument("--tile-size", type=int, default=None,
                        help="encode and decode in overlapping square tiles of this many pixels (a multiple of p), "
                             "blended without seams; default: tiles of the training size for images of more than "
                             "16x the nominal tokens")
    parser.add_argument("--tile-overlap", type=int, default=None,
                        help="pixels shared by neighbouring tiles (a multiple of p; default a quarter of the tile)")
    parser.add_argument("--no-tiling", action="store_true", help="attend over the whole image at once")
    if chunk_help is not None:
        parser.add_argument("--chunk", type=int, default=None, help=chunk_help)
        parser.add_argument("--chunk-overlap", type=int, default=None,
                            help="video models: frames shared by neighbouring chunks (default a quarter of the chunk)")


def add_stream_arguments(parser: argparse.ArgumentParser, limit_help: str) -> None:
    """The data-set arguments of the commands that stream a data set through a tokenizer (eval, stats)."""
    parser.add_argument("--data", required=True, help="image or video folder, a .tar shard, a folder of shards, or a "
                                                       "quoted glob of image files, video files or shards")
    parser.add_argument("--image-size", type=int, default=None,
                        help="resize + centre-crop size (default: the model's)")
    parser.add_argument("--frames", type=int, default=None,
                        help="clip length for video models (default: the model's)")
    parser.add_argument("--frame-stride", type=int, default=1, help="take every k-th frame of a video (default 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4, help="data loader processes (default 4)")
    parser.add_argument("--limit", type=int, default=None, help=limit_help)
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda:LOCAL_RANK if available, else cpu)")
    parser.add_argument("--upsample", action="store_true", help="allow images smaller than the size (upsampled)")


def check_size_for_reconstruct(size: tuple[int, int], patch: int, device) -> None:
    """Refuse an image the model's token limit would refuse, with the CLI's way around it (--size);
    announce one large enough to take a while, so a long run is never silent."""
    import math

    from .model.checks import token_limit

    limit, tokens = token_limit(device), (size[0] // patch) * (size[1] // patch)
    side = patch * math.isqrt(limit) if limit else None
    if limit is not None and tokens > limit:
        raise ValueError(f"{size[1]}x{size[0]} pixels make {tokens:,} tokens, above the limit of {limit:,} per image "
                         f"on {device.type} (attention cost grows with the square of the token count); pass "
                         f"--size {side} or less to reconstruct a centre crop resized to that size")
    if tokens > LARGE_IMAGE_TOKENS and device.type == "cpu":
        print(f"note: {size[1]}x{size[0]} pixels make {tokens:,} tokens; on a CPU this takes a while (up to minutes). "
              f"--size N reconstructs a smaller centre crop, --device cuda uses a GPU", file=sys.stderr)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """Encode and decode image files through a checkpoint; write PNGs and print PSNR/SSIM per image."""
    import io

    import torch
    from PIL import Image

    from .arguments import check_device, check_out_folder
    from .data.images import (center_crop_to_multiple, from_tensor, load_image, resize_center_crop, to_tensor,
                              write_atomic)
    from .data.outputs import METRICS_FILE, check_outputs, plan_outputs
    from .metrics.image import psnr, ssim
    from .model import ViTok

    # Every argument is checked, and every target planned, before the model loads or a file is written.
    if args.size is not None and args.size < 1:
        raise ValueError(f"--size must be a positive integer (the side of the square crop, in pixels), "
                         f"got {args.size}; leave it out to keep each image's own size")
    check_device(args.device)
    out = check_out_folder(args.out)
    inputs = [Path(p) for p in args.images]
    model = ViTok.from_pretrained(args.checkpoint, device=args.device)
    tiling = tiling_of(args)
    if model.config.is_video:
        return _reconstruct_videos(model, args, inputs, out, tiling)
    if args.frames is not None or args.chunk is not None or args.chunk_overlap is not None:
        raise ValueError("--frames, --chunk and --chunk-overlap apply to video models; this is an image model")
    targets = plan_outputs(inputs, out)
    check_outputs(inputs, targets, out)
    patch = model.config.patch_size
    if args.size is not None and args.size < patch:
        raise ValueError(f"--size {args.size} is smaller than the model's patch size {patch}, so no image would "
                         f"keep a whole patch: pass --size {patch} or more (a multiple of {patch} keeps the square)")
    out.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for path, target in zip(inputs, targets):
        try:
            img = load_image(path)
            img = resize_center_crop(img, args.size) if args.size else img
            img = center_crop_to_multiple(img, model.config.patch_size)
            tokens = (img.shape[0] // patch) * (img.shape[1] // patch)
            if tiling is None or (tiling == "auto" and tokens <= model.tile_budget):  # tiled: one tile at a time
                check_size_for_reconstruct(img.shape[:2], patch, torch.device(args.device))
        except (ValueError, OSError) as err:
            skipped.append({"file": str(path), "reason": str(err)})
            print(f"skipped {path}: {err}", file=sys.stderr)
            continue
        x = to_tensor(img).unsqueeze(0).to(args.device)
        with torch.no_grad():
            posterior = model.encode(x, tiling=tiling)
            z = posterior.sample() if args.sample else posterior.mode()
            x_hat = model.decode(z, size=tuple(x.shape[-2:]), tiling=tiling)
        # PNG is lossless, so the printed PSNR is what the written file holds. Encoded in memory and
        # renamed into place: a full disk leaves no partial PNG behind.
        png = io.BytesIO()
        Image.fromarray(from_tensor(x_hat[0].cpu())).save(png, format="PNG")
        write_atomic(target, png.getvalue())
        row = {"file": str(path), "output": str(target), "height": img.shape[0], "width": img.shape[1],
               "psnr": float(psnr(x.cpu(), x_hat.cpu())[0]), "ssim": float(ssim(x.cpu(), x_hat.cpu())[0])}
        rows.append(row)
        print(f"{path}  {img.shape[1]}x{img.shape[0]}  PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}")
    summary = {"checkpoint": str(args.checkpoint), "images": rows, "skipped_files": skipped}
    if rows:
        summary["mean_psnr"] = sum(r["psnr"] for r in rows) / len(rows)
        summary["mean_ssim"] = sum(r["ssim"] for r in rows) / len(rows)
        print(f"mean over {len(rows)} images  PSNR {summary['mean_psnr']:.2f} dB  SSIM {summary['mean_ssim']:.4f}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s); see {out / METRICS_FILE}", file=sys.stderr)
    write_atomic(out / METRICS_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    return 0 if rows else 1


def _reconstruct_videos(model, args: argparse.Namespace, inputs: list[Path], out: Path, tiling) -> int:
    """Video models: every input video reconstructed in overlapping temporal chunks to OUT/STEM.mp4."""
    from .data.images import write_atomic
    from .data.outputs import METRICS_FILE, check_outputs, plan_outputs
    from .eval.run import _check_pyav
    from .eval.video_stream import reconstruct_video

    _check_pyav()
    targets = plan_outputs(inputs, out, ".mp4")
    check_outputs(inputs, targets, out)
    if args.sample:
        raise ValueError("--sample is not supported for videos: they decode the posterior mean")
    out.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for path, target in zip(inputs, targets):
        try:
            row = reconstruct_video(model, path, target, size=args.size, limit=args.frames, chunk=args.chunk,
                                    overlap=args.chunk_overlap, spatial=tiling, device=args.device)
        except (ValueError, OSError) as err:
            skipped.append({"file": str(path), "reason": str(err)})
            print(f"skipped {path}: {err}", file=sys.stderr)
            continue
        rows.append(row)
        seam = f"  chunk-edge ratio {row['border_ratio']:.3f}" if "border_ratio" in row else ""
        print(f"{path}  {row['frames']} frames at {row['size']}px in {row['chunks']} chunk(s)  PSNR "
              f"{row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}  temporal RMSE {row['temporal_rmse']:.2f}{seam}")
    summary = {"checkpoint": str(args.checkpoint), "videos": rows, "skipped_files": skipped}
    write_atomic(out / METRICS_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    return 0 if rows else 1


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on a dataset and write the report."""
    import torch.distributed as dist

    from .eval.run import run_eval

    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    try:
        document = run_eval(args.checkpoint, args.data, image_size=args.image_size, frames=args.frames,
                            stride=args.frame_stride, batch_size=args.batch_size, workers=args.workers,
                            limit=args.limit, out=args.out, weights=args.weights, device=args.device,
                            upsample=args.upsample, metrics=metrics, bf16=not args.fp32,
                            tiling=tiling_of(args, chunks=True))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if document is None:  # a non-zero torchrun rank
        return 0
    print(f"{document['num_samples']} samples in {document['seconds']:.1f} s")
    for name, value in document["metrics"].items():
        print(f"  {name:9} {value:.4f}")
    for name, reason in document["not_computed"].items():
        print(f"  {name:9} not computed: {reason}")
    for name, note in document["notes"].items():
        print(f"  {name:9} note: {note}")
    if document["psnr_infinite"]:
        print(f"  {document['psnr_infinite']} reconstruction(s) identical to the original: infinite PSNR, "
              f"left out of the PSNR mean")
    if document["skipped_files"]:
        print(f"  skipped {len(document['skipped_files'])} unreadable or unusable file(s); see report.json")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Compute a tokenizer's latent statistics over a data set and store them in its config.json."""
    import torch.distributed as dist

    from .eval.latent_stats import run_stats

    try:
        result = run_stats(args.checkpoint, args.data, device=args.device, image_size=args.image_size,
                           frames=args.frames, stride=args.frame_stride, batch_size=args.batch_size,
                           workers=args.workers, limit=args.limit, upsample=args.upsample, bf16=args.bf16)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result is None:  # a non-zero torchrun rank
        return 0
    stats, details = result
    print(f"{stats.num_samples} samples ({stats.num_tokens} latent vectors) in {details['seconds']:.1f} s; "
          f"statistics written to {Path(details['folder']) / 'config.json'}")
    print(f"  shift_factor {stats.shift_factor:.6g}  scaling_factor {stats.scaling_factor:.6g}  "
          f"fingerprint {stats.fingerprint}")
    print("  mean " + " ".join(f"{v:.4g}" for v in stats.mean))
    print("  std  " + " ".join(f"{v:.4g}" for v in stats.std))
    if details["skipped"]:
        print(f"  skipped {len(details['skipped'])} unreadable or unusable file(s), e.g. "
              f"{details['skipped'][0]['file']}: {details['skipped'][0]['reason']}", file=sys.stderr)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Write an image folder, resized once, into tar shards for fast training."""
    from .data.prepare import default_workers, prepare

    index = prepare(args.source, args.out, args.size, shard_size=args.shard_size, fmt=args.format,
                    quality=args.quality, labels=args.labels,
                    workers=default_workers() if args.workers is None else args.workers)
    print(f"{index['samples']} samples in {len(index['shards'])} shard(s) under {args.out} "
          f"({index['seconds']:.1f} s); train with data.source={args.out}")
    if index["skipped_files"]:
        print(f"skipped {len(index['skipped_files'])} unreadable file(s); see {Path(args.out) / 'prepare.json'}",
              file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a tokenizer to ONNX (encoder and decoder graphs) and check the graphs with onnxruntime."""
    from .integrations.onnx import export_onnx, summary_lines

    result = export_onnx(args.checkpoint, args.onnx, image_size=args.image_size, opset=args.opset,
                         dynamic_spatial=not args.fixed_size, check=not args.no_check, photos=args.photos,
                         overwrite=args.overwrite, threads=args.threads)
    print("\n".join(summary_lines(result)))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Upload a tokenizer with a generated model card to the Hugging Face Hub (or stage it with --dry-run)."""
    from .integrations.hub import push, stage

    if args.dry_run:
        out = stage(args.model, args.repo, args.dry_run, license=args.license, data=args.data)
        print(f"staged {', '.join(sorted(p.name for p in out.iterdir()))} in {out} (nothing uploaded)")
        return 0
    url = push(args.model, args.repo, revision=args.revision, private=args.private, license=args.license,
               data=args.data, commit_message=args.message)
    print(f"pushed {args.model} to {args.repo}: {url}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    """List every weight file vitok can use, whether it is present and verified, and what it is for."""
    from .metrics.weights import describe_weights, weights_dir

    rows = describe_weights(args.weights)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    folder = weights_dir(args.weights)
    print(f"weights folder: {folder} (set with --weights or $VITOK_WEIGHTS)")
    if not folder.is_dir():
        print("  this folder does not exist: create it and put the files below in it, or point --weights "
              "or $VITOK_WEIGHTS at the folder that holds them")
    for row in rows:
        print(f"\n{row['filename']}  [{row['state']}]\n  for: {row['purpose']}\n  from: {row['source']}")
        if row["state"] != "verified":
            print(f"  {row['detail']}")
    return 0


class _OverridesAnywhere(argparse.ArgumentParser):
    """The train parser: key=value overrides may stand before, between or after the options.

    Plain argparse takes a positional list in one run only (`a=1 --out X b=2` leaves b=2
    "unrecognized"); the intermixed parse collects every run. Unknown --flags remain errors.
    """

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # the intermixed parse calls the plain one itself
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            namespace, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False
        # An unknown --flag cuts the positional run short: the words after it are still overrides,
        # so the error names the flags alone.
        flags = [a for a in extras if a.startswith("-")]
        namespace.overrides = list(namespace.overrides or []) + [a for a in extras if not a.startswith("-")]
        return namespace, flags


def cmd_train(args: argparse.Namespace) -> int:
    """Train a tokenizer (stage 1, then stage 2) and write the run folder."""
    from .train.config import load_config
    from .train.loop import train

    if args.resume:
        resolved = Path(args.resume) / "config.yaml"
        if not resolved.is_file():
            raise ValueError(f"--resume {args.resume}: no config.yaml there; pass a run folder written by vitok train")
        if args.config:
            raise ValueError("--resume continues a run with its own config.yaml; drop --config "
                             "(key=value overrides are still applied)")
        config = load_config(resolved, args.overrides)
    else:
        if args.config and Path(args.config).is_dir():
            from .train.config import shipped_configs

            raise ValueError(f"--config {args.config} is a directory; expected a YAML file or a shipped config's "
                             f"name ({', '.join(shipped_configs())})")
        # Without --config, the embedded demo: a small tokenizer on the bundled photos.
        config = load_config(args.config or "demo", args.overrides)
    from .train.checkpoint import CheckpointWriteError
    from .train.loop import TrainingDiverged

    try:
        document = train(config, out=args.out, resume=args.resume)
    except (TrainingDiverged, CheckpointWriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if document:
        print(f"run folder: {document['run']}")
        for name, value in document["metrics"].items():
            print(f"  {name:9} {value:.4f}")
        for name, reason in document["not_computed"].items():
            print(f"  {name:9} not computed: {reason.splitlines()[0][:120]}")
    return 0


def _train_epilog() -> str:
    from .train.config import fields_table

    rows = [f"  {key:28} {tp:14} {default!r}" for key, tp, default in fields_table()]
    return ("config fields (override any with key=value). The defaults listed are the dataclasses'; "
            "without --config\nthe demo config (configs/demo.yaml: T-T/8 at 64 px, 800 + 60 steps) is applied "
            "on top of them.\n" + "\n".join(rows))


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train every unfinished point of a scaling sweep, then write its table, fits and plots."""
    from .sweep import load_spec, run_sweep, write_report

    spec = load_spec(args.spec, args.overrides, out=args.out)
    failed = {} if args.report else run_sweep(spec, gpus=args.gpus).failed
    written = write_report(spec)
    done = sum(row.finished for row in written["rows"])
    print(f"{done} of {len(written['rows'])} points finished; results in {spec.out / 'results.md'}")
    for study, by_metric in written["fits"].items():
        for metric, (linear, _) in by_metric.items():
            print(f"  {study:8} {metric:6} slope {linear.slope:+.4g} per tenfold  R² {linear.r2:.3f}  (n={linear.n})")
    for name, reason in failed.items():
        print(f"  {name} failed: {reason}", file=sys.stderr)
    return 1 if failed else 0


def cmd_latents(args: argparse.Namespace) -> int:
    """Encode a labelled image or video folder, or labelled .tar shards, into a latent store for DiT training."""
    from .generate.latents import encode_folder
    from .train.distributed import teardown

    index = None
    try:
        index = encode_folder(args.checkpoint, args.data, args.out, image_size=args.image_size,
                              batch_size=args.batch_size, shard_size=args.shard_size, dtype=args.dtype,
                              store_std=args.store_std, upsample=args.upsample, device=args.device,
                              frame_stride=args.frame_stride)
    finally:
        teardown(synchronise=index is not None)
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(f"{index['count']} latents of {index['tokens']}x{index['channels']} in {index['num_shards']} shard(s), "
          f"{index['num_classes']} classes; index: {Path(args.out) / 'index.json'}")
    if index["skipped_files"]:
        print(f"skipped {len(index['skipped_files'])} unusable file(s); see index.json", file=sys.stderr)
    return 0


def cmd_dit(args: argparse.Namespace) -> int:
    """Train, sample or evaluate a latent DiT."""
    if args.dit_command == "train":
        from .generate.train import DiTTrainConfig, load_run_config, parse_overrides, train_dit

        if args.resume:
            given = [flag for flag, value in (("--latents", args.latents), ("--model", args.model)) if value]
            if given:  # a resumed run keeps its own store and model; silently ignoring them would mislead
                raise ValueError(f"--resume {args.resume} continues the run with its own config.yaml; drop "
                                 f"{' and '.join(given)} (key=value overrides of other fields still apply)")
            config = load_run_config(args.resume, args.overrides)
        else:
            config = parse_overrides(DiTTrainConfig(latents=args.latents or "", model=args.model or "DiT-S"),
                                     args.overrides)
        document = train_dit(config, out=args.out, resume=args.resume)
        if document:
            print(f"run folder: {document['run']}  steps {document['steps']}  final loss {document['final_loss']:.4f}")
        return 0
    if args.dit_command == "sample":
        from .arguments import check_out_folder
        from .generate.sample import generate, write_samples

        out = check_out_folder(args.out) if args.out else Path(args.run) / "generated"  # before sampling
        images, labels = generate(args.run, args.num, args.cfg, args.steps, args.sampler, args.eta, args.batch_size,
                                  args.class_id, args.seed, args.device)
        write_samples(images, labels, out)
        kind = "clips (mp4)" if images.dim() == 5 else "samples"
        print(f"{len(images)} {kind} in {out} (grid: {out / 'grid.png'})")
        return 0
    from .generate.evaluate import evaluate_run

    document = evaluate_run(args.run, args.reference, args.num, weights=args.weights, cfg=args.cfg, steps=args.steps,
                            method=args.sampler, eta=args.eta, batch_size=args.batch_size, seed=args.seed,
                            device=args.device, out=args.out, frame_stride=args.frame_stride)
    for name, value in document["metrics"].items():
        print(f"  {name:9} {value:.4f}")
    for name, reason in document["not_computed"].items():
        print(f"  {name:9} not computed: {reason}")
    print(f"report: {document['report']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="vitok", description="ViTok visual tokenizers for images and video.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="parameters, bottleneck size and GFLOPs of a variant",
                          description="Without NAME, prints every variant the paper studies. A released v2 "
                                      "checkpoint's name (vitok-v2/350M-f16x64, ...) describes its architecture "
                                      "without downloading it.")
    info.add_argument("name", nargs="?", help='variant name such as "S-B/16" or "S-B/4x8", or a released '
                                              'checkpoint such as "vitok-v2/350M-f16x64"')
    info.add_argument("--channels", type=int, default=None,
                      help="latent channels c (default 16; a released checkpoint has its own)")
    info.add_argument("--image-size", type=int, default=None, help="H = W in pixels (default 256; 128 for video)")
    info.add_argument("--frames", type=int, default=None, help="frames T for video variants (default 16)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=cmd_info)

    cv = sub.add_parser("convert", help="convert another implementation's tokenizer weights into a vitok checkpoint",
                        description="Writes DST (config.json + model.safetensors), loadable with "
                                    "ViTok.from_pretrained(DST) and every command that takes a checkpoint. "
                                    "vitok-v2: the ViTok authors' v2 tokenizers (github Na-VAE/vitok-release); "
                                    "a released name is downloaded from the Hugging Face Hub (needs "
                                    "huggingface_hub: pip install 'vitok[hub]'; HF_HUB_OFFLINE=1 uses its cache).")
    cv.add_argument("source", choices=list(CONVERTERS), help="format of SRC: vitok-v2")
    cv.add_argument("src", metavar="SRC",
                    help="folder holding encoder.safetensors and decoder.safetensors, one .safetensors file "
                         "holding both, or a released checkpoint such as vitok-v2/350M-f16x64")
    cv.add_argument("dst", metavar="DST", help="checkpoint folder to write (created if needed)")
    cv.add_argument("--image-size", type=int, default=256,
                    help="nominal image size recorded in the config (default 256; any size runs)")
    cv.add_argument("--name", default="", help="name recorded in the config (default: the release's name, if any)")
    cv.add_argument("--revision", default=None,
                    help="Hub branch, tag or commit of a released checkpoint (default main)")
    cv.set_defaults(func=cmd_convert)

    rec = sub.add_parser("reconstruct", help="reconstruct images (or videos) through a checkpoint and report "
                                             "PSNR/SSIM",
                         description="Image models: PNG reconstructions. Video models: each video of any length "
                                     "is read frame by frame, encoded and decoded in overlapping chunks of the "
                                     "model's clip length (blended across chunk edges) and written as mp4, with "
                                     "per-frame PSNR/SSIM and the temporal metric in metrics.json.")
    rec.add_argument("checkpoint", help="folder written by ViTok.save_pretrained")
    rec.add_argument("images", nargs="+", help="image files (any format Pillow reads), or videos for a video model")
    rec.add_argument("--out", required=True, help="folder for reconstructions and metrics.json")
    rec.add_argument("--size", type=int, default=None,
                     help="resize the shorter side to SIZE and center-crop a square (default: keep the size, "
                          "center-cropping to a multiple of the patch size)")
    rec.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    rec.add_argument("--sample", action="store_true", help="decode a posterior sample instead of the mean")
    add_tiling_arguments(rec, chunk_help="video models: frames per chunk (a multiple of q; default the model's "
                                         "clip length)")
    rec.add_argument("--frames", type=int, default=None, help="video models: reconstruct only the first N frames")
    rec.set_defaults(func=cmd_reconstruct)

    ev = sub.add_parser("eval", help="rFID, rIS, PSNR, SSIM, LPIPS (images) or rFVD, PSNR, SSIM (video) on a dataset",
                        description="Streams a dataset through encode/decode (posterior mean). Under torchrun "
                                    "every rank takes its share and rank 0 writes the report.")
    ev.add_argument("checkpoint", help="folder written by ViTok.save_pretrained")
    add_stream_arguments(ev, "evaluate only the first N samples")
    ev.add_argument("--out", default=None, help="report folder (default: CKPT-eval next to the checkpoint)")
    ev.add_argument("--weights", default=None, help="folder of feature-network weights (default $VITOK_WEIGHTS)")
    ev.add_argument("--metrics", default=None, help="comma-separated subset, e.g. psnr,ssim (default: all)")
    ev.add_argument("--fp32", action="store_true", help="run the tokenizer in float32 on GPU (default bf16)")
    add_tiling_arguments(ev, chunk_help="video models: encode and decode clips in chunks of this many frames "
                                        "(default: chunks of the model's clip length when --frames is longer)")
    ev.set_defaults(func=cmd_eval)

    st = sub.add_parser("stats", help="compute a tokenizer's latent statistics over a data set (saved in its "
                                      "config.json)",
                        description="Streams a data set through the encoder (posterior mean) and stores per-channel "
                                    "mean and std (float64 sums), a global shift_factor and scaling_factor, the "
                                    "number of samples and the data set's fingerprint in the tokenizer's "
                                    "config.json; encode(normalise=True), `vitok latents` and `vitok dit` use "
                                    "them. Under torchrun every rank takes its share.")
    st.add_argument("checkpoint", help="tokenizer folder written by ViTok.save_pretrained")
    add_stream_arguments(st, "use only the first N samples")
    st.add_argument("--bf16", action="store_true", help="encode in bfloat16 on GPU (default float32)")
    st.set_defaults(func=cmd_stats)

    pr = sub.add_parser("prepare", help="write an image folder, resized once, into tar shards for fast training",
                        description="Decodes every image once, resizes its shorter side to --size (never "
                                    "upsampling), re-encodes it and writes WebDataset-style .tar shards plus "
                                    "prepare.json; `vitok train data.source=OUT` then decodes small images instead "
                                    "of the originals. Resumable: complete shards are kept.")
    pr.add_argument("source", help="image folder (recursive)")
    pr.add_argument("--out", required=True, help="folder for the shards (outside the source)")
    pr.add_argument("--size", type=int, required=True,
                    help="shorter side in pixels, e.g. 1.25x the training size so random crops keep some room")
    pr.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    pr.add_argument("--format", default="jpg", choices=["jpg", "png"], help="stored format (default jpg)")
    pr.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95, 4:4:4 chroma)")
    pr.add_argument("--labels", action="store_true", help="store each image's class sub-folder as KEY.cls")
    pr.add_argument("--workers", type=int, default=None, help="encoding processes (default: CPUs - 1, at most 8)")
    pr.set_defaults(func=cmd_prepare)

    ex = sub.add_parser("export", help="export a tokenizer to ONNX (encoder and decoder graphs), checked with "
                                       "onnxruntime",
                        description="Writes OUT_DIR/encoder.onnx (pixels B×3×H×W in [-1, 1] -> latents B×L×c, the "
                                    "posterior mean), OUT_DIR/decoder.onnx (latents and the int64 size [H, W] -> "
                                    "pixels) and OUT_DIR/onnx.json, with dynamic batch and spatial size, then runs "
                                    "both with onnxruntime on the CPU on real photos against PyTorch (max |diff|, "
                                    "PSNR, CPU ms per image). Needs pip install 'vitok[onnx]'.")
    ex.add_argument("checkpoint", help="tokenizer folder written by ViTok.save_pretrained, or a released name")
    ex.add_argument("--onnx", required=True, metavar="OUT_DIR", help="folder for the ONNX files (created if needed)")
    ex.add_argument("--image-size", type=int, default=None,
                    help="size the graphs are traced and checked at (default: the model's nominal size)")
    ex.add_argument("--opset", type=int, default=None, help="ONNX opset, 18 or later (default: the exporter's)")
    ex.add_argument("--overwrite", action="store_true", help="replace the ONNX files of an earlier export in OUT_DIR")
    ex.add_argument("--fixed-size", action="store_true",
                    help="graphs for --image-size only (batch stays dynamic); the decoder then has no size input")
    ex.add_argument("--no-check", action="store_true", help="skip the onnxruntime check against PyTorch")
    ex.add_argument("--photos", nargs="+", default=None, help="images for the check (default: the bundled photos)")
    ex.add_argument("--threads", type=int, default=None,
                    help="CPU threads for both torch and onnxruntime in the check (default: torch's)")
    ex.set_defaults(func=cmd_export)

    pu = sub.add_parser("push", help="upload a tokenizer and a generated model card to the Hugging Face Hub",
                        description="Uploads config.json and model.safetensors (the files of save_pretrained, "
                                    "latent statistics included) and a README.md model card: architecture, E = L·c, "
                                    "training data and steps, the run's metrics, latent statistics, licence, how to "
                                    "load it. Needs `pip install 'vitok[hub]'` and a token (huggingface-cli login "
                                    "or HF_TOKEN).")
    pu.add_argument("model", help="a `vitok train` run folder or a tokenizer folder")
    pu.add_argument("repo", help="Hub repo id OWNER/NAME (created if missing)")
    pu.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    pu.add_argument("--private", action="store_true", help="create the repo as private")
    pu.add_argument("--license", default="other", help="licence identifier for the card, e.g. apache-2.0 "
                                                      "(default other)")
    pu.add_argument("--data", default=None, help="what it was trained on, for the card (default: from the run)")
    pu.add_argument("--message", default=None, help="commit message")
    pu.add_argument("--dry-run", default=None, metavar="DIR", help="write the files that would be uploaded into "
                                                                   "DIR and upload nothing")
    pu.set_defaults(func=cmd_push)

    tr = sub.add_parser("train", help="train a tokenizer (two stages) and write a run folder",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_train_epilog(),
                        description="Without arguments: a small tokenizer on the bundled photos (a few CPU "
                                    "minutes). Multi-GPU: torchrun --nproc_per_node=N -m vitok train ...")
    tr.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides, e.g. train.batch_size=64 model.channels=8")
    tr.add_argument("--config", default=None,
                    help="YAML config, or a shipped config's name: demo (the default), sb16_256, sb4x8_video")
    tr.add_argument("--out", default=None, help="run folder (default runs/<name>-<timestamp>)")
    tr.add_argument("--resume", default=None, metavar="RUN_DIR",
                    help="continue a run in place from its newest checkpoint (no --out)")
    tr.__class__ = _OverridesAnywhere  # overrides anywhere among the options (sub-parsers are built by argparse)
    tr.set_defaults(func=cmd_train)

    sw = sub.add_parser("sweep", help="train a grid of tokenizers over p, c and model size; fit metrics against log E",
                        description="Trains every point of SPEC not yet finished (resuming interrupted ones), then "
                                    "writes results.csv/md, fits.json and plots into the sweep folder. A spec with a "
                                    "generation: section also trains a DiT on every point's latents and scores its "
                                    "samples (the paper's second law). The spec format is documented in "
                                    "vitok/sweep/spec.py.")
    sw.add_argument("spec", help="sweep YAML, or a shipped spec's name: e_sweep, encoder, decoder (each also as "
                                 "*_small), tiny; gen_sweep_small, gen_sweep_tiny (with generation)")
    sw.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides for every point, after the spec's, e.g. data.source=/data/train; "
                         "generation.KEY=VALUE sets the generation section, e.g. generation.data=/data/labelled/train")
    sw.add_argument("--report", action="store_true", help="only rebuild the table, fits and plots; train nothing")
    sw.add_argument("--gpus", type=int, default=1,
                    help="train N points at once, one `vitok train` process per GPU (default 1: one after another "
                         "in this process)")
    sw.add_argument("--out", default=None, help="sweep folder (default: the spec's out, else sweeps/<name>)")
    sw.set_defaults(func=cmd_sweep)

    lt = sub.add_parser("latents", help="encode a labelled image or video folder (class = sub-folder) into a "
                                        "latent store",
                        description="Posterior-mode latents of every image, in safetensors shards plus index.json "
                                    "(classes, tokenizer, per-channel mean/std). Rerunning skips finished shards "
                                    "and encodes unreadable (e.g. truncated) ones again. "
                                    "Multi-GPU: torchrun --nproc_per_node=N -m vitok latents ... --device cuda "
                                    "(shards are spread over the processes).")
    lt.add_argument("checkpoint", help="tokenizer folder written by ViTok.save_pretrained")
    lt.add_argument("--data", required=True, help="folder with one sub-folder of images (videos for a video "
                                                   "tokenizer) per class, or .tar shards (a .tar, a quoted glob "
                                                   "or a folder of them) whose samples carry a KEY.cls label")
    lt.add_argument("--out", required=True, help="latent store folder")
    lt.add_argument("--image-size", type=int, default=None, help="resize + centre-crop size (default: the model's)")
    lt.add_argument("--batch-size", type=int, default=32)
    lt.add_argument("--shard-size", type=int, default=1024, help="latents per shard (default 1024)")
    lt.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"], help="storage dtype")
    lt.add_argument("--store-std", action="store_true", help="also store the posterior std (for sampled latents)")
    lt.add_argument("--upsample", action="store_true", help="allow images smaller than the size (upsampled)")
    lt.add_argument("--frame-stride", type=int, default=1,
                    help="video tokenizers: take every n-th frame for the clip (default 1)")
    lt.add_argument("--device", default="cpu", help="torch device (default cpu; under torchrun, cuda means "
                                                    "each process's own GPU)")
    lt.set_defaults(func=cmd_latents)

    dit = sub.add_parser("dit", help="train, sample or evaluate a class-conditional latent DiT")
    dit_sub = dit.add_subparsers(dest="dit_command", required=True, metavar="ACTION")
    dtr = dit_sub.add_parser("train", help="train a DiT on a latent store and write a run folder",
                             description="Multi-GPU: torchrun --nproc_per_node=N -m vitok dit train ...")
    dtr.add_argument("overrides", nargs="*", metavar="key=value",
                     help="fields of DiTTrainConfig (vitok/generate/train.py), e.g. steps=400000 batch_size=256")
    dtr.add_argument("--latents", default=None, help="latent store folder written by `vitok latents`")
    dtr.add_argument("--model", default=None, help="DiT-S/B/L/XL, optionally /2 (default DiT-S)")
    dtr.add_argument("--out", default=None, help="run folder (default runs/dit-<model>-<timestamp>)")
    dtr.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    dsa = dit_sub.add_parser("sample", help="sample images from a run's EMA DiT")
    dev_ = dit_sub.add_parser("eval", help="gFID/gIS (images) or gFVD (video) of a run's samples against a "
                                           "reference folder")
    for p in (dsa, dev_):
        p.add_argument("run", help="run folder written by `vitok dit train`")
        p.add_argument("--num", type=int, default=64, help="number of samples")
        p.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance scale (1 = none)")
        p.add_argument("--steps", type=int, default=250, help="sampling steps")
        p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
        p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 deterministic)")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="cpu", help="torch device (default cpu)")
        p.add_argument("--out", default=None, help="output folder (default RUN/generated or RUN/gen-eval)")
    dsa.add_argument("--class-id", type=int, default=None, help="sample only this class (default: cycle classes)")
    dev_.add_argument("--reference", required=True, help="folder of reference (real) images, or videos for a "
                                                         "video run")
    dev_.add_argument("--frame-stride", type=int, default=1,
                      help="video runs: reference clips take every n-th frame (default 1)")
    dev_.add_argument("--weights", default=None, help="folder of feature-network weights (default $VITOK_WEIGHTS)")
    dit.set_defaults(func=cmd_dit)

    wt = sub.add_parser("weights", help="list the weight files vitok can use and whether they are present")
    wt.add_argument("--weights", default=None, help="folder to look in (default $VITOK_WEIGHTS)")
    wt.add_argument("--json", action="store_true")
    wt.set_defaults(func=cmd_weights)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vitok` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
