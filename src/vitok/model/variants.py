"""ViTok configuration: the size table, the "S-B/16" naming scheme and the config dataclass."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from .blocks import swiglu_hidden, v2_swiglu_hidden

# (width, depth, heads), as the ViTok authors define them. S is a shallow B, not ViT-S.
# T (tiny) is ours, not the paper's: for CPU demos, tests and quick sweeps.
SIZES: dict[str, tuple[int, int, int]] = {
    "T": (192, 4, 3),
    "S": (768, 6, 12),
    "B": (768, 12, 12),
    "L": (1152, 24, 16),
    "H": (1296, 32, 16),
}

# The variants the paper studies; any encoder/decoder/patch combination parses.
PAPER_VARIANTS = ("S-B/16", "S-L/16", "L-B/16", "S-B/8", "S-B/32", "S-B/4x8", "S-B/4x16")

# Upper bounds that no real tokenizer comes near (the paper's largest, H, is 1296 wide and 32 deep) and
# that refuse a typo such as 10**9 before anything is allocated. Patch sizes and heads are bounded
# through image_size, frames and the widths, which they must divide.
MAX_SIZES: dict[str, int] = {
    "encoder_width": 65536, "decoder_width": 65536, "encoder_depth": 1024, "decoder_depth": 1024,
    "channels": 65536, "image_size": 16384, "frames": 16384,
}
MAX_PARAMS = 50_000_000_000  # 200 GB of float32 weights
# exp(logvar) must stay finite (and above zero) in float32: |logvar| <= 80.
LOGVAR_BOUND = 80.0
_POSITIVE = ("encoder_width", "encoder_depth", "encoder_heads", "decoder_width", "decoder_depth",
             "decoder_heads", "patch_size", "temporal_patch", "channels", "image_size", "frames")

# "vitok": the paper's model (sequential blocks, a final norm per stack, a Gaussian bottleneck).
# "vitok-v2": the authors' later release (parallel blocks with LayerScale, no final norm, a
# deterministic LayerNorm bottleneck, a bias per output pixel); see model/vitok_v2.py.
ARCHITECTURES = ("vitok", "vitok-v2")

_NAME = re.compile(r"^(?P<enc>[A-Z])-(?P<dec>[A-Z])/(?:(?P<q>\d+)x)?(?P<p>\d+)$")


@dataclass
class ViTokConfig:
    """Every number that defines a ViTok model; a JSON copy travels with saved weights."""

    encoder_width: int = 768
    encoder_depth: int = 6
    encoder_heads: int = 12
    decoder_width: int = 768
    decoder_depth: int = 12
    decoder_heads: int = 12
    patch_size: int = 16  # p: spatial tubelet size
    temporal_patch: int = 1  # q: temporal tubelet size (1 for images)
    channels: int = 16  # c: latent channels per token
    image_size: int = 256  # nominal H = W; any multiple of p is accepted at run time
    frames: int = 1  # nominal T; 1 means an image model taking B×3×H×W
    qk_norm: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    # Log-variance clamp keeps exp(logvar) finite in bf16 and the KL bounded early in training.
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    architecture: str = "vitok"  # one of ARCHITECTURES
    name: str = ""  # "S-B/16" when built from a name; informational only

    def __post_init__(self) -> None:
        self.validate()

    @property
    def is_video(self) -> bool:
        """A video model takes B×3×T×H×W; an image model takes B×3×H×W."""
        return self.frames > 1 or self.temporal_patch > 1

    @property
    def grid(self) -> tuple[int, ...]:
        """Token grid at the nominal size: (h, w) for images, (t, h, w) for video."""
        hw = (self.image_size // self.patch_size,) * 2
        return (self.frames // self.temporal_patch, *hw) if self.is_video else hw

    @property
    def num_tokens(self) -> int:
        """L at the nominal size."""
        n = 1
        for g in self.grid:
            n *= g
        return n

    @property
    def is_v2(self) -> bool:
        """The authors' v2 layout (parallel blocks, deterministic latent); see ARCHITECTURES."""
        return self.architecture == "vitok-v2"

    @property
    def tubelet_pixels(self) -> int:
        """Values per token in pixel space: 3·q·p·p."""
        return 3 * self.temporal_patch * self.patch_size ** 2

    def mlp_hidden(self, width: int) -> int:
        """The SwiGLU hidden width of a stack this wide, by the architecture's rounding rule."""
        return v2_swiglu_hidden(width) if self.is_v2 else swiglu_hidden(width)

    @property
    def num_params(self) -> int:
        """Exact parameter count, from the sizes alone (ViTok.num_params()["total"] of a built model)."""
        def stack(width: int, depth: int, heads: int) -> int:
            qk = 2 * (width // heads) if self.qk_norm else 0
            # v2: one norm and a LayerScale gamma per block, no final norm; vitok: two norms per block.
            block = 2 * width + 4 * width * width + 3 * width * self.mlp_hidden(width) + qk
            return depth * block + (0 if self.is_v2 else width)
        tubelet = self.tubelet_pixels
        latent_out = self.channels if self.is_v2 else 2 * self.channels  # z, or (mean, logvar)
        encoder = tubelet * self.encoder_width + self.encoder_width \
            + stack(self.encoder_width, self.encoder_depth, self.encoder_heads) \
            + (self.encoder_width + 1) * latent_out
        unembed_bias = tubelet if self.is_v2 else 3
        decoder = (self.channels + 1) * self.decoder_width \
            + stack(self.decoder_width, self.decoder_depth, self.decoder_heads) + self.decoder_width * tubelet \
            + unembed_bias
        return encoder + decoder

    def validate(self) -> None:
        """Reject impossible configurations with the fix in the message."""
        self._check_types()
        self._check_ranges()
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"config field 'architecture' is {self.architecture!r}; use one of {list(ARCHITECTURES)}")
        for part in ("encoder", "decoder"):
            width, heads = getattr(self, f"{part}_width"), getattr(self, f"{part}_heads")
            if width % heads:
                raise ValueError(f"{part}_width {width} is not divisible by {part}_heads {heads}; "
                                 f"choose heads that divide the width")
            head_dim = width // heads
            axes = 3 if self.is_video else 2
            if head_dim // 2 < axes:
                raise ValueError(f"{part} head width {head_dim} is too small for rotary embedding over "
                                 f"{axes} axes; use fewer heads")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}; "
                             f"use {_nearest_multiples(self.image_size, self.patch_size)}")
        if self.frames % self.temporal_patch:
            raise ValueError(f"frames {self.frames} is not divisible by temporal_patch {self.temporal_patch}; "
                             f"use {_nearest_multiples(self.frames, self.temporal_patch)}")
        if self.logvar_min >= self.logvar_max:
            raise ValueError(f"logvar_min {self.logvar_min} must be below logvar_max {self.logvar_max}")
        # Last, once every size is known to be sane: the count is cheap arithmetic, nothing is built.
        if self.num_params > MAX_PARAMS:
            raise ValueError(f"this config describes {self.num_params:.3g} parameters, above vitok's limit of "
                             f"{MAX_PARAMS:.3g} ({4 * MAX_PARAMS / 1e9:.0f} GB in float32); check the widths and "
                             f"depths for a typo")

    def _check_types(self) -> None:
        """Every field has its declared type (bools are not ints; ints are accepted as floats)."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = field.type if isinstance(field.type, str) else field.type.__name__
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"config field {field.name!r} must be an integer, got {value!r}")
            if kind == "bool" and not isinstance(value, bool):
                raise ValueError(f"config field {field.name!r} must be true or false, got {value!r}")
            if kind == "str" and not isinstance(value, str):
                raise ValueError(f"config field {field.name!r} must be a string, got {value!r}")
            if kind == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"config field {field.name!r} must be a number, got {value!r}")
                if not math.isfinite(value):
                    raise ValueError(f"config field {field.name!r} must be a finite number, got {value!r}")
                setattr(self, field.name, float(value))  # JSON's 10000 and 10000.0 are one config

    def _check_ranges(self) -> None:
        """Sizes in [1, limit], floats in their meaningful range; each message names field, value and range."""
        for key in _POSITIVE:
            value, limit = getattr(self, key), MAX_SIZES.get(key)
            if value < 1:
                raise ValueError(f"config field {key!r} must be >= 1, got {value}")
            if limit is not None and value > limit:
                raise ValueError(f"config field {key!r} is {value}, above vitok's limit of {limit}; "
                                 f"this looks like a typo (use a value in [1, {limit}])")
        if not self.rope_theta > 1.0:
            raise ValueError(f"config field 'rope_theta' must be > 1 (the base of the rotary frequency ladder; "
                             f"usually 10000), got {self.rope_theta}")
        if not 0.0 < self.norm_eps < 1.0:
            raise ValueError(f"config field 'norm_eps' must be in (0, 1) (usually 1e-6), got {self.norm_eps}")
        for key in ("logvar_min", "logvar_max"):
            if not -LOGVAR_BOUND <= getattr(self, key) <= LOGVAR_BOUND:
                raise ValueError(f"config field {key!r} must be in [-{LOGVAR_BOUND:g}, {LOGVAR_BOUND:g}] "
                                 f"(exp(logvar) must stay finite in float32), got {getattr(self, key)}")

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ViTokConfig":
        """Inverse of to_dict; unknown keys are an error naming them."""
        return dataclass_from_dict(cls, data, "ViTok config")


def dataclass_from_dict(cls, data: dict, what: str):
    """cls(**data) for a config dataclass, with unknown keys an error naming them and the known ones."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a mapping of field names to values, got {type(data).__name__} {data!r:.80}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known keys are {sorted(known)}")
    return cls(**data)


def _nearest_multiples(n: int, k: int) -> str:
    lo, hi = (n // k) * k, (n // k + 1) * k
    return f"{hi}" if lo == 0 else f"{lo} or {hi}"


def parse_name(name: str) -> dict:
    """"S-B/16" -> encoder/decoder sizes and patch; "S-B/4x8" adds temporal stride q=4."""
    match = _NAME.match(name.strip())
    if match is None:
        raise ValueError(f"cannot parse model name {name!r}; expected ENC-DEC/p or ENC-DEC/qxp with sizes "
                         f"{'/'.join(SIZES)}, e.g. {', '.join(PAPER_VARIANTS)}")
    for part in ("enc", "dec"):
        if match[part] not in SIZES:
            raise ValueError(f"unknown size {match[part]!r} in {name!r}; sizes are {', '.join(SIZES)} "
                             f"(width, depth, heads: {SIZES})")
    (ew, ed, eh), (dw, dd, dh) = SIZES[match["enc"]], SIZES[match["dec"]]
    fields = dict(encoder_width=ew, encoder_depth=ed, encoder_heads=eh,
                  decoder_width=dw, decoder_depth=dd, decoder_heads=dh, patch_size=int(match["p"]))
    if match["q"] is not None:
        fields["temporal_patch"] = int(match["q"])
    return fields


def config_from_name(name: str, **overrides) -> ViTokConfig:
    """Config for a named variant; keyword overrides (channels, image_size, frames, ...) win."""
    fields = parse_name(name)
    if fields.get("temporal_patch", 1) > 1 and "frames" not in overrides:
        fields["frames"] = 16  # the paper's video clips are 16 frames
    fields.update(overrides)
    fields["name"] = name.strip()
    known = {f.name for f in dataclasses.fields(ViTokConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown ViTok config keys {unknown}; known keys are {sorted(known)}")
    return ViTokConfig(**fields)
