"""diffusers interop: a ViTok tokenizer behind the interface diffusers uses from AutoencoderKL.

    from vitok.integrations.diffusers import AutoencoderViTok
    vae = AutoencoderViTok.from_vitok("ckpt/")            # a vitok folder, a ViTok, or "vitok-v2/NAME"
    latents = vae.encode(x).latent_dist.sample()          # B×c×h×w: the token grid, channels first
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    x_hat = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample

Layout. ViTok's latents are B×L×c tokens over a row-major (h, w) grid, h = H/p, w = W/p; the
adapter presents them as diffusers' spatial latents B×c×h×w, token i·w + j at [:, :, i, j]
(video tokenizers: B×c×t×h×w from B×3×T×H×W). tokens_to_spatial / spatial_to_tokens convert.

Normalisation. diffusers pipelines read one of three conventions from vae.config:
    z * scaling_factor                            (Stable Diffusion, DiT, PixArt)
    (z - shift_factor) * scaling_factor           (SD3, Flux, their training scripts)
    (z - latents_mean) * scaling_factor / latents_std   (SDXL-style, when latents_mean is set)
A tokenizer's LatentStats hold both a global (shift, scale) pair and per-channel mean/std; a config
that filled all four fields would normalise differently under the first two conventions than under
the third. So the adapter fills them for one normalisation, `normalisation=`:
    "global"  (default) scaling_factor, shift_factor = the statistics'; latents_mean/std None
    "channel" latents_mean/std = the per-channel statistics; scaling_factor 1.0, shift_factor 0.0
    "none"    scaling_factor 1.0, shift_factor 0.0, latents_mean/std None
shift_factor is always a number (0.0 rather than None), so `(z - shift_factor) * scaling_factor`
always runs. A tokenizer without statistics gets 1.0 and 0.0 (latents as they come) and a warning;
compute them with `vitok stats FOLDER --data DIR`. Pipelines that ignore shift_factor (DiT, SD)
decode z / scaling_factor: a denoiser trained on (z - shift) * scale needs a pipeline that adds it
back (a ViTok v2 tokenizer's shift is about 0: its LayerNorm bottleneck centres every token).

Exactness. decode(encode(x).latent_dist.mode()) is vitok's tok.decode(tok.encode(x).mode()), the
same numbers; latent_dist.sample(generator) draws the same noise as vitok's posterior.sample.
The adapter wraps the ViTok it is given (vae.tokenizer), sharing its weights, and returns what
vitok returns: float32 latents and pixels.

Saving. vae.save_pretrained(dir) writes diffusers' format (config.json with the ViTok config and
the statistics, diffusion_pytorch_model.safetensors), which AutoencoderViTok.from_pretrained and
DiffusionPipeline.from_pretrained read back; vae.tokenizer.save_pretrained(dir) writes vitok's own,
which from_pretrained (or from_vitok) also reads.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch

from ..model.checks import check_pixels
from ..model.distributions import DeterministicLatent, DiagonalGaussian
from ..model.latent_stats import LatentStats
from ..model.tokenizer import ViTok
from ..model.variants import ViTokConfig


class MissingDiffusersError(ImportError, ValueError):
    """diffusers is not installed (or too old): an ImportError, and a ValueError like vitok's other errors."""


try:
    import diffusers
except ImportError:
    raise MissingDiffusersError("vitok.integrations.diffusers needs diffusers, which is not installed: "
                                "pip install 'vitok[diffusers]'") from None
try:
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput
    from diffusers.utils.accelerate_utils import apply_forward_hook
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as err:
    raise MissingDiffusersError(f"vitok.integrations.diffusers needs diffusers >= 0.30; the installed diffusers "
                                f"{getattr(diffusers, '__version__', '?')} lacks a part of it ({err}): "
                                f"pip install -U 'vitok[diffusers]'") from None

__all__ = ["AutoencoderViTok", "MissingDiffusersError", "ViTokLatentDistribution", "spatial_to_tokens",
           "tokens_to_spatial"]

NORMALISATIONS = ("global", "channel", "none")
# The config fields a normalisation fills; explicit values override what it would put there.
NORMALISATION_FIELDS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")
VITOK_WEIGHTS = "model.safetensors"  # vitok's own checkpoint folder: config.json + this file


# ---- layout -----------------------------------------------------------------------------------

def tokens_to_spatial(tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """vitok's B×L×c tokens over a row-major grid (h, w) or (t, h, w) -> diffusers' B×c×h×w (B×c×t×h×w)."""
    if tokens.dim() != 3 or math.prod(grid) != tokens.shape[1]:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} are not B×L×c over a grid {tuple(grid)} "
                         f"of {math.prod(grid)} tokens")
    B, _, c = tokens.shape
    return tokens.movedim(-1, 1).reshape(B, c, *grid).contiguous()


def spatial_to_tokens(latents: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """diffusers' B×c×h×w (or B×c×t×h×w) -> (vitok's B×L×c tokens, the grid (h, w) or (t, h, w))."""
    if latents.dim() not in (4, 5):
        raise ValueError(f"expected spatial latents B×c×h×w (video: B×c×t×h×w), "
                         f"got shape {tuple(latents.shape)}")
    return latents.flatten(2).transpose(1, 2).contiguous(), tuple(latents.shape[2:])


# ---- the posterior ----------------------------------------------------------------------------

class ViTokLatentDistribution(DiagonalGaussianDistribution):
    """A ViTok posterior as diffusers' DiagonalGaussianDistribution over spatial latents B×c×h×w.

    mean, logvar, std, var are B×c×h×w (B×c×t×h×w); sample(generator) draws in vitok's token layout
    (the same numbers as vitok's posterior.sample(generator)) and reshapes; kl() and nll() sum over
    every axis but the batch. `posterior` is vitok's own object over B×L×c.

    A ViTok v2 tokenizer's latent is deterministic (`deterministic` True): std and var are zero,
    sample() and mode() are the latent, kl() and nll() are zeros, as in diffusers; logvar holds the
    tokenizer's floor (config.logvar_min) rather than -inf, so arithmetic on it stays finite.
    """

    def __init__(self, posterior: DiagonalGaussian | DeterministicLatent, grid: tuple[int, ...],
                 logvar_floor: float = -30.0) -> None:  # no super().__init__: it would re-clamp and copy
        self.posterior = posterior
        self.grid = tuple(grid)
        self.deterministic = bool(posterior.deterministic)
        self.mean = tokens_to_spatial(posterior.mean, self.grid)
        if self.deterministic:
            self.logvar = torch.full_like(self.mean, logvar_floor)
            self.std = self.var = torch.zeros_like(self.mean)
        else:
            self.logvar = tokens_to_spatial(posterior.logvar, self.grid)
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    @property
    def parameters(self) -> torch.Tensor:
        """(mean, logvar) stacked on the channel axis, B×2c×h×w: what DiagonalGaussianDistribution is built from."""
        return torch.cat([self.mean, self.logvar], dim=1)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """mean + std · noise; generator as diffusers takes it (one, or a list of one per sample, on any device)."""
        if self.deterministic:
            return self.mean
        mean, std = self.posterior.mean, self.posterior.std  # B×L×c
        noise = randn_tensor(tuple(mean.shape), generator=generator, device=mean.device, dtype=mean.dtype)
        return tokens_to_spatial(mean + std * noise, self.grid)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL(self || other), other None meaning N(0, I): shape B, summed over tokens and channels."""
        if self.deterministic:
            return self.mean.new_zeros(self.mean.shape[0])
        if other is None:
            return self.posterior.kl()  # vitok's own, in float32
        terms = (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar
        return 0.5 * terms.flatten(1).sum(1)

    def nll(self, sample: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
        """Negative log-likelihood of `sample`, summed over `dims` (default: every axis but the batch)."""
        if self.deterministic:
            return self.mean.new_zeros(self.mean.shape[0])
        dims = tuple(range(1, self.mean.dim())) if dims is None else tuple(dims)
        terms = math.log(2.0 * math.pi) + self.logvar + (sample - self.mean).pow(2) / self.var
        return 0.5 * terms.sum(dim=dims)


# ---- the model --------------------------------------------------------------------------------

class AutoencoderViTok(ModelMixin, ConfigMixin):
    """A ViTok tokenizer with AutoencoderKL's interface, for diffusers pipelines and training scripts.

    Build it with from_vitok(tok_or_folder) or from_pretrained(folder); __init__ (what diffusers'
    from_config calls) builds a randomly initialised ViTok from `vitok_config`.

    Config (vae.config): vitok_config (ViTokConfig.to_dict()), latent_stats (LatentStats.to_dict()
    or None), normalisation, scaling_factor, shift_factor, latents_mean, latents_std (see the module
    docstring; explicit values override what `normalisation` would put there), in_channels and
    out_channels 3, latent_channels c, sample_size (the nominal image size), patch_size p,
    temporal_patch q, block_out_channels (only its length means anything: 2**(len - 1) = p, the rule
    by which most pipelines find their vae_scale_factor; None when p is not a power of two) and
    force_upcast (fp16 pipelines run the tokenizer in float32).

    encode(x).latent_dist and decode(z).sample as AutoencoderKL's; forward(sample) reconstructs;
    enable_slicing() runs a batch one sample at a time; check_inputs = False skips vitok's data
    checks (they synchronise with the GPU) in hot loops.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        vitok_config: dict | None = None,
        latent_stats: dict | None = None,
        normalisation: str = "global",
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int | None = None,
        sample_size: int | None = None,
        patch_size: int | None = None,
        temporal_patch: int | None = None,
        block_out_channels: list[int] | None = None,
        force_upcast: bool = True,
    ) -> None:
        super().__init__()
        if vitok_config is None:
            raise ValueError("AutoencoderViTok needs vitok_config (a ViTokConfig.to_dict()); build one from a "
                             "tokenizer with AutoencoderViTok.from_vitok(tok_or_folder)")
        config = vitok_config if isinstance(vitok_config, ViTokConfig) else ViTokConfig.from_dict(dict(vitok_config))
        stats = None
        if latent_stats is not None:
            stats = latent_stats if isinstance(latent_stats, LatentStats) else \
                LatentStats.from_dict(dict(latent_stats), "AutoencoderViTok config: latent_stats")
            if stats.channels != config.channels:
                raise ValueError(f"latent_stats have {stats.channels} channels, the tokenizer {config.channels}: "
                                 f"they belong to another tokenizer; recompute them with `vitok stats`")
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {list(NORMALISATIONS)}, got {normalisation!r}")
        derived = _derived_fields(config)
        given = dict(in_channels=in_channels, out_channels=out_channels, latent_channels=latent_channels,
                     sample_size=sample_size, patch_size=patch_size, temporal_patch=temporal_patch,
                     block_out_channels=block_out_channels)
        for key, value in given.items():
            if value is not None and _plain(value) != derived[key]:
                raise ValueError(f"config field {key}={value!r} contradicts the tokenizer, whose value is "
                                 f"{derived[key]!r}; leave it out (it follows from vitok_config)")
        explicit = dict(scaling_factor=scaling_factor, shift_factor=shift_factor, latents_mean=latents_mean,
                        latents_std=latents_std)
        factors = _normalisation_fields(stats, normalisation, config.channels, explicit)
        self.register_to_config(vitok_config=config.to_dict(), latent_stats=stats.to_dict() if stats else None,
                                force_upcast=bool(force_upcast), **derived, **factors)

        self.tokenizer = ViTok(config)
        self.tokenizer.latent_stats = stats
        self.use_slicing = False
        self.use_tiling = False  # AutoencoderKL's attribute: enable_tiling() tiles every sample
        self.tiling = None  # the Tiling of enable_tiling; without it the tokenizer's "auto" rule applies
        self.check_inputs = True

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_vitok(cls, tokenizer: ViTok | str | Path, *, normalisation: str = "global",
                   device: torch.device | str = "cpu", torch_dtype: torch.dtype | None = None,
                   revision: str | None = None, **overrides) -> "AutoencoderViTok":
        """Wrap a ViTok (shared, not copied), or load one: a vitok folder or a released name ("vitok-v2/NAME").

        `device`, `revision` apply to loading; `torch_dtype` casts the weights; `overrides` set any of
        scaling_factor, shift_factor, latents_mean, latents_std explicitly.
        """
        unknown = sorted(set(overrides) - set(NORMALISATION_FIELDS))
        if unknown:
            raise ValueError(f"from_vitok got unexpected arguments {unknown}; it takes normalisation, device, "
                             f"torch_dtype, revision and {list(NORMALISATION_FIELDS)}")
        if isinstance(tokenizer, (str, Path)):
            tokenizer = ViTok.from_pretrained(tokenizer, device=device, revision=revision)
        elif not isinstance(tokenizer, ViTok):
            raise ValueError(f"from_vitok takes a vitok.ViTok, a checkpoint folder or a released name, got "
                             f"{type(tokenizer).__name__}")
        stats = tokenizer.latent_stats
        # The placeholder tokenizer is replaced at once: allocate nothing. Warnings (no statistics)
        # are re-issued to point at the caller's line rather than at this one.
        with torch.device("meta"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vae = cls(vitok_config=tokenizer.config.to_dict(), latent_stats=stats.to_dict() if stats else None,
                      normalisation=normalisation, **overrides)
        for caught_warning in caught:
            warnings.warn(caught_warning.message, caught_warning.category, stacklevel=2)
        vae.tokenizer = tokenizer
        vae.train(tokenizer.training)
        if torch_dtype is not None:  # the tokenizer's own .to: ModelMixin.to warns about every dtype cast
            vae.tokenizer.to(torch_dtype)
        return vae

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "AutoencoderViTok":
        """A folder saved by save_pretrained (diffusers' format), or a vitok checkpoint folder / released name.

        A diffusers-format folder takes diffusers' keyword arguments (torch_dtype, subfolder, ...), and
        normalisation= to re-derive the normalisation fields; a vitok one takes subfolder, torch_dtype,
        device_map (one device), revision, normalisation and the explicit normalisation fields.
        """
        path = pretrained_model_name_or_path
        subfolder = kwargs.get("subfolder")
        if _is_vitok_checkpoint(path, subfolder):
            kwargs.pop("subfolder", None)
            device_map, device = kwargs.pop("device_map", None), kwargs.pop("device", None)
            device = device_map if device_map is not None else device if device is not None else "cpu"
            if not isinstance(device, (str, torch.device)):
                raise ValueError(f"a vitok checkpoint loads onto one device; got device_map={device!r}")
            options = {k: kwargs.pop(k) for k in ("normalisation", "torch_dtype", "revision", *NORMALISATION_FIELDS)
                       if k in kwargs}
            if kwargs:
                raise ValueError(f"{path} is a vitok checkpoint; from_pretrained takes subfolder, device_map, "
                                 f"torch_dtype, revision, normalisation and {list(NORMALISATION_FIELDS)} for it, "
                                 f"not {sorted(kwargs)}")
            source = Path(path, subfolder) if subfolder else path
            return cls.from_vitok(source, device=device, **options)
        if "normalisation" in kwargs:  # the saved factors belong to the saved normalisation: derive them anew
            for key in NORMALISATION_FIELDS:
                kwargs.setdefault(key, None)
        return super().from_pretrained(path, **kwargs)

    # ---- AutoencoderKL's interface ------------------------------------------------------------

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Pixels B×3×H×W in [-1, 1] (video B×3×T×H×W), H and W multiples of p -> latent_dist over B×c×h×w."""
        grid = self._grid_of_pixels(x)
        tok = self.tokenizer
        if self.use_slicing and x.shape[0] > 1:
            parts = [tok.encode(one, check=self.check_inputs, tiling=self._tiling()) for one in x.split(1)]
            mean = torch.cat([part.mean for part in parts])
            posterior = DeterministicLatent(mean) if parts[0].deterministic else \
                DiagonalGaussian(mean, torch.cat([part.logvar for part in parts]))
        else:
            posterior = tok.encode(x, check=self.check_inputs, tiling=self._tiling())
        dist = ViTokLatentDistribution(posterior, grid, tok.config.logvar_min)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True,
               generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        """Latents B×c×h×w (video B×c×t×h×w) -> pixels B×3×(h·p)×(w·p), float32, about [-1, 1].

        `generator` is accepted for AutoencoderKL's signature; decoding draws nothing.
        """
        tokens, grid = self._tokens_of_latents(z)
        config = self.tokenizer.config
        steps = (config.temporal_patch, config.patch_size, config.patch_size)[-len(grid):]
        size = tuple(g * s for g, s in zip(grid, steps))
        if self.use_slicing and tokens.shape[0] > 1:
            pixels = torch.cat([self.tokenizer.decode(one, size=size, check=self.check_inputs, tiling=self._tiling())
                                for one in tokens.split(1)])
        else:
            pixels = self.tokenizer.decode(tokens, size=size, check=self.check_inputs, tiling=self._tiling())
        return DecoderOutput(sample=pixels) if return_dict else (pixels,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        """Encode, then decode the posterior's mode (or, sample_posterior=True, a draw)."""
        dist = self.encode(sample).latent_dist
        z = dist.sample(generator=generator) if sample_posterior else dist.mode()
        return self.decode(z, return_dict=return_dict)

    def enable_slicing(self) -> None:
        """Encode and decode a batch one sample at a time: less peak memory, the same results up to float rounding."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, tile_size: int | None = None, overlap: int | None = None) -> None:
        """Encode and decode every sample in overlapping tiles (vitok's model/tiling.py: blended in latent space
        for encode, pixel space for decode), of the tokenizer's training size unless `tile_size` (pixels, a
        multiple of p) says otherwise. Memory is bounded by the tile; the result differs from untiled
        attention (each tile sees only its own pixels). Without it, the tokenizer tiles only frames above
        its budget (tokenizer.tile_budget, 16x the nominal tokens)."""
        from ..model.tiling import Tiling

        config = self.tokenizer.config
        self.tiling = Tiling(tile_size=tile_size or config.image_size, overlap=overlap,
                             chunk=config.frames if config.is_video else None)
        self.use_tiling = True

    def disable_tiling(self) -> None:
        self.use_tiling = False
        self.tiling = None

    def _tiling(self):
        return self.tiling if self.use_tiling and self.tiling is not None else "auto"

    def enable_gradient_checkpointing(self, gradient_checkpointing_func=None) -> None:
        """vitok's own block checkpointing (torch.utils.checkpoint); a custom function is not supported."""
        if gradient_checkpointing_func is not None:
            raise ValueError("AutoencoderViTok checkpoints with vitok's own torch.utils.checkpoint call; "
                             "leave gradient_checkpointing_func out")
        self.tokenizer.set_grad_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:
        self.tokenizer.set_grad_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(self.tokenizer.encoder.grad_checkpointing or self.tokenizer.decoder.grad_checkpointing)

    @property
    def spatial_compression_ratio(self) -> int:
        """Pixels per latent along height and width: the patch size p."""
        return self.tokenizer.config.patch_size

    @property
    def temporal_compression_ratio(self) -> int:
        """Frames per latent step (video tokenizers; 1 for images)."""
        return self.tokenizer.config.temporal_patch

    # ---- shapes -------------------------------------------------------------------------------

    def _grid_of_pixels(self, x: torch.Tensor) -> tuple[int, ...]:
        """The token grid of a pixel batch; H, W (and T) must be whole patches, for every architecture
        (a v2 tokenizer would pad, and the decoded latents would come back larger than x)."""
        config = self.tokenizer.config
        rank = 5 if config.is_video else 4
        if not isinstance(x, torch.Tensor) or x.dim() != rank:
            check_pixels(x, config)  # raises, with vitok's message for the wrong type or rank
            raise ValueError(f"expected a {rank}-D pixel tensor, got {getattr(x, 'shape', type(x).__name__)}")
        steps = (config.temporal_patch, config.patch_size, config.patch_size)[-(rank - 2):]
        sizes = tuple(x.shape[2:])
        names = ("frames", "height", "width")[-(rank - 2):]
        bad = [f"{name} {n} is not a positive multiple of {k}" for name, n, k in zip(names, sizes, steps)
               if n <= 0 or n % k]
        if bad:
            nearest = [f"{name} {max(k, n // k * k)} or {(n // k + 1) * k}" for name, n, k in zip(names, sizes, steps)
                       if n <= 0 or n % k]
            raise ValueError(f"input shape {tuple(x.shape)} does not fit the tokenizer's patch "
                             f"{'x'.join(map(str, steps))}: {'; '.join(bad)}; crop or resize to whole patches "
                             f"({', '.join(nearest)})")
        return tuple(n // k for n, k in zip(sizes, steps))

    def _tokens_of_latents(self, z: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        config = self.tokenizer.config
        rank = 5 if config.is_video else 4
        want = "B×c×t×h×w" if config.is_video else "B×c×h×w"
        if not isinstance(z, torch.Tensor):
            raise ValueError(f"expected latents as a torch.Tensor {want}, got {type(z).__name__}")
        if z.dim() != rank or z.shape[1] != config.channels:
            hint = ""
            if z.dim() == 3 and z.shape[-1] == config.channels:
                hint = ("; these look like vitok's B×L×c tokens: decode them with vae.tokenizer.decode, or reshape "
                        "with vitok.integrations.diffusers.tokens_to_spatial(z, grid)")
            elif z.dim() == rank and z.shape[-1] == config.channels:
                hint = "; the channels look last: move them to axis 1"
            raise ValueError(f"expected latents {want} with c={config.channels} (diffusers' channels-first "
                             f"layout), got shape {tuple(z.shape)}{hint}")
        return spatial_to_tokens(z)


def _plain(value):
    """JSON's view of a config value: tuples as lists."""
    return list(value) if isinstance(value, tuple) else value


def _derived_fields(config: ViTokConfig) -> dict:
    p = config.patch_size
    levels = p.bit_length() - 1 if p & (p - 1) == 0 else None  # p = 2**levels
    return dict(in_channels=3, out_channels=3, latent_channels=config.channels, sample_size=config.image_size,
                patch_size=p, temporal_patch=config.temporal_patch,
                block_out_channels=[config.channels] * (levels + 1) if levels is not None else None)


def _normalisation_fields(stats: LatentStats | None, normalisation: str, channels: int, explicit: dict) -> dict:
    """scaling_factor, shift_factor, latents_mean, latents_std for a normalisation; explicit values win."""
    fields = dict(scaling_factor=1.0, shift_factor=0.0, latents_mean=None, latents_std=None)
    if stats is not None and normalisation == "global":
        fields.update(scaling_factor=float(stats.scaling_factor), shift_factor=float(stats.shift_factor))
    elif stats is not None and normalisation == "channel":
        fields.update(latents_mean=[float(v) for v in stats.mean], latents_std=[float(v) for v in stats.std])
    elif stats is None and normalisation != "none" and all(v is None for v in explicit.values()):
        warnings.warn("this tokenizer has no latent statistics, so AutoencoderViTok's config has scaling_factor=1.0 "
                      "and shift_factor=0.0 (latents as they come): compute them once with `vitok stats "
                      "MODEL_FOLDER --data DIR`, or pass normalisation='none' to say this is intended",
                      UserWarning, stacklevel=4)
    fields.update({k: _plain(v) for k, v in explicit.items() if v is not None})

    for key in ("scaling_factor", "shift_factor"):
        value = fields[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        fields[key] = float(value)
    if fields["scaling_factor"] <= 0:
        raise ValueError(f"scaling_factor must be positive, got {fields['scaling_factor']}")
    if (fields["latents_mean"] is None) != (fields["latents_std"] is None):
        raise ValueError("latents_mean and latents_std go together: give both or neither")
    for key in ("latents_mean", "latents_std"):
        values = fields[key]
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != channels or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"{key} must be {channels} finite numbers (one per latent channel), got {values!r}")
        if key == "latents_std" and min(values) <= 0:
            raise ValueError(f"latents_std must be positive, got {values}")
        fields[key] = [float(v) for v in values]
    return fields


def _is_vitok_checkpoint(path, subfolder: str | None) -> bool:
    """Whether from_pretrained's argument names vitok's own format rather than diffusers'."""
    from ..model import vitok_v2

    if isinstance(path, str) and path.startswith(vitok_v2.PREFIX) and not Path(path).exists():
        return True  # a released name
    if not isinstance(path, (str, Path)):
        return False
    folder = Path(path, subfolder) if subfolder else Path(path)
    config = folder / "config.json"
    if not (folder / VITOK_WEIGHTS).is_file() or not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False  # let the loader that owns the folder report it
    return isinstance(data, dict) and "_class_name" not in data
