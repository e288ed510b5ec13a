"""Train a class-conditional DiT on a latent store, in DiT's order: data, model, EMA, loop, log, checkpoint.

Run folder (the tokenizer runs' conventions)::

    config.yaml      the resolved DiTTrainConfig
    metrics.jsonl    one line per log_every steps
    checkpoints/     step_XXXXXXXX/state.pt (+ model/: the EMA DiT), the last keep_checkpoints kept
    samples.png      a grid of decoded samples from the EMA model, refreshed every sample_every steps
    losses.png       the loss curve
    model/           the final EMA DiT (config.json + model.safetensors), what `vitok dit sample` loads
    report.json      a summary of the run (report.md: the same for people)
    train.log        warnings, e.g. a stop at time_limit_minutes

A run stopped by time_limit_minutes checkpoints and writes its report with "stopped_early": true;
`--resume` continues it to config.steps.

Every random draw of step s (which latents, timesteps, noise, dropped labels) comes from a
generator seeded with (seed, s), drawn for the global batch and then cut by rank, so a resumed
run repeats the uninterrupted one bit for bit and the batch does not depend on the world size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..model.pretrained import atomic_write
from ..model.variants import dataclass_from_dict
from ..train.distributed import out_of_time
from ..train.checkpoint import latest_checkpoint, load_checkpoint, prune, save_checkpoint
from ..train.optim import EMA
from ..train.report import RunLogger, dumps, loss_plot, progress_bar
from ..arguments import check_out_folder
from .diffusion import SCHEDULES, GaussianDiffusion, check_timesteps
from .dit import DiT, DiTConfig, dit_config
from .folders import DIT_FORMAT, MODEL_CONFIG, json_or_none, save_dit, what_folder, yaml_or_none
from .latents import LatentStore, check_tokenizer
from .sample import decode_latents, sample_latents, save_grid

@dataclass
class DiTTrainConfig:
    """Everything a DiT run depends on; any field can be overridden as key=value."""

    latents: str = ""  # latent store folder written by `vitok latents`
    model: str = "DiT-S"  # DiT-S/B/L/XL, "/2" merges 2×2 latent tokens
    width: int = 0  # 0: the named size's; set to build smaller test models
    depth: int = 0
    heads: int = 0
    steps: int = 10000
    batch_size: int = 64  # global, over all ranks
    lr: float = 1e-4  # DiT's constant learning rate
    warmup_steps: int = 0
    weight_decay: float = 0.0
    ema_decay: float = 0.9999  # ramped in as min(decay, (1 + n) / (10 + n))
    class_dropout: float = 0.1  # label dropout that trains the null label for guidance
    prediction: str = "eps"  # eps | v
    schedule: str = "linear"  # linear | cosine
    timesteps: int = 1000
    posterior_sample: bool = False  # train on z ~ posterior (needs a store built with --store-std)
    grad_clip: float = 1.0  # 0 disables clipping
    log_every: int = 50
    sample_every: int = 1000  # 0: only at the end
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    num_preview: int = 8  # samples in samples.png
    preview_steps: int = 50
    preview_cfg: float = 1.5
    time_limit_minutes: float = 0.0  # stop cleanly (checkpoint, report) after this long; 0 = no limit
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "bf16"  # bf16 autocast on GPU (CPU always runs fp32) | fp32
    compile: bool = True  # torch.compile each DiT block on GPU (ignored on CPU)
    progress: bool = True  # a tqdm bar on rank 0 (loss and samples/s at each log step)

    def validate(self) -> None:
        """Reject values that cannot work, naming the fix: every field's type and range, before any work."""
        self._check_types()
        if not self.latents:
            raise ValueError("no latent store given: pass --latents DIR (built by `vitok latents`)")
        for key in POSITIVE_INTS:
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        for key in ("width", "depth", "heads", "warmup_steps", "sample_every", "seed"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key, low, high in FLOAT_RANGES:
            self._check_range(key, low, high)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be bf16 or fp32, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        check_timesteps(self.schedule, self.timesteps)
        if self.preview_steps > self.timesteps:  # else the run trains, then fails at its first preview
            raise ValueError(f"preview_steps={self.preview_steps} exceeds timesteps={self.timesteps}: a sampler "
                             f"visits at most one step per timestep; raise timesteps or lower preview_steps")
        # The DiT's own checks (name, width divisible by heads, prediction, class_dropout) without the store.
        build_config(self, channels=1, num_classes=1)

    def _check_types(self) -> None:
        """Each field holds its declared type (a config.yaml edited by hand can hold anything)."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not FIELD_TYPES[field.type](value):
                raise ValueError(f"{field.name} takes a {field.type}, got {value!r}")

    def _check_range(self, key: str, low: float, high: float) -> None:
        """low <= value < high; NaN and infinities are refused."""
        value = getattr(self, key)
        if not (math.isfinite(value) and low <= value < high):
            wanted = f">= {low:g} and finite" if high == math.inf else f"in [{low:g}, {high:g})"
            raise ValueError(f"{key} must be {wanted}, got {value}")


# The declared field types (strings under `from __future__ import annotations`) and their checks; True and
# False are no numbers here.
FIELD_TYPES = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
               "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
               "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}
# Fields that count something and need at least one.
POSITIVE_INTS = ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "timesteps",
                 "num_preview", "preview_steps")
# (field, low, high): low <= value < high. ema_decay 1 (or more) would keep the EMA model at its initial
# weights, the model the run saves; lr is checked apart (> 0).
FLOAT_RANGES = (("ema_decay", 0.0, 1.0), ("class_dropout", 0.0, 1.0), ("weight_decay", 0.0, math.inf),
                ("grad_clip", 0.0, math.inf), ("preview_cfg", 0.0, math.inf), ("time_limit_minutes", 0.0, math.inf))
# What defines the trained model and what it learns to predict: fixed for the life of a run.
FIXED_ON_RESUME = ("width", "depth", "heads", "group", "prediction", "schedule", "timesteps")


def parse_overrides(config: DiTTrainConfig, overrides: list[str]) -> DiTTrainConfig:
    """Apply key=value strings, converting each value to its field's type."""
    types = {f.name: f.type for f in dataclasses.fields(config)}
    changes = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or key not in types:
            raise ValueError(f"bad override {item!r}: expected key=value with key one of {sorted(types)}")
        kind = types[key]
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{key} takes true or false, got {raw!r}")
            changes[key] = raw.lower() in ("true", "1")
        else:
            try:
                changes[key] = {"int": int, "float": float}.get(kind, str)(raw)
            except ValueError:
                raise ValueError(f"{key} takes a {kind}, got {raw!r}") from None
    return dataclasses.replace(config, **changes)


def build_config(config: DiTTrainConfig, channels: int, num_classes: int) -> DiTConfig:
    """The DiTConfig the train config names, sized for the store's channels and classes."""
    sizes = {k: getattr(config, k) for k in ("width", "depth", "heads") if getattr(config, k)}
    return dit_config(config.model, in_channels=channels, num_classes=num_classes,
                      prediction=config.prediction, class_dropout=config.class_dropout, **sizes)


def build_model(config: DiTTrainConfig, channels: int, num_classes: int) -> DiT:
    """The DiT the config names, sized for the store's channels and classes."""
    return DiT(build_config(config, channels, num_classes))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one step's draws."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class DiTTrainer:
    """The training loop's state; `run()` trains to config.steps, resuming from the newest checkpoint."""

    def __init__(self, config: DiTTrainConfig, run_dir: Path, resume: bool = False) -> None:
        from ..train.distributed import setup

        config.validate()
        self.config, self.run_dir = config, Path(run_dir)
        self.lock = None  # the run folder's lock, taken by run() on rank 0
        self.dist = setup(config.device)
        self.device = self.dist.device
        self.amp = self.device.type == "cuda" and config.precision == "bf16"
        self.store = LatentStore(config.latents)
        check_tokenizer(self.store.index, f"latent store {config.latents}")
        if config.batch_size % self.dist.world:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {self.dist.world} processes")

        torch.manual_seed(config.seed)
        self.model = build_model(config, self.store.index["channels"], self.store.num_classes).to(self.device)
        self.ema_model = build_model(config, self.store.index["channels"], self.store.num_classes).to(self.device)
        self.ema_model.requires_grad_(False).eval()
        self.ema = EMA(dict(self.ema_model.named_parameters()), dict(self.model.named_parameters()), config.ema_decay)
        self.diffusion = GaussianDiffusion(config.schedule, config.timesteps, config.prediction)
        cuda = self.device.type == "cuda"
        # One fused kernel for the whole update on the GPU instead of a dozen foreach passes.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                           betas=(0.9, 0.999), fused=cuda)
        if config.compile and cuda:
            self.model.compile_blocks()
        self.step = 0
        self.stopped_early = False  # set by run() when time_limit_minutes ends it before config.steps
        self.wall_seconds: float | None = None  # run()'s training loop, this invocation only
        if resume:
            self._restore()
        self.net = self.model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.amp else None)

    # ---- checkpoints --------------------------------------------------------------------------

    def export_info(self) -> dict:
        """What sampling needs besides the weights: normalisation, tokenizer and diffusion settings."""
        index = self.store.index
        latents = {k: index[k] for k in ("mean", "std", "grid", "classes", "num_classes", "tokenizer", "image_size")}
        latents["frames"] = index.get("frames", 1)  # stores written before video support hold images
        for key in ("tokenizer_weights", "normalisation", "stats_fingerprint"):  # absent from older stores
            if index.get(key) is not None:
                latents[key] = index[key]
        return {"latents": latents,
                "diffusion": {"schedule": self.config.schedule, "timesteps": self.config.timesteps,
                              "prediction": self.config.prediction}}

    def _save(self) -> None:
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "ema": self.ema.state_dict()}
        save_checkpoint(self.run_dir / "checkpoints", self.step, state,
                        export=lambda folder: save_dit(folder, self.ema_model, self.export_info()))
        prune(self.run_dir / "checkpoints", self.config.keep_checkpoints)

    def _restore(self) -> None:
        latest = latest_checkpoint(self.run_dir / "checkpoints")
        if latest is None:
            return
        self._check_checkpoint_matches(latest)
        state = load_checkpoint(latest, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])

    def _check_checkpoint_matches(self, latest: Path) -> None:
        """The model, diffusion and latent statistics this config builds are the checkpoint's, before loading.

        The checkpoint's exported model/config.json records all three; a different store (other
        channels, classes or statistics) or architecture would load as a raw shape error or, worse,
        continue training on latents normalised another way."""
        document = json_or_none(latest / "model" / MODEL_CONFIG)
        if not isinstance(document, dict) or document.get("format") != DIT_FORMAT:
            return  # nothing recorded to compare with; load_state_dict still checks the shapes
        info = self.export_info()
        # name is informational and class_dropout only steers training: both may differ.
        built = self.model.config.to_dict()
        pairs = [(key, document.get("dit", {}).get(key), value) for key, value in built.items()
                 if key not in ("name", "class_dropout")]
        pairs += [(key, document.get("diffusion", {}).get(key), value) for key, value in info["diffusion"].items()]
        pairs += [(f"latent store {key}", document.get("latents", {}).get(key), info["latents"][key])
                  for key in ("grid", "num_classes", "image_size", "frames", "mean", "std")]
        differ = [f"{key} {_short(old)} -> {_short(new)}" for key, old, new in pairs if old != new]
        if differ:
            raise ValueError(f"--resume {self.run_dir}: checkpoint {latest.name} holds another model than this "
                             f"config builds ({'; '.join(differ)}); these cannot change on resume: drop the "
                             f"overrides that change them (and pass the run's own latent store), or start a new "
                             f"run with --out")

    # ---- one step -----------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        c = self.config
        return c.lr * min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps else c.lr

    def train_step(self) -> dict:
        """One optimiser step on this rank's slice of the step's global batch; returns the logged values."""
        c, rank, world = self.config, self.dist.rank, self.dist.world
        g = step_generator(c.seed, self.step)
        indices = torch.randint(len(self.store), (c.batch_size,), generator=g)
        x0, labels = self.store.batch(indices, g, c.posterior_sample)  # B×L×c, B
        t = torch.randint(0, c.timesteps, (c.batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        labels = self.model.drop_labels(labels, generator=g)
        # Drawn on the CPU from the step's generator (so a resumed or re-sharded run sees the same
        # batch), then copied from pinned memory without waiting: the host queues the step at once.
        pinned = self.device.type == "cuda"
        x0, labels, t, noise = (v[rank::world].contiguous().pin_memory().to(self.device, non_blocking=True)
                                if pinned else v[rank::world] for v in (x0, labels, t, noise))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.net(self.diffusion.q_sample(x0, t, noise), t, labels, self.store.grid)
        loss = self.diffusion.training_loss(out.float(), x0, t, noise).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip if c.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.ema.update(dict(self.model.named_parameters()))
        self.step += 1
        return {"loss": loss.detach(), "grad_norm": norm.detach()}

    # ---- the loop -----------------------------------------------------------------------------

    def take_run_dir(self) -> None:
        """Rank 0 creates the run folder and takes its lock (as tokenizer runs do); every rank learns why not."""
        from ..train.distributed import broadcast_object
        from ..train.rundir import RunLock

        error = None
        if self.dist.main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self.lock = RunLock.acquire(self.run_dir)
                self.lock.record()
            except (OSError, ValueError) as err:
                error = str(err)
        error = broadcast_object(error)
        if error is not None:
            raise ValueError(error)

    def run(self) -> dict | None:
        """Train to config.steps, logging, previewing and checkpointing; rank 0 returns the report."""
        from ..train.distributed import all_reduce_mean, barrier

        c, main = self.config, self.dist.main
        self.take_run_dir()
        if main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(c), sort_keys=False))
        logger = RunLogger(self.run_dir, main, tensorboard=False, start_step=self.step)
        bar = progress_bar(c.steps, self.step, enabled=main and c.progress)
        started = time.perf_counter()
        window, tick = [], started
        while self.step < c.steps:
            values = self.train_step()
            window.append(values)
            bar.update(1)
            if self.step % c.log_every == 0 or self.step == c.steps:
                loss = all_reduce_mean(torch.stack([v["loss"] for v in window]).mean().float())
                elapsed = time.perf_counter() - tick
                record = {"step": self.step, "loss": float(loss), "lr": self.lr_at(self.step - 1),
                          "grad_norm": float(window[-1]["grad_norm"]),
                          "samples_per_second": len(window) * c.batch_size / max(elapsed, 1e-9)}
                logger.log(record)
                bar.set_postfix(loss=f"{record['loss']:.4g}", samples_s=f"{record['samples_per_second']:.0f}")
                window, tick = [], time.perf_counter()
            if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                if main:
                    self._save()
                barrier()
            # Only at log steps, so the clock (and, over ranks, the broadcast) costs nothing per step.
            if (c.time_limit_minutes and self.step % c.log_every == 0 and self.step != c.steps
                    and out_of_time(started, c.time_limit_minutes)):
                self.stopped_early = True
                logger.warn(f"stopping at step {self.step} of {c.steps}: time_limit_minutes={c.time_limit_minutes} "
                            f"reached; continue with `vitok dit train --resume {self.run_dir}`")
                if self.step % c.checkpoint_every:  # else the checkpoint above already holds this step
                    if main:
                        self._save()
                    barrier()
                break
            if main and c.sample_every and self.step % c.sample_every == 0 and self.step != c.steps:
                self.preview()
        bar.close()
        self.wall_seconds = time.perf_counter() - started
        if not main:
            return None
        self.preview()
        save_dit(self.run_dir / "model", self.ema_model, self.export_info())
        logger.close()
        return self.report()

    def preview(self) -> None:
        """samples.png: EMA samples of classes 0, 1, ... decoded through the tokenizer (skipped without it)."""
        from ..model import ViTok

        tokenizer_folder = Path(self.store.index["tokenizer"])
        if not tokenizer_folder.is_dir():
            print(f"warning: tokenizer {tokenizer_folder} not found; samples.png not written")
            return
        tokenizer = ViTok.from_pretrained(tokenizer_folder, device=self.device)
        labels = torch.arange(self.config.num_preview) % self.store.num_classes
        z = sample_latents(self.ema_model, self.diffusion, self.store.grid, labels, self.config.preview_steps,
                           self.config.preview_cfg, seed=self.config.seed, device=self.device)
        images = decode_latents(tokenizer, z, self.export_info()["latents"])
        save_grid(images, self.run_dir / "samples.png")

    def report(self) -> dict:
        """report.json, report.md and losses.png from metrics.jsonl."""
        history = [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines() if line]
        loss_plot(history, self.run_dir / "losses.png")
        rates = [r["samples_per_second"] for r in history if r.get("samples_per_second")]
        document = {
            "run": str(self.run_dir), "model": self.config.model, "parameters": self.model.num_params(),
            "steps": self.step, "planned_steps": self.config.steps, "stopped_early": self.stopped_early,
            "time_limit_minutes": self.config.time_limit_minutes, "wall_seconds": self.wall_seconds,
            "global_batch": self.config.batch_size, "world_size": self.dist.world,
            "device": str(self.device), "precision": "bf16" if self.amp else "fp32",
            "final_loss": history[-1]["loss"] if history else None,
            "first_loss": history[0]["loss"] if history else None,
            "first_logged_step": history[0]["step"] if history else None,
            "samples_per_second": sum(rates) / len(rates) if rates else None,
            "latents": str(self.config.latents), "num_latents": len(self.store),
            "num_classes": self.store.num_classes,
            "tokenizer": self.store.index["tokenizer"], "model_folder": str(self.run_dir / "model"),
        }
        summary = dumps(document, indent=2) + "\n"
        markdown = report_markdown(document, self.store.index["classes"], self.run_dir)
        atomic_write(self.run_dir / "report.json", lambda tmp: Path(tmp).write_text(summary))
        atomic_write(self.run_dir / "report.md", lambda tmp: Path(tmp).write_text(markdown))
        return document


def report_markdown(doc: dict, classes: list[str], run_dir: Path) -> str:
    """report.md: report.json for people, with the loss curve and samples embedded when they exist."""
    def loss(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.5g}"

    shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
    if doc["stopped_early"]:
        steps = (f"{doc['steps']} of {doc['planned_steps']} planned: stopped early by time_limit_minutes="
                 f"{doc['time_limit_minutes']}; continue with `vitok dit train --resume {doc['run']}`")
    else:
        steps = f"{doc['steps']} of {doc['planned_steps']} planned"
    limit = f"{doc['time_limit_minutes']} min" if doc["time_limit_minutes"] else "none"
    wall = "n/a" if doc["wall_seconds"] is None else f"{doc['wall_seconds']:.3g} s (this invocation's loop)"
    rate = "n/a" if doc["samples_per_second"] is None else f"{doc['samples_per_second']:.1f} samples/s"
    lines = [
        f"# DiT training report: {doc['model']}", "",
        f"- run folder: `{doc['run']}`; final EMA model: `{doc['model_folder']}`",
        f"- parameters: {doc['parameters'] / 1e6:.2f}M ({doc['parameters']:,})",
        f"- steps: {steps}",
        f"- global batch {doc['global_batch']}, {doc['world_size']} process(es) on {doc['device']}, "
        f"{doc['precision']}",
        f"- final loss: {loss(doc['final_loss'])}; at the first logged step ({doc['first_logged_step']}): "
        f"{loss(doc['first_loss'])}",
        f"- throughput: {rate} (mean over the logged windows)",
        f"- wall time: {wall}; time limit: {limit}",
        f"- latents: `{doc['latents']}`, {doc['num_latents']} latents, {doc['num_classes']} classes ({shown})",
        f"- tokenizer: `{doc['tokenizer']}`",
    ]
    for name in ("losses", "samples"):
        if (run_dir / f"{name}.png").is_file():
            lines += ["", f"![{name}]({name}.png)"]
    return "\n".join(lines) + "\n"


def train_dit(config: DiTTrainConfig, out: str | Path | None = None, resume: str | Path | None = None) -> dict | None:
    """Train (or, with resume=RUN, continue) a DiT run; rank 0 returns report.json's content."""
    from ..train.distributed import teardown
    from ..train.report import new_run_dir

    if resume is not None and out is not None and Path(out) != Path(resume):
        raise ValueError(f"--resume {resume} continues that run in its own folder; drop --out {out}")
    if resume is None and out is not None:
        check_fresh_run_folder(Path(out))
    run_dir = Path(resume or out or new_run_dir(f"dit-{config.model.replace('/', '_')}"))
    finished, trainer = False, None
    try:
        trainer = DiTTrainer(config, run_dir, resume=resume is not None)
        document = trainer.run()
        finished = True
        return document
    finally:
        if trainer is not None and trainer.lock is not None:
            trainer.lock.release()
        teardown(synchronise=finished)


def check_fresh_run_folder(out: Path) -> None:
    """A new run writes only into a new or empty folder: never over another run or the user's files."""
    check_out_folder(out)
    if out.is_dir() and any(out.iterdir()):
        hint = (f"continue that run with `vitok dit train --resume {out}`" if (out / "config.yaml").is_file()
                else "pass a new or empty folder")
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise ValueError(f"--out {out} already holds files ({shown}); a new run writes only into a new or empty "
                         f"folder: {hint}")


def load_run_config(run: str | Path, overrides: list[str]) -> DiTTrainConfig:
    """A run's config.yaml with key=value overrides on top (for --resume); overrides that would change the
    model or its diffusion are refused, before anything is loaded or written."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        kind = what_folder(Path(run)) if Path(run).is_dir() else None
        what = f"{run} is {kind}, not a DiT run" if kind else f"no config.yaml in {run}"
        raise ValueError(f"--resume {run}: {what}; pass a run folder written by `vitok dit train`")
    data = yaml_or_none(path)
    if data is None:
        raise ValueError(f"--resume {run}: {path} cannot be read as YAML; restore it from the run's report.json "
                         f"settings or start a new run")
    stored = dataclass_from_dict(DiTTrainConfig, data, f"{path} field")
    config = parse_overrides(stored, overrides)
    config.validate()
    before, after = architecture(stored), architecture(config)
    differ = [f"{key} {before[key]!r} -> {after[key]!r}" for key in FIXED_ON_RESUME if before[key] != after[key]]
    if differ:
        raise ValueError(f"--resume {run}: {', '.join(differ)}: these define the run's model and cannot change on "
                         f"resume; drop those overrides, or start a new run with --out")
    return config


def architecture(config: DiTTrainConfig) -> dict:
    """The FIXED_ON_RESUME values a config resolves to (width 0 is the named size's width, ...)."""
    dit = build_config(config, channels=1, num_classes=1)
    return {"width": dit.width, "depth": dit.depth, "heads": dit.heads, "group": dit.group,
            "prediction": config.prediction, "schedule": config.schedule, "timesteps": config.timesteps}


def _short(value: object) -> str:
    """A value for a message: long lists (latent statistics) are cut."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
