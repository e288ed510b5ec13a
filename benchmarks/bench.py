"""ViTok against its peers on one GPU: encode, decode and training-step speed, exact FLOPs, MFU.

Rows measured (bf16, random weights and random pixels in [-1, 1]):

    ViTok S-B/16 at 256p and 512p, S-L/16 at 256p      images, eager and with compile_blocks()
    ViTok S-B/4x8 on 16x128x128 clips                   video, eager and compiled
    SD VAE (diffusers AutoencoderKL, SD v1 config)      256p and 512p images, eager
    CogVideoX VAE (AutoencoderKLCogVideoX defaults)     17x128x128 clips, eager

For each row: encode, decode and encode+decode samples/s, peak memory, exact FLOPs per sample
(matmuls and convolutions, 2 per multiply-add, counted on data-less tensors; ViTok's equal
vitok.info's), achieved TFLOP/s and MFU against the bf16 matmul rate measured at the start on the
same GPU; and the training step that trains it: reconstruction + KL with fused AdamW under bf16
autocast ("model" step). ViTok rows add the stage-1 step with LPIPS and the stage-2 step
(decoder-only optimizer, discriminator G and D steps, lazy R1 every 16 steps amortised), composed
as vitok.train.loop.Trainer composes them. Training MFU counts the model's FLOPs only, 3x forward.

Inference runs every model with bf16 weights (ViTok: model.to(torch.bfloat16), no autocast, so
its residual stream is bf16 too). Training uses float32 weights under bf16 autocast for all,
ViTok's residual stream in float32 unless --residual-dtype bfloat16; compiled ViTok rows also
compile the LPIPS network, as `model.compile=true` does in training. diffusers' CogVideoX round-trips clips of 8k+1 frames (first frame alone, 4 frames per
latent frame, chunks of 8), so it gets 17-frame clips against ViTok's 16, and video rates are
compared per frame. In compiled mode the baselines are compiled too (their encoder and decoder
networks, torch.compile in place), and each ViTok mode is compared with the baseline in the same
mode (the fair ratio, the headline) and with the eager baseline. diffusers is optional: without it
the baseline rows are skipped with a note.

Timing: CUDA events around N calls after warm-up, median over repeats; nothing inside the timed
region syncs with the host beyond what the code under test does itself. On out-of-memory a
measurement halves its batch and says so. The JSON is rewritten after every row.

On the GPU machine (diffusers travels as a wheel in .whl/, carried with the call):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/diffusers-*.whl
    PYTHONPATH=/tmp/site python3 benchmarks/bench.py --out $OUT/bench.json   # all: about 5 min

Parts can be left out or narrowed:

    --modes eager                       no torch.compile (about half the time)
    --parts infer,train,baselines       no LPIPS or stage-2 steps
    --only S-B/16@256 --batch S-B/16@256=256
    --count-only                        FLOPs and byte floors on the CPU, no timing
    --smoke                             tiny models on the CPU in float32: every code path in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # benchmark the checkout this script lives in

from vitok.losses import (Discriminator, PerceptualLoss, discriminator_loss, generator_loss,  # noqa: E402
                          kl_loss, r1_penalty, reconstruction_loss)
from vitok.metrics.lpips import build_lpips  # noqa: E402
from vitok.model import DiagonalGaussian, ViTok  # noqa: E402
from vitok.model import vitok_v2  # noqa: E402
from vitok.train.config import TrainConfig  # noqa: E402
from vitok.train.loop import leading_count  # noqa: E402
from vitok.train.optim import EMA, build_adamw  # noqa: E402

PARTS = ("infer", "train", "stages", "baselines")
MODES = ("eager", "compiled")
STEPS = ("model", "lpips", "stage2")
# Nominal H100 ceilings (NOTES.md: 745 TFLOP/s bf16 matmul, about 3 TB/s copy), for --count-only.
NOMINAL_TFLOPS, NOMINAL_TBPS = 745.0, 3.0


# ---- what is measured -------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """One row of the table: a tokenizer at one input size and the batches it runs at."""

    key: str  # row label, e.g. "S-B/16@256"
    kind: str  # "vitok", "sd-vae" or "cogvideox"
    size: int  # H = W in pixels
    frames: int  # frames per sample fed to the model; 1 means images (B×3×H×W)
    batch: int  # encode / decode batch
    train_batch: int
    name: str = ""  # ViTok variant ("S-B/16") or a released v2 checkpoint ("vitok-v2/350M-f16x16")
    architecture: str = "vitok"  # ViTokConfig.architecture of a named variant
    baseline: str = ""  # key of the baseline row a ViTok row is compared with
    tiny: bool = False  # smoke-sized architectures (baselines, discriminator)
    # Batch of the +LPIPS and stage-2 steps (0: train_batch): their extra networks need more memory,
    # and near the device's limit the allocator, not the work, sets the time.
    stage_batch: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return (3, self.frames, self.size, self.size) if self.frames > 1 else (3, self.size, self.size)


FULL = (
    Spec("S-B/16@256", "vitok", 256, 1, 512, 256, name="S-B/16", baseline="SD-VAE@256", stage_batch=128),
    Spec("S-B/16@512", "vitok", 512, 1, 128, 64, name="S-B/16", baseline="SD-VAE@512", stage_batch=32),
    # S-L's 24-block decoder holds about 2.8x S-B's activations: half the training batch.
    Spec("S-L/16@256", "vitok", 256, 1, 256, 128, name="S-L/16", baseline="SD-VAE@256", stage_batch=64),
    Spec("S-B/4x8@16x128", "vitok", 128, 16, 64, 32, name="S-B/4x8", baseline="CogVideoX@17x128", stage_batch=16),
    # The authors' released v2 architecture (random weights: speed does not depend on them), 2.9x
    # S-B/16's FLOPs per image: batches as S-L/16's.
    Spec("v2-350M@256", "vitok", 256, 1, 256, 128, name="vitok-v2/350M-f16x16", baseline="SD-VAE@256", stage_batch=64),
    Spec("v2-350M@512", "vitok", 512, 1, 64, 32, name="vitok-v2/350M-f16x16", baseline="SD-VAE@512", stage_batch=16),
    # The conv VAEs keep full-resolution feature maps of 128-512 channels: smaller training batches.
    Spec("SD-VAE@256", "sd-vae", 256, 1, 128, 32),
    Spec("SD-VAE@512", "sd-vae", 512, 1, 32, 8),
    Spec("CogVideoX@17x128", "cogvideox", 128, 17, 16, 4),
)
SMOKE = (
    Spec("T-T/8@32", "vitok", 32, 1, 2, 2, name="T-T/8", baseline="SD-VAE-tiny@32", tiny=True),
    Spec("T-T/2x8@8x32", "vitok", 32, 8, 2, 2, name="T-T/2x8", baseline="CogVideoX-tiny@9x32", tiny=True),
    Spec("T-T/8-v2@32", "vitok", 32, 1, 2, 2, name="T-T/8", architecture="vitok-v2", baseline="SD-VAE-tiny@32",
         tiny=True),
    Spec("SD-VAE-tiny@32", "sd-vae", 32, 1, 2, 2, tiny=True),
    Spec("CogVideoX-tiny@9x32", "cogvideox", 32, 9, 2, 2, tiny=True),
)

# Stable Diffusion v1's VAE (kl-f8): 8x down, 4 latent channels.
SD_VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                     layers_per_block=2, latent_channels=4, norm_num_groups=32, act_fn="silu")
SD_VAE_TINY = dict(SD_VAE_CONFIG, block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8)
# AutoencoderKLCogVideoX's defaults are CogVideoX's VAE; the tiny one keeps its 4x/8x compression.
COGVIDEOX_TINY = dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4)


def load_diffusers() -> tuple[object | None, str | None]:
    """(the diffusers module, None), or (None, why the baseline rows are skipped)."""
    try:
        import diffusers
    except ImportError as err:
        return None, f"diffusers is not installed ({err}); pip install diffusers to measure the baselines"
    return diffusers, None


# ---- the tokenizers behind one interface -----------------------------------------------------

class Tokenizer:
    """A tokenizer as the benchmark drives it: encode -> posterior, decode, reconstruct (sampled)."""

    module: torch.nn.Module
    dtype: torch.dtype = torch.float32  # the weights' dtype now

    def _cast(self, dtype: torch.dtype) -> None:
        if dtype != self.dtype:  # casting only on a change also spares the fake tensors of count_spec
            self.module.to(dtype)
            self.dtype = dtype

    def inference(self) -> None:
        """Switch to the model's own inference path in the run's precision (eval mode)."""
        raise NotImplementedError

    def training(self) -> None:
        """Switch to training: float32 weights, autocast in the run's precision, train mode."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Pixels B×3×H×W (or B×3×T×H×W) in [-1, 1] -> posterior over the latents."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (the posterior's shape) -> float32 pixels."""
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, DiagonalGaussian]:
        """x -> (x_hat from a sampled latent, posterior): the training forward."""
        posterior = self.encode(x)
        return self.decode(posterior.sample()), posterior


class VitokTokenizer(Tokenizer):
    """vitok.model.ViTok: inference with bf16 weights (as the baselines), training under bf16 autocast."""

    def __init__(self, spec: Spec, device: torch.device, amp_dtype: torch.dtype | None,
                 residual_dtype: torch.dtype = torch.float32, kernels: str = "torch") -> None:
        overrides = dict(channels=16, image_size=spec.size)
        if spec.frames > 1:
            overrides["frames"] = spec.frames
        if spec.architecture == "vitok-v2":
            overrides.update(architecture="vitok-v2", qk_norm=True)
        with torch.device(device):
            if spec.name.startswith(vitok_v2.PREFIX):
                self.module = ViTok(vitok_v2.RELEASED[spec.name[len(vitok_v2.PREFIX):]].config(spec.size))
            else:
                self.module = ViTok.from_name(spec.name, **overrides)
        self.amp_dtype = amp_dtype
        self.module.residual_dtype = residual_dtype
        self.kernels = kernels  # model.kernels; the trainer's steps get it through their config
        self.module.set_kernels(kernels)
        self.compiled = False

    def inference(self) -> None:
        # bf16 weights and no autocast: no per-call weight casts, a bf16 residual stream; what a
        # user does for bf16 inference (model.to(torch.bfloat16)), and how the baselines run.
        self._cast(self.amp_dtype or torch.float32)
        self.module.eval()
        self.module.amp_dtype = None

    def training(self) -> None:
        self._cast(torch.float32)
        self.module.train()
        self.module.amp_dtype = self.amp_dtype
        self.module.set_grad_checkpointing(False)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return self.module.encode(x.to(self.dtype), check=False)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.module.decode(z, check=False)

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, DiagonalGaussian]:
        return self.module(x, check=False)

    def decoder_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The parameters stage 2 trains (Trainer.decoder_params)."""
        return {n: p for n, p in self.module.named_parameters()
                if n.split(".")[0] in ("from_latent", "decoder", "unembed")}

    def freeze_encoder(self) -> None:
        for part in self.module.encoder_modules():
            part.requires_grad_(False)

    def compile(self, mode: str | None, scope: str = "blocks") -> None:
        options = {"mode": mode} if mode else {}
        if scope == "stacks":
            self.module.compile_stacks(**options)
        else:
            self.module.compile_blocks(**options)
        self.compiled = True  # training steps then compile LPIPS too, as the Trainer does


class DiffusersTokenizer(Tokenizer):
    """A diffusers VAE built from its config (random weights, never downloaded)."""

    def __init__(self, spec: Spec, device: torch.device, amp_dtype: torch.dtype | None, diffusers) -> None:
        if spec.kind == "sd-vae":
            cls, config = diffusers.AutoencoderKL, SD_VAE_TINY if spec.tiny else SD_VAE_CONFIG
        else:
            cls, config = diffusers.AutoencoderKLCogVideoX, COGVIDEOX_TINY if spec.tiny else {}
        with torch.device(device):
            self.module = cls(**config)
        self.amp_dtype = amp_dtype

    def inference(self) -> None:
        self._cast(self.amp_dtype or torch.float32)
        self.module.eval()

    def training(self) -> None:
        self._cast(torch.float32)
        self.module.train()

    def _autocast(self, device: torch.device):
        # Inference runs in the weights' dtype; training runs float32 weights under autocast.
        if self.amp_dtype is None or self.dtype != torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        with self._autocast(x.device):
            dist = self.module.encode(x.to(self.dtype)).latent_dist
        return DiagonalGaussian(dist.mean.float(), dist.logvar.float())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        with self._autocast(z.device):
            return self.module.decode(z.to(self.dtype)).sample.float()

    def compile(self, mode: str | None, scope: str = "blocks") -> None:
        """torch.compile the VAE's encoder and decoder networks (in place), the way a diffusers user does
        (`vae.encoder.compile()`, `vae.decoder.compile()`); the wrappers around them stay eager."""
        options = {"mode": mode} if mode else {}
        for name in ("encoder", "decoder"):
            getattr(self.module, name).compile(**options)
        self.compiled = True


def build_tokenizer(spec: Spec, device: torch.device, amp_dtype: torch.dtype | None, diffusers,
                    residual_dtype: torch.dtype = torch.float32, kernels: str = "torch") -> Tokenizer:
    """The row's tokenizer with random weights, built directly on `device`."""
    if spec.kind == "vitok":
        return VitokTokenizer(spec, device, amp_dtype, residual_dtype, kernels)
    return DiffusersTokenizer(spec, device, amp_dtype, diffusers)


def random_pixels(spec: Spec, batch: int, device: torch.device) -> torch.Tensor:
    """Uniform pixels in [-1, 1] (never zeros: they can run faster than real data)."""
    return torch.rand((batch, *spec.shape), device=device) * 2 - 1


# ---- training steps, as the Trainer composes them ---------------------------------------------

class TrainingStep:
    """One optimizer step of kind "model", "lpips" (stage 1) or "stage2", composed by hand with the
    shipped loss and optimizer defaults: for the baselines (diffusers VAEs, which vitok's trainer does
    not train) and for counting FLOPs on fake tensors. vitok models are timed with TrainerStep.

    Left out: the Trainer's finite-gradient check (one host sync per step) and its per-step
    noise draw; the model samples its own noise instead. `optimize=False` builds no optimizers
    (for counting FLOPs on data-less tensors, where optimizers cannot run).
    """

    def __init__(self, kind: str, tok: Tokenizer, x: torch.Tensor, spec: Spec,
                 amp_dtype: torch.dtype | None, optimize: bool = True, channels_last: bool = False,
                 lpips_fraction: float = 1.0, disc_fraction: float = 1.0, disc_channels: int = 0) -> None:
        config = TrainConfig()
        config.loss.lpips_fraction, config.loss.disc_fraction = lpips_fraction, disc_fraction
        if disc_channels:
            config.loss.disc_channels = disc_channels
        self.loss, optim = config.loss, config.optim
        self.kind, self.tok, self.x, self.amp_dtype = kind, tok, x, amp_dtype
        self.clip = optim.grad_clip or float("inf")
        tok.training()
        tok.module.requires_grad_(True)
        tok.module.zero_grad(set_to_none=True)
        video = spec.frames > 1
        self.perceptual = self.disc = None
        with torch.device(x.device):
            if kind in ("lpips", "stage2"):
                # Random LPIPS weights: the network's cost does not depend on its values.
                self.perceptual = PerceptualLoss(build_lpips(None, None), self.loss.lpips_max_frames if video else None)
            if kind == "stage2":
                tok.freeze_encoder()
                channels = (8, 16) if spec.tiny else (self.loss.disc_channels, self.loss.disc_max_channels)
                self.disc = Discriminator(spec.size, channels=channels[0], max_channels=channels[1],
                                          video=self.loss.disc_video if video else None, frames=spec.frames)
                self.disc.channels_last = channels_last
            if self.perceptual is not None:
                self.perceptual.lpips.channels_last = channels_last
                if getattr(tok, "compiled", False):
                    self.perceptual.compile_network()
        named = [(n, p) for n, p in tok.module.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.opt_g = self.opt_d = self.ema = None
        if optimize:
            self.opt_g = build_adamw(named, optim.lr, (optim.beta1, optim.beta2), optim.weight_decay, optim.fused)
            if self.disc is not None:
                self.opt_d = build_adamw(list(self.disc.named_parameters()), optim.disc_lr, (0.0, 0.99), 0.0,
                                         optim.fused)
                decoder = tok.decoder_parameters()
                self.ema = EMA({n: p.detach().clone() for n, p in decoder.items()}, decoder, config.train.ema_decay)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.x.device.type, dtype=self.amp_dtype)

    def forward_backward(self, r1: bool = False) -> None:
        """Losses and gradients of the generator (and, in stage 2, of the discriminator)."""
        lo, x = self.loss, self.x
        x_hat, posterior = self.tok.reconstruct(x)
        loss = lo.reconstruction_weight * reconstruction_loss(x_hat, x, lo.reconstruction)
        if self.kind != "stage2" and not posterior.deterministic:  # v2's latent has no KL term
            loss = loss + lo.kl_weight * kl_loss(posterior)
        if self.perceptual is not None:
            k = leading_count(x.shape[0], lo.lpips_fraction)
            with self._autocast():
                loss = loss + lo.lpips_weight * self.perceptual(x_hat[:k], x[:k])
        if self.disc is None:
            loss.backward()
            return
        # As the trainer does: one discriminator pass over the fakes for both players, each
        # player's backward restricted to its own weights.
        k = leading_count(x.shape[0], lo.disc_fraction)
        with self._autocast():
            fake_logits = self.disc(x_hat[:k]).float()
        loss = loss + lo.gan_weight * generator_loss(fake_logits, lo.gan_loss)
        torch.autograd.backward(loss, inputs=self.params, retain_graph=True)
        real = x[:k].detach().requires_grad_(r1)
        with self._autocast():
            real_logits = self.disc(real).float()
        d_loss = discriminator_loss(real_logits, fake_logits, lo.gan_loss)
        if r1:
            # Lazy R1: every r1_every steps, weighted up by r1_every (StyleGAN2).
            d_loss = d_loss + lo.r1_weight * lo.r1_every * r1_penalty(real_logits, real)
        torch.autograd.backward(d_loss, inputs=list(self.disc.parameters()))

    def apply(self) -> None:
        """Clip, step the optimizers, update the decoder EMA, drop the gradients."""
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)
        if self.disc is not None:
            torch.nn.utils.clip_grad_norm_(list(self.disc.parameters()), self.clip)
            self.opt_d.step()
            self.opt_d.zero_grad(set_to_none=True)
            self.ema.update(self.tok.decoder_parameters())

    def __call__(self, r1: bool = False) -> None:
        self.forward_backward(r1)
        self.apply()


class TrainerStep:
    """One optimizer step of vitok's own trainer: Trainer.train_step then Trainer.apply_step
    (vitok.train.loop), on the benchmark's model, so the timing is of exactly what a run executes:
    the per-step noise draw, the loss terms, the finite-gradient flag, fused AdamW, and in stage 2
    the discriminator, lazy R1, LeCam, the adaptive GAN weight, the guard's scales and the EMA.

    kind "model": stage 1 without LPIPS; "lpips": stage 1 with it; "stage2": stage 2 (frozen encoder).
    LPIPS has random weights (its cost does not depend on their values). The shipped loss and
    optimizer defaults apply, with the benchmark's fractions, discriminator width and precision.
    """

    def __init__(self, kind: str, tok: "VitokTokenizer", x: torch.Tensor, spec: Spec, amp_dtype: torch.dtype | None,
                 channels_last: bool = False, lpips_fraction: float = 1.0, disc_fraction: float = 1.0,
                 disc_channels: int = 0) -> None:
        import tempfile

        from vitok.train.distributed import Dist
        from vitok.train.loop import Trainer

        config = TrainConfig()
        config.train.batch_size = x.shape[0]
        config.train.precision = "bf16" if amp_dtype == torch.bfloat16 else "fp32"
        config.train.stage2_steps = max(1, config.train.stage2_steps) if kind == "stage2" else 0
        config.model.residual_dtype = str(tok.module.residual_dtype).removeprefix("torch.")
        config.model.kernels = tok.kernels
        config.model.compile = False  # the benchmark compiles the model itself (tok.compile)
        lo = config.loss
        lo.lpips_fraction, lo.disc_fraction, lo.require_lpips = lpips_fraction, disc_fraction, False
        if disc_channels:
            lo.disc_channels = disc_channels
        if spec.tiny:
            lo.disc_channels, lo.disc_max_channels = 8, 16
        tok.training()
        tok.module.requires_grad_(True)
        tok.module.zero_grad(set_to_none=True)
        device = x.device
        dist = Dist(rank=0, world=1, local_rank=0, device=device)
        self.trainer = trainer = Trainer(config, Path(tempfile.gettempdir()) / "vitok-bench-run", dist,
                                         model=tok.module)
        trainer.perceptual = None
        if kind in ("lpips", "stage2"):
            video = spec.frames > 1
            with torch.device(device):
                trainer.perceptual = PerceptualLoss(build_lpips(None, None), lo.lpips_max_frames if video else None)
            trainer.perceptual.lpips.channels_last = channels_last
        if trainer.disc is not None:
            trainer.disc.channels_last = channels_last
        if getattr(tok, "compiled", False):
            trainer.compile_losses()  # as model.compile=true does in a run
        trainer.enter_stage(2 if kind == "stage2" else 1)
        self.x = x
        t = config.train
        # Stage-2 step numbers: every r1_every-th step runs lazy R1 (disc_step decides by the step).
        self.first = (t.stage1_steps // lo.r1_every + 1) * lo.r1_every if kind == "stage2" else 1

    def __call__(self, r1: bool = False) -> None:
        step = self.first if r1 or self.trainer.stage == 1 else self.first + 1  # a multiple of r1_every runs R1
        terms = self.trainer.train_step(self.x, step, 1.0)
        self.trainer.apply_step(terms)


# ---- counting: exact FLOPs and a floor on bytes, without arithmetic ---------------------------

class MatmulOutputs(TorchFunctionMode):
    """Counts the elements written by matmul, convolution and attention calls.

    With every elementwise op fused into them, these outputs are the only activations that must
    go through device memory: each written once and read once is the bytes floor.
    """

    FUNCS = frozenset({F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                       F.conv_transpose3d, F.scaled_dot_product_attention, torch.matmul, torch.mm, torch.bmm,
                       torch.addmm, torch.baddbmm, torch.Tensor.matmul, torch.Tensor.__matmul__})

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.FUNCS and isinstance(out, torch.Tensor):
            self.elements += out.numel()
        return out


def count_call(fn: Callable[[], object], outputs: bool = True) -> tuple[object, int, int]:
    """(fn's result, FLOPs, elements written by matmul-like calls, or 0 with outputs=False) of one call."""
    with FlopCounterMode(display=False) as flops, (MatmulOutputs() if outputs else contextlib.nullcontext()) as out:
        result = fn()
    return result, flops.get_total_flops(), out.elements if outputs else 0


def count_spec(spec: Spec, diffusers, steps: tuple[str, ...]) -> dict:
    """FLOPs, parameters and bytes floor per sample, counted without arithmetic.

    The tokenizer is built on the meta device and its tensors replaced by fake ones (shapes and a
    CPU device, no data): LPIPS asks for the device's autocast state, which the meta device has
    not. Attention runs as math attention, whose matmuls the counter sees (the flash formula
    gives the same count). Inference counts use one sample; training steps are counted forward
    and backward with two samples (the discriminator's minibatch statistic needs a group),
    without the optimizer and without R1: FlopCounterMode's module tracker cannot follow
    autograd.grad to a leaf input.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    tok = build_tokenizer(spec, torch.device("meta"), None, diffusers)
    params = sum(p.numel() for p in tok.module.parameters())
    bf16 = 2
    with FakeTensorMode(allow_non_fake_inputs=True), sdpa_kernel(SDPBackend.MATH):
        tok.module.to_empty(device="cpu")
        tok.inference()
        x = torch.empty((1, *spec.shape))
        with torch.no_grad():
            posterior, enc_flops, enc_out = count_call(lambda: tok.encode(x))
            x_hat, dec_flops, dec_out = count_call(lambda: tok.decode(posterior.mean))
        if tuple(x_hat.shape) != tuple(x.shape):
            raise ValueError(f"{spec.key}: decode(encode(x)) has shape {tuple(x_hat.shape)}, x has {tuple(x.shape)}")
        counts = {
            "params": params,
            "weight_bytes_bf16": params * bf16,
            "latent_shape": list(posterior.mean.shape[1:]),
            "flops_encode": enc_flops,
            "flops_decode": dec_flops,
            "flops_total": enc_flops + dec_flops,
            "flops_per_frame": (enc_flops + dec_flops) / spec.frames,
            # Written once and read once, in bf16.
            "act_bytes_encode": 2 * bf16 * enc_out,
            "act_bytes_decode": 2 * bf16 * dec_out,
            "act_bytes_total": 2 * bf16 * (enc_out + dec_out),
            "step_flops": {},
        }
        x2 = torch.empty((2, *spec.shape))
        for kind in steps:
            step = TrainingStep(kind, tok, x2, spec, None, optimize=False)
            _, flops, _ = count_call(step.forward_backward, outputs=False)
            counts["step_flops"][kind] = flops / 2
    return counts


def floors(counts: dict, batch: int, tflops: float, tbps: float) -> dict:
    """Roofline floors per sample for encode+decode at a batch: arithmetic, bytes and the larger."""
    t_math = counts["flops_total"] / (tflops * 1e12)
    t_bytes = (counts["act_bytes_total"] + counts["weight_bytes_bf16"] / batch) / (tbps * 1e12)
    return {"math_s": t_math, "bytes_s": t_bytes, "floor_samples_per_s": 1 / max(t_math, t_bytes),
            "bound": "compute" if t_math >= t_bytes else "memory"}


# ---- timing -----------------------------------------------------------------------------------

@dataclass
class Timer:
    """Median seconds per call of fn: warm-up, then `repeats` timed groups of N calls.

    N is chosen from the last warm-up call so that a group lasts about `target_s`. CUDA events
    bracket each group, so the only host syncs are the one after each group and any that fn
    makes itself.
    """

    device: torch.device
    warmup: int
    repeats: int
    target_s: float
    max_iters: int = 50

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _group(self, fn: Callable[[], object], n: int) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - t0

    def _wall(self, fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        self._sync()
        return time.perf_counter() - t0

    def run(self, fn: Callable[[], object]) -> dict:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        first = estimate = self._wall(fn)  # the first call compiles, autotunes and allocates
        for _ in range(self.warmup - 1):
            estimate = self._wall(fn)
        n = max(1, min(self.max_iters, round(self.target_s / max(estimate, 1e-9))))
        times = [self._group(fn, n) / n for _ in range(self.repeats)]
        median = statistics.median(times)
        return {"seconds": median, "best_seconds": min(times), "spread": (max(times) - min(times)) / median,
                "iters": n, "repeats": self.repeats, "first_call_s": first,
                "peak_gib": torch.cuda.max_memory_allocated(self.device) / 2**30 if cuda else None}


def release(device: torch.device) -> None:
    """Free what dropped objects held: their memory goes back to the device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fit_batch(run: Callable[[int], dict], batch: int, device: torch.device) -> dict:
    """run(batch), halving the batch on out-of-memory until it fits; the result records the batch used."""
    requested = batch
    while True:
        try:
            out = run(batch)
            out.update(batch=batch, requested_batch=requested)
            return out
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
        # Outside the except block: the traceback and the tensors its frames held are gone.
        release(device)
        print(f"  out of memory at batch {batch}; retrying at {batch // 2}", flush=True)
        batch //= 2


def _matmul(n: int, dtype: torch.dtype, timer: Timer) -> dict:
    a, b = (torch.randn(n, n, device=timer.device, dtype=dtype) for _ in range(2))
    return timer.run(lambda: torch.mm(a, b))


def _copy(numel: int, dtype: torch.dtype, timer: Timer) -> dict:
    src = torch.randn(numel, device=timer.device, dtype=dtype)
    dst = torch.empty_like(src)
    return timer.run(lambda: dst.copy_(src))


def measure_ceilings(dtype: torch.dtype, timer: Timer) -> dict:
    """The two rates MFU and floors are taken against: dense matmul and a copy, best of several."""
    best = dataclasses.replace(timer, repeats=max(timer.repeats, 10))
    cuda = timer.device.type == "cuda"
    n = 8192 if cuda else 256
    numel = 2**29 if cuda else 2**20  # 1 GiB of bf16: far beyond L2
    mm, copy = _matmul(n, dtype, best), _copy(numel, dtype, best)
    moved = 2 * numel * dtype.itemsize  # read + write
    release(timer.device)
    return {"matmul_n": n, "matmul_dtype": str(dtype).replace("torch.", ""),
            "matmul_tflops": 2 * n**3 / mm["best_seconds"] / 1e12,
            "matmul_tflops_median": 2 * n**3 / mm["seconds"] / 1e12,
            "copy_bytes": moved, "copy_tbps": moved / copy["best_seconds"] / 1e12}


# ---- one row ----------------------------------------------------------------------------------

def rates(timing: dict, batch: int, spec: Spec, flops: float, peak_tflops: float) -> dict:
    """Samples and frames per second, achieved TFLOP/s and MFU of a timing of one batch."""
    per_s = batch / timing["seconds"]
    return {**timing, "samples_per_s": per_s, "frames_per_s": per_s * spec.frames,
            "tflops": flops * per_s / 1e12, "mfu": flops * per_s / 1e12 / peak_tflops}


def measure_inference(tok: Tokenizer, spec: Spec, counts: dict, ctx: "Context", batch: int) -> dict:
    """Encode, decode and encode+decode of one batch (the decode input is the encoded mean)."""
    tok.inference()
    x = random_pixels(spec, batch, ctx.device)
    out = {}
    with torch.no_grad():
        # Encode is timed first, so its first call holds the encoder's compile time.
        out["encode"] = rates(ctx.timer.run(lambda: tok.encode(x)), batch, spec, counts["flops_encode"],
                              ctx.peak_tflops)
        z = tok.encode(x).mean
        out["decode"] = rates(ctx.timer.run(lambda: tok.decode(z)), batch, spec, counts["flops_decode"],
                              ctx.peak_tflops)
        out["encode_decode"] = rates(ctx.timer.run(lambda: tok.decode(tok.encode(x).mean)), batch, spec,
                                     counts["flops_total"], ctx.peak_tflops)
    return out


def measure_step(kind: str, tok: Tokenizer, spec: Spec, counts: dict, ctx: "Context", batch: int) -> dict:
    """One training-step kind; stage 2 is timed with and without R1 and amortised over r1_every steps."""
    x = random_pixels(spec, batch, ctx.device)
    # vitok models are timed through the trainer's own step; the baselines (no vitok trainer) through
    # TrainingStep, which composes the same losses by hand.
    make = TrainerStep if isinstance(tok, VitokTokenizer) else TrainingStep
    step = make(kind, tok, x, spec, ctx.amp_dtype, channels_last=ctx.channels_last,
                disc_channels=ctx.disc_channels, lpips_fraction=ctx.lpips_fraction, disc_fraction=ctx.disc_fraction)
    model_flops = 3 * counts["flops_total"]  # the MFU convention: model FLOPs only, 3x forward
    timing = ctx.timer.run(step)
    if kind == "stage2":
        every = TrainConfig().loss.r1_every
        with_r1 = ctx.timer.run(lambda: step(r1=True))
        timing = {"seconds": ((every - 1) * timing["seconds"] + with_r1["seconds"]) / every, "r1_every": every,
                  "plain": timing, "r1": with_r1, "first_call_s": timing["first_call_s"],
                  "peak_gib": max(filter(None, (timing["peak_gib"], with_r1["peak_gib"])), default=None)}
    out = rates(timing, batch, spec, model_flops, ctx.peak_tflops)
    # Every network's forward and backward (R1 not counted), at the step's rate.
    out["counted_tflops"] = counts["step_flops"][kind] * out["samples_per_s"] / 1e12
    return out


@dataclass
class Context:
    """What every measurement needs: device, precision, timer, ceilings, options, error log."""

    device: torch.device
    amp_dtype: torch.dtype | None
    timer: Timer
    peak_tflops: float
    parts: tuple[str, ...]
    strict: bool
    errors: list
    channels_last: bool = False
    lpips_fraction: float = 1.0
    disc_fraction: float = 1.0
    residual_dtype: torch.dtype = torch.float32
    kernels: str = "torch"  # ViTok rows' model.kernels
    compile_scope: str = "blocks"
    disc_channels: int = 0  # 0: the shipped loss.disc_channels

    def attempt(self, where: str, fn: Callable[..., dict], *args) -> dict:
        """fn(*args), or {"error": ...} logged and printed, unless strict (smoke), where errors raise."""
        try:
            return fn(*args)
        except Exception as err:  # one failing row must not lose the others on a lent GPU
            if self.strict:
                raise
            traceback.print_exc()
            message = f"{type(err).__name__}: {err}"
            self.errors.append({"where": where, "error": message})
            return {"error": message}


def measure_mode(spec: Spec, mode: str, counts: dict, ctx: Context, diffusers, compile_mode: str | None) -> dict:
    """Every measurement of one row in one mode, on a freshly built model."""
    tok = build_tokenizer(spec, ctx.device, ctx.amp_dtype, diffusers, ctx.residual_dtype, ctx.kernels)
    steps = ("model",) if "train" in ctx.parts else ()
    if spec.kind == "vitok" and "stages" in ctx.parts:
        steps = (*steps, "lpips", "stage2")
    started = time.perf_counter()
    result: dict = {}
    if mode == "compiled":
        import torch._dynamo

        torch._dynamo.reset()  # each row compiles from scratch, as a user's process would
        # A user's run compiles one or two of the variants measured here (eval/train, frozen
        # encoder); above dynamo's default limit the rest would silently run eager.
        torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
        tok.compile(compile_mode, ctx.compile_scope)
    if "infer" in ctx.parts:
        result["infer"] = ctx.attempt(f"{spec.key} {mode} infer", fit_batch,
                                      functools.partial(measure_inference, tok, spec, counts, ctx), spec.batch,
                                      ctx.device)
        print(f"  {spec.key} {mode} inference done ({time.perf_counter() - started:.0f} s)", flush=True)
    train = {}
    for kind in steps:
        train[kind] = ctx.attempt(f"{spec.key} {mode} {kind} step", fit_batch,
                                  functools.partial(measure_step, kind, tok, spec, counts, ctx),
                                  spec.train_batch if kind == "model" else spec.stage_batch or spec.train_batch,
                                  ctx.device)
        tok.module.zero_grad(set_to_none=True)
        print(f"  {spec.key} {mode} {kind} step done ({time.perf_counter() - started:.0f} s)", flush=True)
    base = train.get("model", {}).get("samples_per_s")
    for r in train.values():
        if base and "samples_per_s" in r:
            r["time_vs_model_step"] = base / r["samples_per_s"]
    if train:
        result["train"] = train
    if mode == "compiled":
        with contextlib.suppress(Exception):  # dynamo's counters are informational only
            from torch._dynamo.utils import counters

            result["dynamo_stats"] = dict(counters["stats"])
    result["wall_s"] = time.perf_counter() - started
    return result


# ---- report -----------------------------------------------------------------------------------

def ratios(rows: list[dict]) -> list[dict]:
    """ViTok over its baseline, per frame, for encode, decode, encode+decode and the model step: each ViTok
    mode against the baseline in the same mode ("baseline_mode": compiled against compiled, the fair
    comparison and the headline) and, as before, against the eager baseline."""
    by_key = {r["key"]: r for r in rows}
    out = []
    for row in rows:
        base = by_key.get(row.get("baseline", ""))
        if row["kind"] != "vitok" or base is None:
            continue
        for mode, m in row["modes"].items():
            for base_mode in dict.fromkeys((mode, "eager")):
                b = base["modes"].get(base_mode)
                if b is None or "error" in b:
                    continue
                out.append(_ratio(row, m, mode, base, b, base_mode))
    return out


def _ratio(row: dict, m: dict, mode: str, base: dict, b: dict, base_mode: str) -> dict:
    """One ViTok mode's rates over one baseline mode's, per frame."""
    entry = {"vitok": row["key"], "mode": mode, "baseline": base["key"], "baseline_mode": base_mode, "per": "frame"}
    for op in ("encode", "decode", "encode_decode"):
        mine, theirs = m.get("infer", {}).get(op, {}), b.get("infer", {}).get(op, {})
        if "frames_per_s" in mine and "frames_per_s" in theirs:
            entry[op] = mine["frames_per_s"] / theirs["frames_per_s"]
    mine, theirs = m.get("train", {}).get("model", {}), b.get("train", {}).get("model", {})
    if "frames_per_s" in mine and "frames_per_s" in theirs:
        entry["train"] = mine["frames_per_s"] / theirs["frames_per_s"]
    entry["flops_per_frame"] = base["counts"]["flops_per_frame"] / row["counts"]["flops_per_frame"]
    return entry


def _fmt(value, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def print_table(result: dict) -> None:
    """One table: rates, MFU, memory, training-step costs and the ratios to the baseline."""
    head = (f"{'row':20} {'mode':8} {'GFLOP':>7} {'B':>4} {'enc/s':>7} {'dec/s':>7} {'e+d/s':>7} {'MFU':>6} "
            f"{'GiB':>5} | {'B':>4} {'train/s':>7} {'MFU':>6} {'GiB':>5} {'lpips':>6} {'stage2':>6} | "
            f"{'e+d':>6} {'train':>6} {'FLOP':>6} {'e+d/eb':>6}")
    print("\n" + head + "\n" + "-" * len(head))
    # Against the baseline in the same mode (compiled vs compiled); "eager b." is against the eager baseline.
    ratio = {(r["vitok"], r["mode"]): r for r in result["ratios"] if r.get("baseline_mode", "eager") == r["mode"]}
    eager_ratio = {(r["vitok"], r["mode"]): r for r in result["ratios"] if r.get("baseline_mode", "eager") == "eager"}
    for row in result["rows"]:
        for mode, m in row["modes"].items():
            if "error" in m:
                print(f"{row['key']:20} {mode:8} failed: {m['error']}")
                continue
            inf, tr = m.get("infer", {}), m.get("train", {})
            ed, model, r = inf.get("encode_decode", {}), tr.get("model", {}), ratio.get((row["key"], mode), {})
            cells = [
                f"{row['key']:20} {mode:8} {row['counts']['flops_total'] / 1e9:7.1f}",
                f"{_fmt(inf.get('batch'), 'd'):>4}",
                *(f"{_fmt(inf.get(op, {}).get('samples_per_s')):>7}" for op in ("encode", "decode", "encode_decode")),
                f"{_fmt(ed.get('mfu'), '.1%'):>6} {_fmt(ed.get('peak_gib'), '.1f'):>5} |",
                f"{_fmt(model.get('batch'), 'd'):>4} {_fmt(model.get('samples_per_s')):>7}",
                f"{_fmt(model.get('mfu'), '.1%'):>6} {_fmt(model.get('peak_gib'), '.1f'):>5}",
                *(f"{_fmt(tr.get(k, {}).get('time_vs_model_step'), '.2f', 'x'):>6}" for k in ("lpips", "stage2")),
                "|", *(f"{_fmt(r.get(k), '.2f', 'x'):>6}" for k in ("encode_decode", "train")),
                f"{_fmt(r.get('flops_per_frame'), '.1f', 'x'):>6}",
                f"{_fmt(eager_ratio.get((row['key'], mode), {}).get('encode_decode'), '.2f', 'x'):>6}",
            ]
            print(" ".join(cells))
            failed = [v["error"] for v in (inf, *tr.values()) if "error" in v]
            if failed:
                print(f"{'':20} failed: " + "; ".join(failed))
    c = result["ceilings"]
    clips = ", ".join(f"{r['key']} {r['frames_per_sample']}" for r in result["rows"] if r["frames_per_sample"] > 1)
    print(f"\nGFLOP: per sample, encode + decode, exact. B: batch used. Rates in samples/s (video rows: clips/s; "
          f"frames per clip: {clips or 'none'}). MFU against {c['matmul_tflops']:.4g} TFLOP/s measured here "
          f"({c['matmul_dtype']} {c['matmul_n']}^3 matmul); train MFU counts the model's FLOPs, 3x forward. "
          f"lpips, stage2: time per sample over the model-only step's (stage 2 amortises R1 over "
          f"{TrainConfig().loss.r1_every} steps). e+d, train: ViTok over its baseline in the same mode (compiled "
          f"against compiled), per frame; e+d/eb: against the eager baseline. "
          f"FLOP: the baseline's FLOPs per frame over ViTok's.")
    if result["meta"].get("baselines_skipped"):
        print(f"Baselines skipped: {result['meta']['baselines_skipped']}")
    if result["errors"]:
        print(f"{len(result['errors'])} measurement(s) failed; see 'errors' in the JSON.")


def print_counts(result: dict) -> None:
    """The numbers known without a GPU: FLOPs, parameters, bytes floor and roofline floor of each row."""
    c = result["ceilings"]
    print(f"\n{'row':20} {'params M':>8} {'GFLOP enc':>9} {'dec':>7} {'/frame':>7} {'act MB':>7} {'floor/s':>8} "
          f"{'bound':>7} | step GFLOP/sample: " + " ".join(f"{k:>7}" for k in STEPS))
    for row in result["rows"]:
        n = row["counts"]
        if "error" in n:
            print(f"{row['key']:20} counting failed: {n['error']}")
            continue
        steps = (n["step_flops"].get(k) for k in STEPS)
        print(f"{row['key']:20} {n['params'] / 1e6:8.1f} {n['flops_encode'] / 1e9:9.1f} {n['flops_decode'] / 1e9:7.1f} "
              f"{n['flops_per_frame'] / 1e9:7.1f} {n['act_bytes_total'] / 1e6:7.1f} "
              f"{row['floors']['floor_samples_per_s']:8.0f} {row['floors']['bound']:>7} | {'':18} "
              + " ".join(f"{_fmt(None if f is None else f / 1e9, '.1f'):>7}" for f in steps))
    print(f"act MB: matmul, convolution and attention outputs per sample in bf16, each written and read once "
          f"(encode + decode). floor/s: encode + decode samples/s at {c['matmul_tflops']:.4g} TFLOP/s and "
          f"{c['copy_tbps']:.3g} TB/s, weights read once per batch. Step GFLOPs: forward and backward of every "
          f"network (R1 and the optimizer not counted).")


# ---- main -------------------------------------------------------------------------------------

def parse_overrides(items: list[str], flag: str) -> dict[str, int]:
    out = {}
    for item in items:
        key, sep, value = item.rpartition("=")
        if not sep or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"{flag} {item!r}: expected ROW=N with N >= 1, e.g. {flag} S-B/16@256=256")
        out[key] = int(value)
    return out


def select_specs(args: argparse.Namespace) -> list[Spec]:
    """The rows to run: the chosen ViTok rows, then the baselines they compare with."""
    table = SMOKE if args.smoke else FULL
    vitok = [s for s in table if s.kind == "vitok"]
    keys = {s.key for s in table}
    if args.only:
        unknown = sorted(set(args.only) - {s.key for s in vitok})
        if unknown:
            raise SystemExit(f"--only {unknown}: unknown ViTok rows; choose from {[s.key for s in vitok]}")
        vitok = [s for s in vitok if s.key in args.only]
    wanted = {s.baseline for s in vitok} if "baselines" in args.parts else set()
    specs = vitok + [s for s in table if s.key in wanted]
    batch, train_batch = parse_overrides(args.batch, "--batch"), parse_overrides(args.train_batch, "--train-batch")
    for flag, given in (("--batch", batch), ("--train-batch", train_batch)):
        if set(given) - keys:
            raise SystemExit(f"{flag}: unknown rows {sorted(set(given) - keys)}; rows are {sorted(keys)}")
    return [dataclasses.replace(s, batch=batch.get(s.key, s.batch), train_batch=train_batch.get(s.key, s.train_batch))
            for s in specs]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench.json"), help="JSON of all numbers")
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU in float32: every code path in seconds")
    p.add_argument("--count-only", action="store_true", help="FLOPs and byte floors on the CPU; no timing")
    p.add_argument("--modes", default=None, help="comma list of eager,compiled (default: both; smoke: eager)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help="comma list of infer (encode/decode), train (model-only step), stages (LPIPS and "
                        "stage-2 steps), baselines (SD VAE, CogVideoX VAE)")
    p.add_argument("--only", nargs="+", default=None,
                   help="ViTok rows to run, e.g. S-B/16@256 (their baselines follow)")
    p.add_argument("--batch", action="append", default=[], help="ROW=N encode/decode batch, e.g. S-B/16@256=256")
    p.add_argument("--train-batch", action="append", default=[], help="ROW=N training batch")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                   help="precision the models run in (default bf16; smoke fp32, bf16 there checks the bf16 paths)")
    p.add_argument("--conv-layout", choices=("channels_last", "contiguous"), default="contiguous",
                   help="memory layout of the LPIPS and discriminator inputs on the GPU (the library's default: "
                        "contiguous, measured faster than channels_last; see NOTES.md)")
    p.add_argument("--lpips-fraction", type=float, default=1.0,
                   help="loss.lpips_fraction for the training steps (share of the batch LPIPS scores)")
    p.add_argument("--disc-fraction", type=float, default=1.0,
                   help="loss.disc_fraction for the stage-2 step (share of the batch the discriminator sees)")
    p.add_argument("--residual-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="ViTok's residual stream under autocast in the training steps (model.residual_dtype)")
    p.add_argument("--kernels", choices=("torch", "triton"), default="torch",
                   help="ViTok rows' model.kernels (triton: model/kernels.py's fused kernels, where Triton runs)")
    p.add_argument("--disc-channels", type=int, default=0,
                   help="stage 2: the discriminator's base channels (loss.disc_channels; 0 = shipped default)")
    p.add_argument("--compile-scope", choices=("blocks", "stacks"), default="blocks",
                   help="compiled mode: ViTok.compile_blocks (each block) or compile_stacks (each Transformer)")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode for compile_blocks, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--warmup", type=int, default=None,
                   help="calls before timing, the first included (default 2; smoke 1)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed groups; the median is reported (default 3; smoke 2)")
    p.add_argument("--target-s", type=float, default=None, help="seconds per timed group (default 0.1; smoke 0)")
    args = p.parse_args(argv)
    args.parts = tuple(s for s in args.parts.split(",") if s)
    if set(args.parts) - set(PARTS):
        raise SystemExit(f"--parts {sorted(set(args.parts) - set(PARTS))}: unknown; parts are {PARTS}")
    args.modes = tuple(s for s in (args.modes or ("eager" if args.smoke else ",".join(MODES))).split(",") if s)
    if set(args.modes) - set(MODES) or not args.modes:
        raise SystemExit(f"--modes {args.modes}: choose from {MODES}")
    defaults = (("warmup", 2, 1), ("repeats", 3, 2), ("target_s", 0.1, 0.0), ("dtype", "bf16", "fp32"))
    for name, full, smoke in defaults:
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.warmup < 1 or args.repeats < 1 or args.target_s < 0:
        raise SystemExit("--warmup and --repeats must be >= 1 and --target-s >= 0")
    if not (0 < args.lpips_fraction <= 1 and 0 < args.disc_fraction <= 1):
        raise SystemExit("--lpips-fraction and --disc-fraction must be in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(0)
    if args.smoke or args.count_only:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cudnn.benchmark = True  # the conv VAEs' best algorithms, as their users would run them
    else:
        raise SystemExit("no CUDA device: run with --smoke (tiny models on the CPU) or --count-only")
    amp_dtype = torch.bfloat16 if args.dtype == "bf16" else None
    diffusers, skipped = load_diffusers() if "baselines" in args.parts else (None, "--parts has no 'baselines'")
    specs = [s for s in select_specs(args) if s.kind == "vitok" or diffusers is not None]
    steps = STEPS if "stages" in args.parts or args.count_only else ("model",)

    result = {
        "meta": {"torch": torch.__version__, "python": sys.version.split()[0], "smoke": args.smoke,
                 "count_only": args.count_only,
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
                 "cudnn_benchmark": torch.backends.cudnn.benchmark,
                 "diffusers": getattr(diffusers, "__version__", None), "baselines_skipped": skipped,
                 "args": dict(vars(args))},
        "ceilings": {}, "rows": [], "ratios": [], "errors": [],
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["meta"]["wall_s"] = time.perf_counter() - started
        tmp = out_path.with_suffix(out_path.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str))
        tmp.replace(out_path)

    timer = Timer(device, args.warmup, args.repeats, args.target_s)
    if args.count_only:
        result["ceilings"] = {"matmul_tflops": NOMINAL_TFLOPS, "copy_tbps": NOMINAL_TBPS, "matmul_n": None,
                              "matmul_dtype": "nominal H100 bf16"}
    else:
        result["ceilings"] = measure_ceilings(amp_dtype or torch.float32, timer)
    c = result["ceilings"]
    print(json.dumps({"device": result["meta"]["device"], **c}), flush=True)
    ctx = Context(device, amp_dtype, timer, c["matmul_tflops"], args.parts, strict=args.smoke, errors=result["errors"],
                  channels_last=args.conv_layout == "channels_last", lpips_fraction=args.lpips_fraction,
                  disc_fraction=args.disc_fraction, residual_dtype=getattr(torch, args.residual_dtype),
                  kernels=args.kernels, compile_scope=args.compile_scope, disc_channels=args.disc_channels)

    for spec in specs:
        print(f"{spec.key}: counting", flush=True)
        row = {"key": spec.key, "kind": spec.kind, "name": spec.name, "baseline": spec.baseline,
               "sample_shape": list(spec.shape), "frames_per_sample": spec.frames,
               "batch": spec.batch, "train_batch": spec.train_batch, "modes": {}}
        result["rows"].append(row)
        row["counts"] = ctx.attempt(f"{spec.key} counting", count_spec, spec, diffusers,
                                    steps if spec.kind == "vitok" else ("model",))
        if "error" not in row["counts"]:
            row["floors"] = floors(row["counts"], spec.batch, c["matmul_tflops"], c["copy_tbps"])
    save()

    # Mode by mode over all rows: every eager number (and so the comparison) is in the JSON
    # before the first compile starts.
    for mode in () if args.count_only else args.modes:
        for spec, row in zip(specs, result["rows"], strict=True):
            if "error" in row["counts"]:
                continue
            print(f"{spec.key}: {mode}", flush=True)
            measured = ctx.attempt(f"{spec.key} {mode}", measure_mode, spec, mode, row["counts"], ctx, diffusers,
                                   args.compile_mode)
            row["modes"][mode] = measured
            release(device)
            result["ratios"] = ratios(result["rows"])
            save()

    print_counts(result)
    if not args.count_only:
        print_table(result)
    save()
    print(f"\nwrote {out_path} ({time.perf_counter() - started:.0f} s in all)")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
