"""Training configuration: typed dataclasses, YAML files and `section.field=value` overrides.

A run is described by one `TrainConfig`; `load_config` builds it from defaults, then a YAML
file, then command-line overrides, and validates it before any work starts. The resolved
config is written into every run folder, so a run can always be reproduced from its folder.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

if typing.TYPE_CHECKING:
    from ..model import ViTokConfig


@dataclass
class ModelSection:
    """The tokenizer: a named variant ("S-B/16", "S-B/4x8") plus optional explicit sizes, or an existing
    tokenizer to fine-tune (init), whose own config then fixes the architecture and sizes."""

    # "" = random init. Else a checkpoint folder (save_pretrained, `vitok convert`) or a released name
    # ("vitok-v2/350M-f16x64"): its architecture, sizes and weights; image_size stays the training crop.
    # The fields below that fix the model's shape (name, channels, frames, qk_norm, explicit sizes) must
    # then be left at their defaults or agree with the checkpoint.
    init: str = ""
    name: str = "S-B/16"
    channels: int = 16  # c: latent channels per token
    image_size: int = 256
    frames: int = 1  # > 1 trains a video model on clips of this many frames
    qk_norm: bool = False
    # Explicit sizes override the name's (null = as the name says); any width/depth/heads/p/q works.
    encoder_width: int | None = None
    encoder_depth: int | None = None
    encoder_heads: int | None = None
    decoder_width: int | None = None
    decoder_depth: int | None = None
    decoder_heads: int | None = None
    patch_size: int | None = None
    temporal_patch: int | None = None
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile each Transformer block and the LPIPS network (GPU)
    # The residual stream's dtype under bf16 autocast: "float32" (exact sums) or "bfloat16" (less
    # memory traffic: 1.06x the training step of S-B/16 at 256p on an H100, benchmarks/NOTES.md).
    residual_dtype: str = "float32"
    # "torch" (plain ops; inductor fuses them under compile) or "triton": fused kernels for the residual
    # add + RMSNorm, the SiLU gate and RoPE + the q/k/v layout (model/kernels.py; CUDA with triton).
    kernels: str = "torch"


@dataclass
class DataSection:
    """Where images or videos come from and how training crops are cut."""

    source: str = ""  # image/video folder, .tar shard(s) or glob; "" = the bundled photos
    val_source: str = ""  # a separate held-out set; "" = hold out `holdout` files of `source`
    holdout: int = 2  # whole files held out for evaluation when val_source is empty
    crop: str = "random"  # "random" (random-resized crop) or "center"
    min_scale: float = 0.5  # smallest crop area fraction of the random-resized crop
    flip: bool = True
    frame_stride: int = 1  # video: take every k-th frame
    workers: int = 2  # data loader processes per rank
    # Where training JPEGs are decoded: "cpu" (the loader processes, Pillow), "gpu" (nvJPEG in the
    # training process, crops resized on the device: data/gpu_decode.py; needs CUDA and torchvision;
    # 1.43x the images/s of "cpu" in real S-B/16 training on an H200, benchmarks/NOTES.md), or "auto":
    # "gpu" for image models on CUDA when torchvision imports, else "cpu".
    decode: str = "auto"
    eval_limit: int = 256  # held-out samples evaluated (0 = all)


@dataclass
class LossSection:
    """Loss terms and their weights (the paper's beta 1e-3 KL and eta 1.0 LPIPS; lambda: see gan_weight)."""

    reconstruction: str = "mse"  # "mse" or "l1"
    reconstruction_weight: float = 1.0
    kl_weight: float = 1e-3  # beta; KL averaged per latent element as in the authors' code
    lpips_weight: float = 1.0  # eta; needs the VGG16 and LPIPS head files (see `vitok weights`)
    lpips_max_frames: int = 4  # video: LPIPS on this many evenly spaced frames per clip
    # Speed knobs, off (1.0) in the paper's recipe: score LPIPS, and run the discriminator's
    # generator and discriminator passes (R1 included), on only the first ceil(f·B) samples of each
    # process's batch. Batches come shuffled, so that is a random subset and the loss an unbiased
    # estimate of the full-batch mean; the cost of those networks falls by f (benchmarks/NOTES.md).
    lpips_fraction: float = 1.0
    disc_fraction: float = 1.0
    require_lpips: bool = False  # stop before training when the LPIPS files are missing
    # lambda, stage 2 only. The paper's fixed 1.0 (and a fixed 0.1) wrecked c=128 decoders on real photos;
    # 0.5 times the adaptive weight below kept PSNR within 0.05 dB at c=16 and c=128 (docs/stage2_check).
    gan_weight: float = 0.5
    gan_warmup_steps: int = 2000  # lambda ramps linearly from 0 over the first stage-2 steps
    gan_loss: str = "non_saturating"  # or "hinge"
    # Scale lambda each step by ||grad rec|| / ||grad GAN|| at the decoder's last layer (taming-
    # transformers / LDM), clamped to [0, 1e4]: the GAN then pushes as hard as the reconstruction
    # terms pull, whatever their scale (a c=128 decoder's tiny MSE no longer loses to the GAN).
    adaptive_gan_weight: bool = True
    r1_weight: float = 0.1  # R1 gradient penalty on real images (lazy, every r1_every steps)
    r1_every: int = 16
    lecam_weight: float = 0.0
    disc_channels: int = 32  # the discriminator's first width; 64 costs 2-3x the stage-2 step (benchmarks/NOTES.md)
    disc_max_channels: int = 512
    disc_video: str = "frame"  # video discriminator: "frame" (per frame) or "3d"
    weights_dir: str = ""  # folder with the network weight files; "" = $VITOK_WEIGHTS or ~/.cache/vitok/weights


@dataclass
class OptimSection:
    """AdamW with linear warm-up then cosine decay; the discriminator has its own."""

    lr: float = 1e-4  # peak learning rate at a global batch of 256 (scaled by batch/256)
    scale_lr: bool = True
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 1e-4  # not applied to norms and biases
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    stage2_lr_scale: float = 0.2  # stage 2 fine-tunes a converged decoder: peak lr = lr * this
    grad_clip: float = 1.0  # 0 disables clipping
    disc_lr: float = 2e-5
    disc_warmup_steps: int = 1000
    fused: bool = True  # fused AdamW kernel on GPU


@dataclass
class TrainSection:
    """Schedule, precision, parallelism and bookkeeping."""

    stage1_steps: int = 100_000
    stage2_steps: int = 100_000  # 0 skips stage 2
    batch_size: int = 256  # global batch over all ranks
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda"
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "bf16", "fp32"
    parallel: str = "ddp"  # "ddp" or "fsdp" (shards the model; for large decoders)
    ema_decay: float = 0.9999  # EMA of the decoder in stage 2
    deterministic: bool = False  # deterministic algorithms (bit-identical resume on CPU)
    max_bad_steps: int = 5  # stop after this many non-finite losses in a row
    time_limit_minutes: float = 0.0  # stop cleanly (checkpoint, report) after this long; 0 = no limit
    log_every: int = 10
    eval_every: int = 1000  # held-out evaluation (0 = only at the end)
    image_every: int = 1000  # refresh reconstructions.png
    checkpoint_every: int = 1000
    keep_last: int = 3  # checkpoints kept besides the best
    tensorboard: bool = False
    progress: bool = True


@dataclass
class GuardSection:
    """Stage 2's reconstruction guard and the rule that picks the exported checkpoint (train/guard.py)."""

    margin_db: float = 1.0  # held-out PSNR may fall this far below the end of stage 1
    action: str = "backoff"  # on a breach: "backoff" (scale lambda and lr), "stop", or "warn" (log only)
    backoff_factor: float = 0.5  # lambda and the stage-2 lr are multiplied by this at each backoff
    max_backoffs: int = 2  # the breach after this many backoffs stops stage 2
    select: str = "swd"  # exported checkpoint: best "swd", "sharpness" (closest to 1) or "psnr" within the margin


@dataclass
class TrainConfig:
    """One training run."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    guard: GuardSection = field(default_factory=GuardSection)
    name: str = "run"  # names the run folder runs/<name>-<timestamp>

    def to_dict(self) -> dict:
        """Plain nested dict (what config.yaml holds)."""
        return dataclasses.asdict(self)

    def model_overrides(self) -> dict:
        """Keyword arguments for vitok.model.config_from_name."""
        m = self.model
        out = {"channels": m.channels, "image_size": m.image_size, "frames": m.frames, "qk_norm": m.qk_norm}
        for key in ("encoder_width", "encoder_depth", "encoder_heads", "decoder_width", "decoder_depth",
                    "decoder_heads", "patch_size", "temporal_patch"):
            if getattr(m, key) is not None:
                out[key] = getattr(m, key)
        return out

    @property
    def total_steps(self) -> int:
        return self.train.stage1_steps + self.train.stage2_steps


SECTIONS = ("model", "data", "loss", "optim", "train", "guard")
CHOICES = {
    "data.crop": ("random", "center"),
    "data.decode": ("auto", "cpu", "gpu"),
    "loss.reconstruction": ("mse", "l1"),
    "loss.gan_loss": ("non_saturating", "hinge"),
    "loss.disc_video": ("frame", "3d"),
    "model.residual_dtype": ("float32", "bfloat16"),
    "model.kernels": ("torch", "triton"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "bf16", "fp32"),
    "train.parallel": ("ddp", "fsdp"),
    "guard.action": ("backoff", "stop", "warn"),
    "guard.select": ("swd", "sharpness", "psnr"),
}


def fields_table() -> list[tuple[str, str, object]]:
    """(dotted key, type name, default) for every field: what `vitok train --help` lists."""
    rows = [("name", "str", TrainConfig.name)]
    for section in SECTIONS:
        cls = type(getattr(TrainConfig(), section))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            rows.append((f"{section}.{f.name}", _type_name(hints[f.name]), f.default))
    return rows


def _type_name(tp) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return f"{args[0].__name__} or null"
    return tp.__name__


def _coerce(key: str, value, tp):
    """Check (and where lossless, convert) one value against its field type."""
    optional = type(None) in typing.get_args(tp)
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"config field {key} cannot be null; give a {base.__name__}")
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif base is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            _check_finite(key, number)
            return number
    elif base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ValueError(f"config field {key} must be a {base.__name__}{' or null' if optional else ''}, "
                     f"got {value!r} ({type(value).__name__})")


def _check_finite(key: str, value: float) -> None:
    """NaN passes every range check (it compares False with any bound), so non-finite floats are refused first."""
    if not math.isfinite(value):
        raise ValueError(f"config field {key} must be a finite number, got {value}")


def apply(config: TrainConfig, updates: dict, origin: str) -> None:
    """Apply a nested dict ({"train": {"steps": 5}}) of updates in place; unknown keys are errors."""
    for top, value in updates.items():
        if top == "name":
            config.name = _coerce("name", value, str)
            continue
        if top not in SECTIONS:
            raise ValueError(f"{origin}: unknown config section {top!r}; sections are {', '.join(SECTIONS)} "
                             f"(and the top-level 'name')")
        if not isinstance(value, dict):
            raise ValueError(f"{origin}: config section {top!r} must be a mapping of fields, got {value!r}")
        section = getattr(config, top)
        hints = typing.get_type_hints(type(section))
        for key, val in value.items():
            if key not in hints:
                close = [k for k in hints if k.startswith(key[:3])]
                hint = f" (did you mean {', '.join(top + '.' + k for k in close)}?)" if close else ""
                raise ValueError(f"{origin}: unknown config key {top}.{key}{hint}; `vitok train --help` lists them")
            setattr(section, key, _coerce(f"{top}.{key}", val, hints[key]))


def parse_override(text: str) -> dict:
    """"train.batch_size=64" -> {"train": {"batch_size": 64}} (values parsed as YAML scalars)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.field=value, e.g. train.batch_size=64")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    parts = key.strip().split(".")
    if parts == ["name"]:
        return {"name": value}
    if len(parts) != 2:
        raise ValueError(f"override key {key!r} must be section.field (sections: {', '.join(SECTIONS)})")
    return {parts[0]: {parts[1]: value}}


SHIPPED = Path(__file__).resolve().parent.parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the configs that ship with vitok (usable as --config NAME)."""
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def resolve_shipped(path: str | Path, folder: Path, what: str, plural: str) -> Path:
    """A YAML path, or the name of a YAML file that ships in `folder` ("demo", "e_sweep", ...)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    shipped = folder / f"{path}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise ValueError(f"{what} {path} does not exist; shipped {plural}: {names} (pass a name or a path)")


def read_yaml(path: Path, what: str):
    """The parsed content of a YAML file, with a ValueError naming the file when it does not parse."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {path} is not valid YAML: {err}") from None


def resolve_config_path(path: str | Path) -> Path:
    """A YAML path, or the name of a shipped config ("demo", "sb16_256", ...)."""
    return resolve_shipped(path, SHIPPED, "config file", "configs")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults <- YAML file (a path or a shipped config's name) <- overrides, then validated."""
    config = TrainConfig()
    if path is not None:
        path = resolve_config_path(path)
        data = read_yaml(path, "config file") or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
        apply(config, data, str(path))
        if "name" not in data:
            config.name = path.stem
    parsed = [(text, parse_override(text)) for text in overrides]
    if path is not None and any("init" in (p.get("model") or {}) for _, p in parsed):
        # model.init on the command line takes the architecture from that checkpoint: the file's model
        # shape (written for a random init, e.g. the demo's T-T/8) gives way, unless an override sets it.
        for key in INIT_FIXED:
            setattr(config.model, key, getattr(ModelSection(), key))
    for text, parsed_override in parsed:
        apply(config, parsed_override, f"override {text!r}")
    validate(config)
    return config


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def check_data_paths(config: TrainConfig, run_dir: str | Path | None = None) -> None:
    """Fail before any model is built when a data path does not exist (shipped configs hold placeholders),
    or when the run folder lies inside a data folder (folders are read recursively: the run's own
    images, reconstructions.png and the plots, would become training or held-out data)."""
    for key in ("source", "val_source"):
        value = getattr(config.data, key)
        if value and not any(ch in value for ch in "*?[") and not Path(value).exists():
            raise ValueError(f"data.{key} {value} does not exist; point it at an image or video folder or at "
                             f".tar shards (a path or a glob), e.g. data.{key}=/data/train")
        if value and run_dir is not None and Path(value).is_dir():
            data, run = Path(value).resolve(), Path(run_dir).resolve()
            if run == data or data in run.parents:
                raise ValueError(f"the run folder {run_dir} is inside data.{key} {value}: the images the run "
                                 f"writes would be read as data; choose an --out outside {value}")


# Fields a resumed run cannot change: they fix the shapes of the weights and optimizer state in
# the checkpoint (train.parallel: how the optimizer state is laid out).
FIXED_ON_RESUME = ("model.name", "model.channels", "model.image_size", "model.frames", "model.qk_norm",
                   "model.encoder_width", "model.encoder_depth", "model.encoder_heads", "model.decoder_width",
                   "model.decoder_depth", "model.decoder_heads", "model.patch_size", "model.temporal_patch",
                   "train.parallel")
# The discriminator's shape, fixed once a checkpoint holds one (stage 2).
FIXED_IN_STAGE2 = ("loss.disc_channels", "loss.disc_max_channels", "loss.disc_video")
MAY_CHANGE_ON_RESUME = ("the loss weights and loss settings other than the discriminator's, optim.* (lr, betas, "
                        "warm-up, ...), train.stage1_steps/stage2_steps, the eval, log, image and checkpoint "
                        "intervals, keep_last, time_limit_minutes, guard.*, data.*, model.grad_checkpointing/"
                        "compile/residual_dtype/kernels, and model.init as long as it describes the same model (a "
                        "resumed run reads only its architecture and sizes)")


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"steps": 5}} -> {"train.steps": 5}: a nested config as dotted keys."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_compatible(config: TrainConfig, stored: dict | None, stage: int, checkpoint: str | Path) -> None:
    """Refuse, before anything is written, a resumed config that the checkpoint's weights cannot fit.

    stored: the training config saved in the checkpoint (state.pt's "config"); stage: the checkpoint's stage.
    """
    if stored is None:
        return  # written before configs were stored: the load itself checks the shapes
    fixed = FIXED_ON_RESUME + (FIXED_IN_STAGE2 if stage == 2 else ())
    if stage == 2 and config.model.frames <= 1:
        fixed = tuple(k for k in fixed if k != "loss.disc_video")  # an image model has no video discriminator
    now, before, defaults = flatten(config.to_dict()), flatten(stored), flatten(TrainConfig().to_dict())
    differ = [k for k in fixed if before.get(k, defaults[k]) != now[k]]
    if differ:
        details = "; ".join(f"{k} is {before.get(k, defaults[k])!r} there, {now[k]!r} now" for k in differ)
        restore = " ".join(f"{k}={_yaml_scalar(before.get(k, defaults[k]))}" for k in differ)
        raise ValueError(f"--resume: the config differs from checkpoint {checkpoint} in fields that cannot change "
                         f"on resume ({details}); drop those overrides (or pass {restore}), or start a new run "
                         f"to change them. What may change on resume: {MAY_CHANGE_ON_RESUME}")
    if config.model.init or before.get("model.init"):
        _check_resume_model(config, Path(checkpoint), before.get("model.init", ""))
    if stage == 2 and config.train.stage2_steps == 0:
        raise ValueError(f"--resume: checkpoint {checkpoint} is in stage 2 (it holds a discriminator) but "
                         f"train.stage2_steps is 0 now; keep train.stage2_steps > 0 (it was "
                         f"{before.get('train.stage2_steps')})")


def _check_resume_model(config: TrainConfig, checkpoint: Path, stored_init: str) -> None:
    """With model.init, the model's shape comes from that folder, not from the config's own fields: on resume
    it must still describe the weights in the run's checkpoint (the folder may have moved or changed)."""
    from ..model import ViTok

    folder = checkpoint / "model"
    if not (folder / "config.json").is_file():
        return  # no exported model to compare with: loading the weights checks their shapes
    saved = ViTok.read_config(folder)
    differ = model_differences(saved, resolve_model_config(config))
    if differ:
        was = f"{stored_init!r}" if stored_init else "'' (random init)"
        raise ValueError(f"--resume: with model.init {config.model.init!r} (it was {was} when the run started) "
                         f"the config describes another model than checkpoint {checkpoint} holds "
                         f"({'; '.join(differ)}); pass model.init={folder} (the run's own model: on resume only "
                         f"its architecture and sizes are read, the weights come from the checkpoint)")


def _yaml_scalar(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# ModelSection fields that fix the model's shape; with model.init its checkpoint's config sets them.
INIT_FIXED = ("name", "channels", "frames", "qk_norm", "encoder_width", "encoder_depth", "encoder_heads",
              "decoder_width", "decoder_depth", "decoder_heads", "patch_size", "temporal_patch")


def init_model_config(init: str) -> ViTokConfig:
    """The ViTokConfig of model.init, read without loading weights: config.json and the weights' header of a
    checkpoint folder (checked against each other), or the table of released v2 checkpoints."""
    from ..model import ViTok, vitok_v2

    released = ", ".join(vitok_v2.PREFIX + n for n in vitok_v2.RELEASED)
    # A local folder of that name wins: ViTok.from_pretrained is given the same string and resolves it alike.
    if init.startswith(vitok_v2.PREFIX) and not Path(init).exists():
        entry = vitok_v2.RELEASED.get(init[len(vitok_v2.PREFIX):])
        if entry is None:
            raise ValueError(f"model.init {init!r} is not a released checkpoint; the released ones are {released}")
        config = entry.config()
        config.name = init  # the name released_folder gives the converted checkpoint
        return config
    try:
        config = ViTok.read_config(init)
    except ValueError as err:
        raise ValueError(f"model.init: {err}. model.init takes a tokenizer folder written by save_pretrained, "
                         f"`vitok train` (RUN/model) or `vitok convert`, or a released name ({released})") from None
    return config


def resolve_model_config(config: TrainConfig) -> ViTokConfig:
    """The ViTokConfig a run trains: model.name with the explicit sizes, or, with model.init, that checkpoint's
    config with image_size set to model.image_size (the training crop). Model fields that contradict the
    checkpoint are refused; a field equal to its default counts as unset."""
    from ..model import config_from_name

    m = config.model
    if not m.init:
        try:
            return config_from_name(m.name, **config.model_overrides())
        except ValueError as err:
            raise ValueError(f"model section: {err}") from None
    base, defaults = init_model_config(m.init), ModelSection()
    conflicts = [key for key in INIT_FIXED if getattr(m, key) != getattr(defaults, key)
                 and getattr(m, key) != getattr(base, key)]
    if conflicts:
        details = "; ".join(f"model.{k} is {getattr(m, k)!r} here but {getattr(base, k)!r} there" for k in conflicts)
        unset = " ".join(f"model.{k}={_yaml_scalar(getattr(defaults, k))}" for k in conflicts)
        demo = (". The config file's model fields give way when model.init is an override on the command "
                "line; here model.init comes from the file, so its model fields must agree" if "name" in conflicts
                else "")
        raise ValueError(f"model.init {m.init} fixes the model's architecture and sizes, and the model section "
                         f"contradicts that checkpoint: {details}. Drop those settings, or set them to the "
                         f"checkpoint's values or to their defaults ({unset}), which take the checkpoint's "
                         f"values{demo}")
    try:
        return dataclasses.replace(base, image_size=m.image_size)
    except ValueError as err:
        raise ValueError(f"model.image_size {m.image_size} with model.init {m.init}: {err}") from None


def model_differences(a: ViTokConfig, b: ViTokConfig, ignore: tuple[str, ...] = ("name",)) -> list[str]:
    """"field: A vs B" for every ViTokConfig field (but `ignore`) where two configs disagree."""
    return [f"{f.name}: {getattr(a, f.name)!r} vs {getattr(b, f.name)!r}" for f in dataclasses.fields(a)
            if f.name not in ignore and getattr(a, f.name) != getattr(b, f.name)]


def validate(config: TrainConfig, world: int = 1) -> None:
    """Reject impossible configurations before any work, with the fix in the message."""
    flat = {f"{s}.{k}": v for s in SECTIONS for k, v in dataclasses.asdict(getattr(config, s)).items()}
    # Before any range check: a config built in Python (not through _coerce) may hold NaN or inf.
    for key, value in flat.items():
        if isinstance(value, float):
            _check_finite(key, value)
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ValueError(f"{key} is {flat[key]!r}; choose one of {', '.join(allowed)}")
    model_config = resolve_model_config(config)
    t, d, o, lo = config.train, config.data, config.optim, config.loss
    if d.decode == "gpu" and model_config.is_video:
        raise ValueError("data.decode=gpu decodes JPEG images; video clips are decoded by PyAV on the CPU: "
                         "set data.decode=cpu for a video model")
    positive = {"train.batch_size": t.batch_size, "train.log_every": t.log_every,
                "train.checkpoint_every": t.checkpoint_every, "train.image_every": t.image_every,
                "train.max_bad_steps": t.max_bad_steps, "train.keep_last": t.keep_last,
                "data.frame_stride": d.frame_stride, "loss.r1_every": lo.r1_every,
                "loss.lpips_max_frames": lo.lpips_max_frames}
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    non_negative = {"train.stage1_steps": t.stage1_steps, "train.stage2_steps": t.stage2_steps,
                    "train.eval_every": t.eval_every, "data.workers": d.workers, "data.holdout": d.holdout,
                    "data.eval_limit": d.eval_limit, "optim.warmup_steps": o.warmup_steps,
                    "optim.disc_warmup_steps": o.disc_warmup_steps, "optim.grad_clip": o.grad_clip,
                    "optim.weight_decay": o.weight_decay, "loss.kl_weight": lo.kl_weight,
                    "loss.lpips_weight": lo.lpips_weight, "loss.gan_weight": lo.gan_weight,
                    "loss.r1_weight": lo.r1_weight, "loss.lecam_weight": lo.lecam_weight,
                    "loss.gan_warmup_steps": lo.gan_warmup_steps,
                    "train.time_limit_minutes": t.time_limit_minutes, "guard.margin_db": config.guard.margin_db,
                    "guard.max_backoffs": config.guard.max_backoffs}
    for key, value in non_negative.items():
        if value < 0:
            raise ValueError(f"{key} must be >= 0, got {value}")
    if t.stage1_steps + t.stage2_steps == 0:
        raise ValueError("train.stage1_steps and train.stage2_steps are both 0; nothing to train")
    if model_config.is_v2 and t.stage1_steps > 0 and lo.kl_weight > 0:
        raise ValueError(f"model.init {config.model.init} has a deterministic latent (architecture 'vitok-v2', a "
                         f"LayerNorm bottleneck): there is no KL term for loss.kl_weight={lo.kl_weight} to weigh in "
                         f"stage 1; set loss.kl_weight=0 to fine-tune encoder and decoder, or train.stage1_steps=0 "
                         f"to fine-tune the decoder alone")
    if not 0.0 < d.min_scale <= 1.0:
        raise ValueError(f"data.min_scale must be in (0, 1], got {d.min_scale}")
    for key in ("lpips_fraction", "disc_fraction"):
        if not 0.0 < getattr(config.loss, key) <= 1.0:
            raise ValueError(f"loss.{key} must be in (0, 1] (the share of each batch that the network "
                             f"scores; 1 = all), got {getattr(config.loss, key)}")
    if not 0.0 < config.guard.backoff_factor < 1.0:
        raise ValueError(f"guard.backoff_factor must be in (0, 1) (each backoff multiplies lambda and the "
                         f"stage-2 lr by it), got {config.guard.backoff_factor}")
    if lo.adaptive_gan_weight and t.parallel == "fsdp" and world > 1:
        raise ValueError("loss.adaptive_gan_weight needs the decoder's last layer whole on every process; "
                         "it does not work with train.parallel=fsdp: use train.parallel=ddp or turn it off")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if o.lr <= 0 or o.disc_lr <= 0 or o.stage2_lr_scale <= 0:
        raise ValueError(f"optim.lr, optim.disc_lr and optim.stage2_lr_scale must be > 0, got {o.lr}, "
                         f"{o.disc_lr} and {o.stage2_lr_scale}")
    if not (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1):
        raise ValueError(f"optim.beta1/beta2 must be in [0, 1), got {o.beta1}, {o.beta2}")
    if not 0 <= o.min_lr_ratio <= 1:
        raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
    if t.stage2_steps > 0:
        size = model_config.image_size
        if size < 8 or size & (size - 1):
            raise ValueError(f"model.image_size {size}: stage 2's discriminator needs a power of two >= 8 "
                             f"(e.g. {1 << max(3, size.bit_length() - 1)} or {1 << max(3, size.bit_length())}); "
                             f"or train stage 1 only with train.stage2_steps=0")
    if model_config.is_video and config.data.source == "":
        raise ValueError("a video model needs data.source pointing at a folder of videos; "
                         "the bundled default data are photos")
    if t.batch_size % world:
        lo_b, hi_b = (t.batch_size // world) * world, (t.batch_size // world + 1) * world
        raise ValueError(f"train.batch_size {t.batch_size} is not divisible by the {world} processes; "
                         f"use {lo_b or hi_b} or {hi_b}, or change --nproc_per_node")
