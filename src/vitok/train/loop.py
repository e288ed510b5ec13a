"""The two-stage training loop (the paper's recipe), top to bottom.

Stage 1 trains encoder and decoder with reconstruction + LPIPS + KL. Stage 2 freezes the
encoder and fine-tunes the decoder against a StyleGAN-style discriminator, keeping the
reconstruction and LPIPS terms, with an EMA of the decoder; adding the GAN from scratch
diverges, which is why stage 1 exists. Both stages read one data stream whose position is
the global step, so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import errno
import gc
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..data.datasets import to_model_range
from ..data.gpu_decode import GpuDecoder, gpu_decode_problem
from ..data.training import make_train_loader
from ..losses import (Discriminator, LeCam, discriminator_loss, generator_loss, kl_loss, load_perceptual_loss,
                      r1_penalty, reconstruction_loss)
from ..model import ViTok
from ..model.pretrained import write_checkpoint
from . import checkpoint as ckpt
from . import parallel
from .clock import StepClock
from .config import (TrainConfig, check_data_paths, check_resume_compatible, model_differences,
                     resolve_model_config, validate)
from .distributed import Dist, all_reduce_mean, average_gradients, barrier, broadcast_object, out_of_time
from .guard import Guard
from .optim import EMA, build_adamw, warmup_constant, warmup_cosine


# Held-out metrics during training: every weight-free one (the guard and the checkpoint selection
# read PSNR and SWD), plus LPIPS when its weights are present. The final evaluation adds rFID/rIS/rFVD.
QUICK_IMAGE_METRICS = {"psnr", "ssim", "ms_ssim", "gmsd", "sharpness", "swd", "lpips"}
QUICK_VIDEO_METRICS = {"psnr", "ssim", "ms_ssim", "gmsd", "sharpness", "swd"}
# taming-transformers' clamp of the adaptive GAN weight.
ADAPTIVE_WEIGHT_MAX = 1e4

NO_HELDOUT = ("no held-out set (data.holdout = 0 and no data.val_source, or a single tar shard): no metrics, "
              "no reconstruction grid and no best checkpoint; set data.holdout or data.val_source")


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row; the last good checkpoint is left intact."""


@dataclass
class Progress:
    """Counters that travel in the checkpoint."""

    step: int = 0  # global batches consumed = optimizer steps taken or skipped
    bad_in_row: int = 0
    bad_total: int = 0
    skipped_files: dict[str, str] = field(default_factory=dict)


def bundled_source() -> str:
    """The folder of photos shipped inside the package (the demo's data)."""
    from ..data.images import bundled_photos

    return str(bundled_photos()[0].parent)


def leading_count(batch: int, fraction: float) -> int:
    """How many leading samples of a batch of `batch` a network scores at `fraction` (at least one)."""
    return max(1, math.ceil(fraction * batch - 1e-9))


class Trainer:
    """Owns the model, losses, optimizers and data of one run; `run()` trains to the end."""

    def __init__(self, config: TrainConfig, run_dir: Path, dist_info: Dist, model: ViTok | None = None) -> None:
        """`model`: train this ViTok (its own config, as built and compiled by the caller) instead of
        building one from config.model; benchmarks/bench.py times the trainer's step on its models so."""
        validate(config, dist_info.world)
        self.config, self.run_dir, self.dist = config, run_dir, dist_info
        self.device = dist_info.device
        t = config.train
        self.per_rank_batch = t.batch_size // dist_info.world
        self.amp = (t.precision == "bf16") or (t.precision == "auto" and self.device.type == "cuda")
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(t.seed)  # same initial weights on every rank

        # From model.name and the explicit sizes, or from model.init's checkpoint (weights: load_init).
        self.model_config = model.config if model is not None else resolve_model_config(config)
        self.model = model.to(self.device) if model is not None else ViTok(self.model_config).to(self.device)
        self.model.amp_dtype = torch.bfloat16 if self.amp else None
        self.model.residual_dtype = getattr(torch, config.model.residual_dtype)
        self.model.set_grad_checkpointing(config.model.grad_checkpointing)
        self.model.set_kernels(config.model.kernels)
        self.sharded = t.parallel == "fsdp" and dist_info.world > 1
        if self.sharded:
            parallel.shard(self.model)
        if config.model.compile and model is None:
            self.model.compile_blocks()

        lo = config.loss
        self.perceptual, self.perceptual_reason = None, "disabled (loss.lpips_weight = 0)"
        if lo.lpips_weight > 0:
            self.perceptual, self.perceptual_reason = load_perceptual_loss(lo.weights_dir or None)
            if self.perceptual is None and lo.require_lpips:
                raise ValueError(f"loss.require_lpips is set but the LPIPS loss cannot be built: "
                                 f"{self.perceptual_reason}")
            if self.perceptual is not None:
                self.perceptual = self.perceptual.to(self.device)
                self.perceptual.max_frames = lo.lpips_max_frames
        self.disc = self.lecam = None
        if t.stage2_steps > 0:
            self.disc = Discriminator(self.model_config.image_size, channels=lo.disc_channels,
                                      max_channels=lo.disc_max_channels,
                                      video=lo.disc_video if self.model_config.is_video else None,
                                      frames=self.model_config.frames).to(self.device)
            self.lecam = LeCam() if lo.lecam_weight > 0 else None
        # The discriminator's passes without R1 (the reconstructions' every step, the reals' on 15 of
        # 16 steps), compiled by compile_losses; R1's double backward runs on the module itself.
        self.disc_passes = self.disc
        if config.model.compile:
            self.compile_losses()
        self.ema: EMA | None = None
        self.ema_model: ViTok | None = None
        self.progress = Progress()
        self.guard = Guard(config.guard)
        self.stage = 0
        self.opt_g = self.opt_d = None
        self.ddp_model = None
        self.history: list[dict] = []
        self.stopped_early: str | None = None
        # Loss sums of the current log window (total, count) on the device; checkpointed, so a
        # window cut by a kill is logged as if the run had never stopped.
        self.live_sums: dict[str, tuple] = {}

        source = config.data.source or bundled_source()
        self.loader_args = dict(source=source, size=self.model_config.image_size,
                                frames=self.model_config.frames if self.model_config.is_video else 1,
                                stride=config.data.frame_stride, batch_size=self.per_rank_batch,
                                workers=config.data.workers, seed=t.seed, rank=dist_info.rank,
                                world=dist_info.world, crop=config.data.crop, flip=config.data.flip,
                                scale=(config.data.min_scale, 1.0), ratio=(3 / 4, 4 / 3),
                                holdout=0 if config.data.val_source else config.data.holdout,
                                pin_memory=self.device.type == "cuda")
        self.gpu_decoder = None
        decode = config.data.decode
        problem = gpu_decode_problem(self.device) if decode != "cpu" else None
        if decode == "auto":
            decode = "gpu" if not self.model_config.is_video and problem is None else "cpu"
        if decode == "gpu":
            if problem is not None:
                raise ValueError(problem)
            self.loader_args["gpu_jpeg"] = True
            self.gpu_decoder = GpuDecoder(self.model_config.image_size, self.device)

    def compile_losses(self) -> None:
        """torch.compile the LPIPS network and the discriminator's passes without R1: 2.4x (LPIPS forward +
        input backward at 256p, H100) and 2.3x (the discriminator's passes of a step, H200) faster
        (benchmarks/NOTES.md)."""
        if self.perceptual is not None:
            self.perceptual.compile_network()
        if self.disc is not None:
            self.disc_passes = self.disc.compiled()

    def load_init(self) -> None:
        """A fresh run's starting weights from model.init (a resumed run reads its own checkpoint instead)."""
        init = self.config.model.init
        source = ViTok.from_pretrained(init)
        # The folder was read at validation; a change since (or another resolution of a released name)
        # would load weights of a shape the run was not checked for.
        differ = model_differences(source.config, self.model_config, ignore=("name", "image_size"))
        if differ:
            raise ValueError(f"model.init {init} now holds another model than when the config was checked "
                             f"({'; '.join(differ)}); start the run again")
        parallel.load_model_state(self.model, source.state_dict())
        del source

    # ---- stages -------------------------------------------------------------------------------

    def enter_stage(self, stage: int) -> None:
        """Build the optimizers (and, for stage 2, freeze the encoder and start the EMA)."""
        c, o = self.config, self.config.optim
        lr = self.scaled_lr()
        if stage == 1:
            named = list(self.model.named_parameters())
        else:
            for module in self.model.encoder_modules():
                module.requires_grad_(False)
            named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
            self.ema_model = ViTok(self.model_config).to(self.device)
            if self.sharded:  # sharded like the model, so the EMA update is shard by shard
                parallel.shard(self.ema_model)
            parallel.load_model_state(self.ema_model, parallel.model_state(self.model))
            self.ema_model.requires_grad_(False).eval()
            self.ema_model.amp_dtype = self.model.amp_dtype
            self.ema = EMA(self.decoder_params(self.ema_model), self.decoder_params(self.model), c.train.ema_decay)
            self.opt_d = build_adamw(list(self.disc.named_parameters()), o.disc_lr, (0.0, 0.99), 0.0, o.fused)
        self.opt_g = build_adamw(named, lr, (o.beta1, o.beta2), o.weight_decay, o.fused)
        # A new DDP wrapper per stage (it must see which parameters are frozen); the old one is
        # dropped first, which removes its gradient hooks.
        self.ddp_model = None
        gc.collect()
        self.ddp_model = self.model
        if self.dist.world > 1 and not self.sharded:
            ids = [self.device] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)
        self.stage = stage

    @staticmethod
    def decoder_params(model: ViTok) -> dict[str, torch.Tensor]:
        return {n: p for n, p in model.named_parameters() if n.split(".")[0] in ("from_latent", "decoder", "unembed")}

    def scaled_lr(self) -> float:
        o = self.config.optim
        return o.lr * self.config.train.batch_size / 256 if o.scale_lr else o.lr

    def set_learning_rates(self, step: int) -> dict[str, float]:
        """The schedule is a pure function of the step, so a resumed run continues it exactly."""
        t, o = self.config.train, self.config.optim
        if self.stage == 1:
            mult = warmup_cosine(step, o.warmup_steps, t.stage1_steps, o.min_lr_ratio)
        else:
            mult = o.stage2_lr_scale * self.guard.state.lr_scale * warmup_cosine(
                step - t.stage1_steps, o.warmup_steps, t.stage2_steps, o.min_lr_ratio)
        rates = {"lr": self.scaled_lr() * mult}
        for group in self.opt_g.param_groups:
            group["lr"] = rates["lr"]
        if self.stage == 2:
            rates["disc_lr"] = o.disc_lr * warmup_constant(step - t.stage1_steps, o.disc_warmup_steps)
            for group in self.opt_d.param_groups:
                group["lr"] = rates["disc_lr"]
        return rates

    # ---- one step -----------------------------------------------------------------------------

    def step_noise(self, step: int, n: int) -> torch.Tensor:
        """This rank's slice of one standard-normal draw for the whole global batch of this step.

        Drawn from (seed, step) alone, it is the same whether the batch is split over 1 or N
        ranks, and whether or not the run was resumed.
        """
        gen = torch.Generator(device=self.device).manual_seed(self.config.train.seed * 1_000_003 + step)
        shape = (self.config.train.batch_size, self.model_config.num_tokens, self.model_config.channels)
        noise = torch.randn(shape, generator=gen, device=self.device)
        start = self.dist.rank * self.per_rank_batch
        return noise[start:start + n]

    def train_step(self, x: torch.Tensor, step: int, weight: float) -> dict[str, torch.Tensor]:
        """One optimizer step on a batch (weight 0 for a stand-in batch); returns loss terms on the device."""
        c = self.config.loss
        # A deterministic latent (v2) draws no noise.
        noise = None if self.model_config.is_v2 else self.step_noise(step, x.shape[0])
        x_hat, posterior = self.ddp_model(x, noise=noise, check=False)
        terms = {"rec": reconstruction_loss(x_hat, x, c.reconstruction)}
        loss = c.reconstruction_weight * terms["rec"]
        # A deterministic latent has no KL (validate refuses loss.kl_weight > 0 for it in stage 1).
        if self.stage == 1 and not posterior.deterministic:
            terms["kl"] = kl_loss(posterior)
            loss = loss + c.kl_weight * terms["kl"]
        if self.perceptual is not None:
            k = leading_count(x.shape[0], c.lpips_fraction)
            with self.autocast():
                terms["lpips"] = self.perceptual(x_hat[:k], x[:k])
            loss = loss + c.lpips_weight * terms["lpips"]
        fake_logits = None
        if self.stage == 2:
            # One discriminator pass over the fakes serves both players: the generator's loss is
            # differentiated to x_hat only (pixel_gradients), the discriminator's to its weights only
            # (disc_step), so the pass that the discriminator step used to repeat is gone.
            k = leading_count(x.shape[0], c.disc_fraction)
            with self.autocast():
                fake_logits = self.disc_passes(x_hat[:k]).float()
            terms["gan_g"] = generator_loss(fake_logits, c.gan_loss)
            # A converged stage-1 decoder meets a fresh discriminator: ramping lambda in keeps the
            # first, uninformed GAN gradients from overwhelming the reconstruction terms.
            ramp = min(1.0, (step - self.config.train.stage1_steps + 1) / max(1, c.gan_warmup_steps))
            # torch.full is a fill kernel; torch.tensor(value, device=cuda) would be a copy that syncs the host.
            lam = torch.full((), c.gan_weight * ramp * self.guard.state.gan_scale, device=x.device)
            # Every stage-2 term is a function of x_hat alone (no KL), so each part's gradient at x_hat
            # carries all that the adaptive weight and the decoder's backward need.
            g_rec, g_gan = self.pixel_gradients(x_hat, loss, terms["gan_g"])
            if c.adaptive_gan_weight:
                terms["gan_adaptive"] = self.adaptive_gan_weight(x_hat, g_rec, g_gan)
                lam = lam * terms["gan_adaptive"]
            terms["gan_lambda"] = lam
            terms["loss"] = loss + lam * terms["gan_g"]
            # The decoder's backward starts from the pixel gradients: LPIPS and the discriminator
            # run backward once for the generator, not once for the weight and again for the step.
            x_hat.backward(weight * (g_rec + lam * g_gan))
        else:
            terms["loss"] = loss
            (loss * weight).backward()
        params = [p for g in self.opt_g.param_groups for p in g["params"]]
        clip = self.config.optim.grad_clip or float("inf")
        terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, clip)
        if self.stage == 2:
            terms.update(self.disc_step(x, fake_logits, step, weight))
        return terms

    @staticmethod
    def pixel_gradients(x_hat: torch.Tensor, rec_loss: torch.Tensor,
                        gan_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d rec / d x_hat and d GAN / d x_hat: one backward through LPIPS and one through the discriminator.

        autograd.grad stops at x_hat and accumulates no .grad (neither DDP's hooks nor the
        discriminator's weights see it). It frees the LPIPS graph and keeps the discriminator's,
        which disc_step differentiates again to the discriminator's weights, and the decoder's,
        whose backward starts at x_hat.
        """
        (g_rec,) = torch.autograd.grad(rec_loss, x_hat)
        (g_gan,) = torch.autograd.grad(gan_loss, x_hat, retain_graph=True)
        return g_rec, g_gan

    def adaptive_gan_weight(self, x_hat: torch.Tensor, g_rec: torch.Tensor, g_gan: torch.Tensor) -> torch.Tensor:
        """||d rec / dW|| / ||d GAN / dW|| at the decoder's last layer W, clamped; averaged over ranks.

        taming-transformers' rule: lambda then sets the GAN gradient's size relative to the
        reconstruction gradient, whatever the latter's scale. g_rec and g_gan are the two losses'
        gradients at x_hat (pixel_gradients); W's are the backward from x_hat through the unembedding
        alone, a matmul each, so the weight costs no pass through LPIPS or the discriminator.
        """
        last = self.model.unembed.weight
        (w_rec,) = torch.autograd.grad(x_hat, last, g_rec, retain_graph=True)
        (w_gan,) = torch.autograd.grad(x_hat, last, g_gan, retain_graph=True)
        weight = (w_rec.float().norm() / (w_gan.float().norm() + 1e-4)).clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach()
        return all_reduce_mean(weight)  # one lambda for every rank, so they all optimise one loss

    def disc_step(self, x: torch.Tensor, fake_logits: torch.Tensor, step: int,
                  weight: float) -> dict[str, torch.Tensor]:
        """Discriminator loss, lazy R1 on real images and optional LeCam; gradients averaged over ranks.

        fake_logits: the discriminator's logits of this step's reconstructions, from the generator's
        pass (train_step), whose graph reaches the decoder too: the backward here is restricted to
        the discriminator's weights, so nothing of this loss flows into the decoder.
        """
        c = self.config.loss
        lazy_r1 = c.r1_weight > 0 and step % c.r1_every == 0
        k = leading_count(x.shape[0], c.disc_fraction)
        real = x[:k].detach().requires_grad_(lazy_r1)
        with self.autocast():
            real_logits = (self.disc if lazy_r1 else self.disc_passes)(real).float()
        terms = {"gan_d": discriminator_loss(real_logits, fake_logits, c.gan_loss)}
        loss = terms["gan_d"]
        if self.lecam is not None:
            # The EMAs move only after the step is known to be finite (apply_step), with the batch
            # means averaged over ranks so every rank keeps the same EMAs.
            terms["lecam"] = self.lecam(real_logits, fake_logits, update=False)
            self._lecam_means = all_reduce_mean(torch.stack([real_logits.detach().mean(),
                                                             fake_logits.detach().mean()]))
            loss = loss + c.lecam_weight * terms["lecam"]
        if lazy_r1:
            # Lazy regularisation: every r1_every steps, scaled up by r1_every to keep its weight.
            terms["r1"] = r1_penalty(real_logits, real)
            loss = loss + c.r1_weight * c.r1_every * terms["r1"]
        params = list(self.disc.parameters())
        torch.autograd.backward(loss * weight, inputs=params)
        average_gradients(params)
        clip = self.config.optim.grad_clip or float("inf")
        terms["disc_grad_norm"] = torch.nn.utils.clip_grad_norm_(params, clip)
        return terms

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def apply_step(self, terms: dict[str, torch.Tensor], weight: float = 1.0) -> torch.Tensor:
        """Step the optimizers unless a gradient is non-finite; returns the skip flag (0-dim, 0 or 1).

        Gradients are already averaged over ranks, so every rank reaches the same flag. With the
        fused AdamW kernel the flag never leaves the device (found_inf skips the update inside
        the kernel, and the EMA and LeCam moves are multiplied by 1 - flag), so the host can
        queue the next step at once; the loop reads the flag only at log time.
        """
        norms = [terms["grad_norm"]] + ([terms["disc_grad_norm"]] if "disc_grad_norm" in terms else [])
        norms = [parallel.full_tensor(n).float() for n in norms]  # a sharded model's norm is a DTensor
        terms["grad_norm"] = norms[0]
        bad = (~torch.isfinite(torch.stack(norms)).all()).float()
        optimizers = [self.opt_g] + ([self.opt_d] if self.stage == 2 else [])
        if all(opt.defaults.get("fused") for opt in optimizers):
            for opt in optimizers:
                opt.found_inf = bad
                opt.step()
            keep = 1.0 - bad
        elif bool(bad == 0):  # unfused optimizers: decide on the host
            for opt in optimizers:
                opt.step()
            keep = None
        else:
            keep = torch.zeros((), device=bad.device)
        if self.stage == 2:
            self.ema.update(self.decoder_params(self.model), keep)
            if self.lecam is not None and weight > 0:
                ok = torch.ones((), device=bad.device) if keep is None else keep
                for ema, mean in ((self.lecam.ema_real, self._lecam_means[0]), (self.lecam.ema_fake,
                                                                                self._lecam_means[1])):
                    moved = torch.lerp(ema, mean.to(ema.dtype), 1.0 - self.lecam.decay)
                    ema.copy_(torch.where(ok > 0, moved, ema))
        self.opt_g.zero_grad(set_to_none=True)
        if self.opt_d is not None:
            self.opt_d.zero_grad(set_to_none=True)
        return bad

    # ---- the loop -----------------------------------------------------------------------------

    def run(self, resume_from: Path | None = None) -> dict:
        """Train stage 1 then stage 2 to the configured steps; write checkpoints, logs and the report."""
        from . import report

        c, t = self.config, self.config.train
        if resume_from is not None:
            self.load(resume_from)
        else:
            if c.model.init:
                self.load_init()
            self.enter_stage(1 if t.stage1_steps > 0 else 2)
        loader, heldout, data_info = make_train_loader(**self.loader_args, start_step=self.progress.step)
        if c.data.val_source:
            from ..data.datasets import open_dataset

            heldout = open_dataset(c.data.val_source, self.model_config.image_size,
                                   frames=self.model_config.frames if self.model_config.is_video else 1,
                                   stride=c.data.frame_stride, upsample=True, limit=c.data.eval_limit or None,
                                   rank=self.dist.rank, world=self.dist.world)
        self.heldout = heldout
        logger_note = None if heldout is not None else NO_HELDOUT
        logger = report.RunLogger(self.run_dir, self.dist.main, c.train.tensorboard, self.progress.step)
        if logger_note:
            logger.warn(logger_note)
        bar = report.progress_bar(c.total_steps, self.progress.step, enabled=self.dist.main and t.progress)
        sums = self.live_sums
        self.bad_in_row = torch.tensor(float(self.progress.bad_in_row), device=self.device)
        self.bad_total = torch.tensor(float(self.progress.bad_total), device=self.device)
        if self.stage == 2 and self.progress.step == t.stage1_steps and self.guard.state.reference is None:
            # A run that starts in stage 2 (train.stage1_steps=0, e.g. decoder fine-tuning from model.init):
            # the initial model is the guard's reference, saved so that the selection can export it.
            # (The condition is the same on every rank: save is a collective when the model is sharded.)
            self.guard_evaluation(self.progress.step, True, logger)
            if self.heldout is not None:
                self.save()
        # window_wait: host seconds spent waiting for the next batch. The host runs ahead of the GPU
        # between log steps (which synchronise), so a share near 0 means the loader keeps up and a
        # large one that the data, not the model, sets the pace.
        window_start, window_images, window_wait = time.perf_counter(), 0, 0.0
        last_good: torch.Tensor | None = None
        new_skips: list[dict] = []  # this rank's unreadable files since the last log step
        batches = iter(loader)
        if self.gpu_decoder is not None:
            batches = self.gpu_decoder.ahead(batches)
        clock = StepClock(self.device)  # gpu_idle: the device's view of the same question (train/clock.py)
        started = time.perf_counter()
        while self.progress.step < c.total_steps:
            step = self.progress.step
            if self.stage == 1 and step >= t.stage1_steps:
                if self.guard.state.reference is None and step == t.stage1_steps:
                    # A stage-1 run extended with a stage 2 (--resume RUN train.stage2_steps=N): the
                    # checkpoint it resumed from is the end of stage 1, so it becomes the reference.
                    self.guard_evaluation(step, True, logger)
                self.enter_stage(2)
            waiting = time.perf_counter()
            batch = next(batches)
            window_wait += time.perf_counter() - waiting
            new_skips.extend(item for item in batch["skipped"] if item["file"] not in self.progress.skipped_files)
            weight = 1.0
            if batch["pixels"] is not None and batch["pixels"].shape[0] < self.per_rank_batch:
                # Skipped files count as zero-loss samples: each rank's mean is scaled by its share of
                # good samples, so the DDP average equals the mean over the whole global batch.
                weight = batch["pixels"].shape[0] / self.per_rank_batch
            if batch["pixels"] is None:
                # Every file of this batch was unreadable: replay the last good batch with weight 0,
                # so all ranks still run the same collective operations.
                pixels, weight = last_good, 0.0
                if pixels is None:
                    shape = (self.per_rank_batch, 3, *( (self.model_config.frames,) if self.model_config.is_video else ()),
                             self.model_config.image_size, self.model_config.image_size)
                    pixels = torch.zeros(shape, dtype=torch.uint8)
            else:
                pixels = last_good = batch["pixels"]
            clock.begin()
            x = to_model_range(pixels.to(self.device, non_blocking=True))
            rates = self.set_learning_rates(step)
            self.model.train()
            terms = self.train_step(x, step, weight)
            bad = self.apply_step(terms, weight)
            clock.end()
            self.progress.step += 1
            # Device-side bookkeeping: nothing here waits for the GPU.
            self.bad_in_row = (self.bad_in_row + 1) * bad
            self.bad_total = self.bad_total + bad
            if weight > 0:  # a stand-in batch's losses are not the data's
                good = 1.0 - bad
                for k, v in terms.items():
                    total, n = sums.get(k, (0.0, 0.0))
                    value = torch.where(good > 0, v.detach().float(), torch.zeros((), device=self.device))
                    sums[k] = (total + value, n + good)
                window_images += x.shape[0] * self.dist.world
            bar.update(1)
            done = self.progress.step
            if done % t.log_every == 0 or done == c.total_steps:
                self.check_bad_steps(done, logger)
                self.merge_skips(new_skips, logger)
                new_skips = []
                elapsed = time.perf_counter() - window_start
                record = self.log_record(sums, done, rates, window_images / max(elapsed, 1e-9),
                                         window_wait / max(elapsed, 1e-9), clock.idle_share())
                logger.log(record)
                self.history.append(record)
                bar.set_postfix(report.postfix(record))
                sums, window_start, window_images, window_wait = {}, time.perf_counter(), 0, 0.0
                self.live_sums = sums
            # The end of stage 1 is always evaluated: it is the guard's reference.
            boundary = done == t.stage1_steps and t.stage2_steps > 0
            decision = None
            evaluated = ((t.eval_every and done % t.eval_every == 0) or boundary) and done != c.total_steps
            if evaluated:
                decision = self.guard_evaluation(done, boundary, logger)
            imaged = bool(t.image_every) and done % t.image_every == 0
            if imaged:
                self.write_reconstructions()
            # A stage-2 evaluation (and the reference) always comes with a checkpoint, so that
            # whatever the selection rule picks can be exported.
            saved = (done % t.checkpoint_every == 0 or done == c.total_steps
                     or (evaluated and (boundary or self.stage == 2)))
            if saved:
                self.save()
            if saved or evaluated or imaged:
                clock.reset()  # the gap before the next step is this work, not waiting for data
            if decision == "stop":
                self.stopped_early = f"the stage-2 guard stopped the run at step {done} (see guard events)"
                break
            if t.time_limit_minutes and done % t.log_every == 0 and done != c.total_steps:
                if out_of_time(started, t.time_limit_minutes):
                    self.stopped_early = f"train.time_limit_minutes={t.time_limit_minutes} reached at step {done}"
                    logger.warn(f"stopping: {self.stopped_early}")
                    if done % t.checkpoint_every:
                        self.save()
                    break
        bar.close()
        final = self.finish(data_info, logger)
        logger.close()
        return final

    def sync_bad_counts(self) -> None:
        """Copy the device-side skip counters into the checkpointed progress (a host read)."""
        self.progress.bad_in_row = int(self.bad_in_row)
        self.progress.bad_total = int(self.bad_total)

    def check_bad_steps(self, done: int, logger) -> None:
        """At log time: name skipped steps, and stop after train.max_bad_steps in a row."""
        before = self.progress.bad_total
        self.sync_bad_counts()
        if self.progress.bad_total > before:
            logger.warn(f"{self.progress.bad_total - before} step(s) up to step {done} had a non-finite loss or "
                        f"gradient and were skipped ({self.progress.bad_in_row} in a row now)")
        if self.progress.bad_in_row >= self.config.train.max_bad_steps:
            last = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
            raise TrainingDiverged(
                f"{self.progress.bad_in_row} non-finite steps in a row at step {done}; stopping. "
                f"The last good checkpoint is {last or 'none (no checkpoint was written yet)'}; "
                f"lower optim.lr, raise optim.warmup_steps or use train.precision=fp32, then resume")

    def merge_skips(self, new_skips: list[dict], logger) -> None:
        """Every rank's newly skipped files, named once in the log and kept for the checkpoint and report."""
        if self.dist.world > 1:
            from .distributed import all_gather_objects

            new_skips = [item for part in all_gather_objects(new_skips) for item in part]
        for item in new_skips:
            if item["file"] not in self.progress.skipped_files:
                self.progress.skipped_files[item["file"]] = item["reason"]
                logger.warn(f"skipped {item['file']}: {item['reason']}")

    def log_record(self, sums: dict, step: int, rates: dict, images_per_second: float,
                   data_wait: float = 0.0, gpu_idle: float | None = None) -> dict:
        """Each loss term averaged over the steps that computed it and over ranks (one small all-reduce);
        data_wait: this rank's share of the window's wall time spent waiting for batches; gpu_idle (CUDA
        only): the share of the window's device time between steps (StepClock)."""
        values = {}
        if sums:
            stacked = torch.stack([torch.stack([torch.as_tensor(total, device=self.device).float(),
                                                torch.as_tensor(n, device=self.device).float()])
                                   for total, n in sums.values()])
            all_reduce_mean(stacked)
            values = {k: total / n for k, (total, n) in zip(sums, stacked.tolist()) if n > 0}
        idle = {} if gpu_idle is None else {"gpu_idle": round(gpu_idle, 4)}
        return {"step": step, "stage": self.stage, **values, **rates, "images_per_second": images_per_second,
                "data_wait": round(data_wait, 4), **idle, "bad_steps": self.progress.bad_total}

    # ---- evaluation, checkpoints, report -----------------------------------------------------

    def eval_model(self) -> ViTok:
        """The weights a user gets: the EMA decoder in stage 2, the live model otherwise.

        A sharded model is gathered into a plain copy on every rank (a collective: all ranks call
        this together), so evaluation and exports never need the ranks in lockstep.
        """
        model = self.ema_model if self.ema_model is not None else self.model
        if not self.sharded:
            return model
        # Not cached: the full copy lives only as long as the evaluation or export that needs it.
        plain = ViTok(self.model_config).to(self.device)
        plain.load_state_dict(parallel.model_state(model))
        plain.amp_dtype = self.model.amp_dtype
        return plain.eval()

    def guard_evaluation(self, step: int, boundary: bool, logger) -> str | None:
        """Evaluate the held-out set, log it and hand it to the guard; returns "stop" when the guard says so."""
        result = self.evaluate(quick=True)
        logger.log({"step": step, "eval": result})
        metrics = result["metrics"]
        if "psnr" not in metrics:
            return None
        if boundary:
            label = "the end of stage 1" if self.config.train.stage1_steps > 0 else "the initial model"
            self.guard.set_reference(step, metrics, label)
            return None
        if self.stage == 1:
            self.guard.record(step, 1, metrics)
            return None
        message, decision = self.guard.observe(step, metrics)
        if message:
            logger.warn(message)
        return decision

    def evaluate(self, quick: bool, model: ViTok | None = None) -> dict:
        """Held-out metrics: the weight-free ones (and LPIPS when available) during training; everything at the end."""
        from ..eval.evaluate import evaluate, make_loader
        from ..eval.networks import load_networks

        if self.heldout is None:
            return {"metrics": {}, "not_computed": {"psnr": NO_HELDOUT, "ssim": NO_HELDOUT}, "num_samples": 0}
        if self.model_config.is_video:
            wanted = QUICK_VIDEO_METRICS | (set() if quick else {"rfvd"})
        else:
            wanted = QUICK_IMAGE_METRICS | (set() if quick else {"rfid", "ris"})
        if not hasattr(self, "_networks") or self._networks[0] != quick:
            nets = load_networks(self.config.loss.weights_dir or None, self.model_config.is_video, wanted)
            self._networks = (quick, nets.to(self.device))
        dataset = self.heldout
        limit = self.config.data.eval_limit
        if limit and hasattr(dataset, "__len__") and len(dataset) > limit:
            dataset = torch.utils.data.Subset(dataset, range(limit))
        model = model if model is not None else self.eval_model()
        result = evaluate(model, make_loader(dataset, self.per_rank_batch, 0, self.device), self._networks[1],
                          self.device, progress=False, metrics=wanted)
        return {"metrics": result.metrics, "not_computed": {k: v for k, v in result.not_computed.items() if k in wanted},
                "num_samples": result.num_samples, "skipped": result.skipped}

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: weights, optimizers, EMA, counters, RNG states."""
        self.sync_bad_counts()
        state = {
            "step": self.progress.step,
            "stage": self.stage,
            "parallel": "fsdp" if self.sharded else "replicated",
            "model": parallel.model_state(self.model, to_rank0_cpu=True),
            "opt_g": parallel.optimizer_state(self.model, self.opt_g, to_rank0_cpu=True),
            "progress": {"bad_in_row": self.progress.bad_in_row, "bad_total": self.progress.bad_total,
                         "skipped_files": self.progress.skipped_files},
            "history": json.dumps(self.history),
            "window": json.dumps({k: [float(total), float(n)] for k, (total, n) in self.live_sums.items()}),
            # The learning-rate schedules and the data position are pure functions of `step`.
            "rng": {"torch": torch.get_rng_state(), "numpy": json.dumps(_numpy_state()),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "config": json.dumps(self.config.to_dict()),
            "guard": json.dumps(self.guard.state_dict()),
        }
        if self.stage == 2:
            ema = self.ema.state_dict()
            ema["shadow"] = {k: parallel.full_tensor(v) for k, v in ema["shadow"].items()}
            state.update(disc=self.disc.state_dict(), opt_d=self.opt_d.state_dict(), ema=ema)
            if self.lecam is not None:
                state["lecam"] = self.lecam.state_dict()
        return state

    def save(self) -> None:
        root = self.run_dir / "checkpoints"
        state = self.state_dict()  # collectives when sharded: every rank takes part
        if self.sharded:  # the exported tokenizer, gathered to rank 0's CPU memory only
            weights = parallel.model_state(self.ema_model if self.ema_model is not None else self.model,
                                          to_rank0_cpu=True)
            config = self.model_config.to_dict()

            def export(folder: Path) -> None:
                write_checkpoint(folder, config, weights)
        else:
            export = self.eval_model().save_pretrained
        if self.dist.main:
            ckpt.save_checkpoint(root, self.progress.step, state, export=export)
            self.write_selection()
        barrier()

    def write_selection(self) -> dict | None:
        """Rank 0: apply the selection rule to the checkpoints on disk, record it in best.json, prune."""
        root = self.run_dir / "checkpoints"
        selection = self.guard.select({step for step, _ in ckpt.list_checkpoints(root)})
        if selection is not None:
            ckpt.write_best(root, {k: v for k, v in selection.items() if k != "metrics"})
        ckpt.prune(root, self.config.train.keep_last)
        return selection

    def load(self, folder: Path) -> None:
        state = ckpt.load_checkpoint(folder, map_location="cpu")
        layout = "fsdp" if self.sharded else "replicated"
        if state.get("parallel", "replicated") != layout:
            raise ValueError(f"checkpoint {folder} holds {state.get('parallel', 'replicated')} optimizer state "
                             f"(train.parallel=fsdp over several processes writes 'fsdp', anything else "
                             f"'replicated'); resume with the same train.parallel and number of processes")
        parallel.load_model_state(self.model, state["model"])
        self.enter_stage(state["stage"])
        if state["stage"] == 2:
            self.disc.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])
            ema = state["ema"]
            ema["shadow"] = {k: parallel.local_like(self.ema.shadow[k], v.to(self.device))
                             for k, v in ema["shadow"].items()}
            self.ema.load_state_dict(ema)
            if self.lecam is not None and "lecam" in state:
                self.lecam.load_state_dict(state["lecam"])
        parallel.load_optimizer_state(self.model, self.opt_g, state["opt_g"])
        # Settings given on the command line at resume win over the ones stored with the state.
        o = self.config.optim
        for group in self.opt_g.param_groups:
            group["betas"] = (o.beta1, o.beta2)
            group["weight_decay"] = o.weight_decay if group["weight_decay"] > 0 else 0.0
        if self.ema is not None:
            self.ema.decay = self.config.train.ema_decay
        self.progress.step = int(state["step"])
        p = state["progress"]
        self.progress.bad_in_row, self.progress.bad_total = p["bad_in_row"], p["bad_total"]
        self.progress.skipped_files = dict(p["skipped_files"])
        self.history = json.loads(state["history"])
        if "guard" in state:
            self.guard.load_state_dict(json.loads(state["guard"]))
        self.live_sums = {k: (torch.tensor(total, device=self.device), torch.tensor(n, device=self.device))
                          for k, (total, n) in json.loads(state.get("window", "{}")).items()}
        torch.set_rng_state(state["rng"]["torch"])
        _set_numpy_state(json.loads(state["rng"]["numpy"]))
        if torch.cuda.is_available() and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def write_reconstructions(self, model: ViTok | None = None) -> None:
        from . import report

        if self.heldout is None:
            return
        model = model if model is not None else self.eval_model()  # every rank: a collective when sharded
        if self.dist.main:
            report.reconstruction_grid(model, self.heldout, self.device, self.run_dir / "reconstructions.png")

    def finish(self, data_info: dict, logger) -> dict:
        """Final held-out evaluation, the selected checkpoint exported as model/, report.json/md and plots."""
        from . import report

        model = self.eval_model()  # gathered once (when sharded) for the evaluation, grid and export
        final_eval = self.evaluate(quick=False, model=model)
        step = self.progress.step
        if "psnr" in final_eval["metrics"]:  # the final checkpoint was written at this step
            judged = any(e["step"] == step for e in self.guard.state.evaluations)  # e.g. the guard's own stop
            if self.stage == 2 and self.guard.reference_psnr() is not None and not judged:
                message, _ = self.guard.observe(step, final_eval["metrics"], final=True)
                if message:
                    logger.warn(message)
            else:
                self.guard.record(step, self.stage, final_eval["metrics"])
        selection = self.write_selection() if self.dist.main else None
        selection = broadcast_object(selection)
        exported, exported_eval = model, final_eval
        if selection is not None and selection["step"] != step:
            # An earlier checkpoint won: export it and measure it with the full evaluation.
            folder = ckpt.step_dir(self.run_dir / "checkpoints", selection["step"]) / "model"
            exported = ViTok.from_pretrained(folder, device=self.device)
            exported.amp_dtype = self.model.amp_dtype
            exported_eval = self.evaluate(quick=False, model=exported)
        self.write_reconstructions(exported)
        if self.dist.main:
            exported.save_pretrained(self.run_dir / "model")
            report.loss_plot(self.history, self.run_dir / "losses.png")
            report.heldout_plot(self.guard.state, self.config.guard.margin_db, self.run_dir / "heldout.png")
        document = (report.write_run_report(self, exported_eval, data_info, selection=selection,
                                            final_eval=final_eval) if self.dist.main else {})
        barrier()
        return document


def _numpy_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _set_numpy_state(state: list) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def train(config: TrainConfig, out: str | Path | None = None, resume: str | Path | None = None) -> dict:
    """`vitok train`: set up processes and the run folder, train, and return the report (rank 0)."""
    from . import distributed

    dist_info = distributed.setup(config.train.device)
    finished = False
    lock = None
    try:
        validate(config, dist_info.world)
        # Rank 0 alone checks and takes the run folder (it must be on a file system all nodes share),
        # then tells every rank where to work, or why not to.
        opened, error = None, None
        if dist_info.main:
            try:
                run_dir, resume_from, lock = open_run_dir(config, out, resume)
                opened = (run_dir, resume_from)
            except Exception as err:  # every rank must leave, not wait for a broadcast that never comes
                error = err
        shared = distributed.broadcast_object((opened, None if error is None else str(error)))
        if error is not None:
            raise error
        if shared[1] is not None:
            raise ValueError(shared[1])
        run_dir, resume_from = shared[0]
        barrier()
        trainer = Trainer(config, run_dir, dist_info)
        try:
            document = trainer.run(resume_from)
        except OSError as err:
            # Checkpoint writes say this themselves; any other write (metrics.jsonl, a plot, the
            # report) that meets a full disk gets the same answer instead of a raw traceback.
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            last = ckpt.latest_checkpoint(run_dir / "checkpoints")
            raise ckpt.CheckpointWriteError(
                f"could not write into {run_dir}: {err.strerror or err}; the last good checkpoint is "
                f"{last or 'none (no checkpoint was written yet)'}: free some space, then vitok train --resume "
                f"{run_dir}") from None
        finished = True
        return document
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown(synchronise=finished)


def open_run_dir(config: TrainConfig, out: str | Path | None, resume: str | Path | None):
    """Check the run folder and take its lock, then write config.yaml: (run_dir, checkpoint or None, lock).

    Everything that can refuse the run is checked before config.yaml (the one file written here):
    a resumed config is compared with the checkpoint's, so a refused resume leaves the run as it was.
    """
    from . import rundir
    from .report import new_run_dir

    if resume is not None:
        run_dir = Path(resume)
        if out is not None and Path(out).resolve() != run_dir.resolve():
            raise ValueError(f"--resume continues {run_dir} in place; drop --out {out}")
    else:
        run_dir = Path(out) if out else new_run_dir(config.name)
    check_data_paths(config, run_dir)
    lock = rundir.claim(run_dir, fresh=resume is None, config=config.to_dict())
    try:
        resume_from = None
        if resume is not None:
            resume_from = ckpt.latest_checkpoint(run_dir / "checkpoints")
            if resume_from is None:
                raise ValueError(f"--resume {run_dir}: no complete checkpoint under {run_dir / 'checkpoints'}; "
                                 f"start a new run instead")
            header = ckpt.read_header(resume_from)
            check_resume_compatible(config, header["config"], header["stage"], resume_from)
        rundir.write_config(run_dir, config.to_dict())
    except BaseException:
        lock.release()
        raise
    return run_dir, resume_from, lock
