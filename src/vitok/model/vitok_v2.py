"""The ViTok authors' v2 tokenizers (github Na-VAE/vitok-release, Apache-2.0) as vitok models.

The authors publish nine trained v2 tokenizers on the Hugging Face Hub (RELEASED). Their weights
map one to one onto a vitok model with architecture "vitok-v2" (tokenizer.py), up to two exact
re-arrangements:
- RoPE pairs: the reference rotates interleaved pairs (x[2j], x[2j+1]) of each head, vitok rotates
  (x[j], x[j + d/2]). Both use the same angles (rows on the first d/4 pairs, columns on the rest,
  the same frequency ladder), so permuting the q and k rows of every head (and the QK-norm gains
  with them) gives identical attention logits; v and the output projection are untouched.
- SwiGLU halves: the reference's fc1 holds (value, gate), vitok's w13 holds (gate, value).
The pixel embedding is the same linear map over (c, y, x)-ordered patches, stored as vitok's
tubelet convolution weight; the un-embedding is the reference's linear layer itself.

Sizes come from the weights' shapes alone (widths, depths, heads from the QK-norm width, patch,
channels); anything the mapping cannot reproduce exactly (class or register tokens, another MLP
rounding, a head width that 2-D RoPE cannot split) is refused with the reason.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import secrets
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .blocks import v2_swiglu_hidden
from .pretrained import write_checkpoint
from .variants import ViTokConfig

# The reference's file split: every Hub repo of RELEASED holds these two files.
ENCODER_FILE = "encoder.safetensors"
DECODER_FILE = "decoder.safetensors"
PREFIX = "vitok-v2/"  # ViTok.from_pretrained("vitok-v2/350M-f16x64") loads a released checkpoint by name


@dataclass(frozen=True)
class Released:
    """One released checkpoint: its Hub repo and the sizes its weights have."""

    repo: str
    encoder: tuple[int, int, int]  # width, depth, heads
    decoder: tuple[int, int, int]
    patch: int
    channels: int

    def config(self, image_size: int = 256) -> ViTokConfig:
        """The vitok config of this checkpoint at a nominal image size (any size runs; see tokenizer.py)."""
        (ew, ed, eh), (dw, dd, dh) = self.encoder, self.decoder
        return ViTokConfig(encoder_width=ew, encoder_depth=ed, encoder_heads=eh, decoder_width=dw, decoder_depth=dd,
                           decoder_heads=dh, patch_size=self.patch, channels=self.channels, image_size=image_size,
                           qk_norm=True, architecture="vitok-v2")


_L, _T = (1024, 4, 16), (3072, 4, 24)  # the 350M and 5B encoders; decoders are 24 and 40 blocks deep
RELEASED: dict[str, Released] = {
    "350M-f16x16": Released("philippehansen/ViTok-v2-350M-f16x16", _L, (1024, 24, 16), 16, 16),
    "350M-f16x32": Released("philippehansen/ViTok-v2-350M-f16x32", _L, (1024, 24, 16), 16, 32),
    "350M-f16x64": Released("philippehansen/ViTok-v2-350M-f16x64", _L, (1024, 24, 16), 16, 64),
    "5B-f16x16": Released("philippehansen/ViTok-v2-5B-f16x16", _T, (3072, 40, 24), 16, 16),
    "5B-f16x32": Released("philippehansen/ViTok-v2-5B-f16x32", _T, (3072, 40, 24), 16, 32),
    "5B-f16x64": Released("philippehansen/ViTok-v2-5B-f16x64", _T, (3072, 40, 24), 16, 64),
    "5B-f32x64": Released("philippehansen/ViTok-v2-5B-f32x64", _T, (3072, 40, 24), 32, 64),
    "5B-f32x128": Released("philippehansen/ViTok-v2-5B-f32x128", _T, (3072, 40, 24), 32, 128),
    "5B-f32x256": Released("philippehansen/ViTok-v2-5B-f32x256", _T, (3072, 40, 24), 32, 256),
}

_BLOCK = re.compile(r"^(encoder|decoder)_blocks\.(\d+)\.(.+)$")
# Reference name inside a block -> vitok name inside blocks.Block.
_BLOCK_KEYS = {"norm1.weight": "norm1.weight", "attn.qkv_proj.weight": "attn.qkv.weight",
               "attn.out_proj.weight": "attn.proj.weight", "attn.norm_q.weight": "attn.q_norm.weight",
               "attn.norm_k.weight": "attn.k_norm.weight", "ffn.fc1.weight": "mlp.w13.weight",
               "ffn.fc2.weight": "mlp.w2.weight", "layer_scale.gamma": "layer_scale"}
_TOP_KEYS = {"patch_embed.weight", "patch_embed.bias", "to_code.weight", "to_code.bias", "decoder_embed.weight",
             "decoder_embed.bias", "to_pixels.weight", "to_pixels.bias"}


def interleaved_to_split(head_dim: int) -> torch.Tensor:
    """Channel order that turns interleaved RoPE pairs (2j, 2j+1) into split pairs (j, j + d/2)."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def config_of_reference(state: dict[str, torch.Tensor], image_size: int = 256) -> ViTokConfig:
    """The vitok config that reproduces a reference v2 state dict (encoder and decoder keys together)."""
    unknown = sorted(k for k in state if k not in _TOP_KEYS and not (_BLOCK.match(k) and
                                                                    _BLOCK.match(k)[3] in _BLOCK_KEYS))
    if unknown:
        hint = (" (class or register tokens: vitok's v2 has none, as no released checkpoint does)"
                if any("token" in k for k in unknown) else "")
        raise ValueError(f"the v2 weights hold tensors vitok cannot map: {unknown[:6]}{hint}; convert the "
                         f"encoder.safetensors and decoder.safetensors of a ViTok-v2 release")
    missing = sorted(_TOP_KEYS - set(state))
    if missing:
        raise ValueError(f"the v2 weights lack {missing}: pass both the encoder and the decoder file "
                         f"({ENCODER_FILE}, {DECODER_FILE})")
    width, pixels = state["patch_embed.weight"].shape
    patch = math.isqrt(pixels // 3)
    if 3 * patch * patch != pixels:
        raise ValueError(f"patch_embed takes {pixels} values per token, not 3·p·p for a square patch p: a video "
                         f"(temporal stride > 1) v2 model, which vitok does not convert")
    sizes = {}
    for part in ("encoder", "decoder"):
        depth = 1 + max((int(m[2]) for k in state if (m := _BLOCK.match(k)) and m[1] == part), default=-1)
        if depth == 0:
            raise ValueError(f"the v2 weights hold no {part} blocks ({part}_blocks.0.*)")
        q_norm = state.get(f"{part}_blocks.0.attn.norm_q.weight")
        if q_norm is None:
            raise ValueError(f"{part}_blocks.0 has no attn.norm_q.weight: v2 blocks always normalise q and k")
        w = state[f"{part}_blocks.0.norm1.weight"].shape[0]
        head_dim = q_norm.shape[0]
        if w % head_dim or head_dim % 4:
            raise ValueError(f"{part}: width {w} and head width {head_dim} do not give whole heads of a width "
                             f"divisible by 4, which 2-D RoPE needs")
        hidden = state[f"{part}_blocks.0.ffn.fc1.weight"].shape[0] // 2
        if hidden != v2_swiglu_hidden(w):
            raise ValueError(f"{part}: the MLP is {hidden} wide, but v2's rule (int(2.67·{w}) rounded to 16) "
                             f"gives {v2_swiglu_hidden(w)}: a model with another mlp_factor, which vitok does "
                             f"not convert")
        sizes[part] = (w, depth, w // head_dim)
    if sizes["encoder"][0] != width:
        raise ValueError(f"patch_embed is {width} wide but the encoder blocks are {sizes['encoder'][0]}")
    (ew, ed, eh), (dw, dd, dh) = sizes["encoder"], sizes["decoder"]
    return ViTokConfig(encoder_width=ew, encoder_depth=ed, encoder_heads=eh, decoder_width=dw, decoder_depth=dd,
                       decoder_heads=dh, patch_size=patch, channels=state["to_code.weight"].shape[0],
                       image_size=image_size, qk_norm=True, architecture="vitok-v2")


def convert_state(state: dict[str, torch.Tensor], config: ViTokConfig) -> dict[str, torch.Tensor]:
    """Reference v2 state dict -> vitok state dict for `config` (config_of_reference), dtypes kept."""
    p = config.patch_size
    out = {"embed.weight": state["patch_embed.weight"].reshape(-1, 3, 1, p, p),
           "embed.bias": state["patch_embed.bias"],
           "to_latent.weight": state["to_code.weight"], "to_latent.bias": state["to_code.bias"],
           "from_latent.weight": state["decoder_embed.weight"], "from_latent.bias": state["decoder_embed.bias"],
           "unembed.weight": state["to_pixels.weight"], "unembed.bias": state["to_pixels.bias"]}
    for part, width, depth, heads in (("encoder", config.encoder_width, config.encoder_depth, config.encoder_heads),
                                      ("decoder", config.decoder_width, config.decoder_depth, config.decoder_heads)):
        head_dim = width // heads
        perm = interleaved_to_split(head_dim)
        # Row order of qkv: (q, k, v) × heads × head_dim; reorder the head_dim rows of q and k.
        rows = torch.arange(3 * width).view(3, heads, head_dim)
        rows[:2] = rows[:2, :, perm]
        rows = rows.flatten()
        for i in range(depth):
            ref, new = f"{part}_blocks.{i}.", f"{part}.blocks.{i}."
            fc1 = state[ref + "ffn.fc1.weight"]
            value, gate = fc1.chunk(2, dim=0)
            gamma = state.get(ref + "layer_scale.gamma")  # absent when trained without LayerScale: gamma = 1
            out.update({
                new + "norm1.weight": state[ref + "norm1.weight"],
                new + "attn.qkv.weight": state[ref + "attn.qkv_proj.weight"][rows],
                new + "attn.proj.weight": state[ref + "attn.out_proj.weight"],
                new + "attn.q_norm.weight": state[ref + "attn.norm_q.weight"][perm],
                new + "attn.k_norm.weight": state[ref + "attn.norm_k.weight"][perm],
                new + "mlp.w13.weight": torch.cat([gate, value], dim=0),
                new + "mlp.w2.weight": state[ref + "ffn.fc2.weight"],
                new + "layer_scale": gamma if gamma is not None else torch.ones(width, dtype=fc1.dtype),
            })
    return {k: v.contiguous() for k, v in out.items()}


def read_reference(src: str | Path) -> dict[str, torch.Tensor]:
    """The reference's tensors from a folder holding encoder.safetensors and decoder.safetensors, or one file."""
    src = Path(src)
    files = [src / ENCODER_FILE, src / DECODER_FILE] if src.is_dir() else [src]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise ValueError(f"no v2 weights at {absent}: pass a folder with {ENCODER_FILE} and {DECODER_FILE} "
                         f"(as the authors' Hub repos hold them) or one .safetensors file with both")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = load_file(str(f))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read {f} as safetensors ({err}); download it again") from None
        clash = sorted(set(part) & set(state))
        if clash:
            raise ValueError(f"{f} repeats tensors of the other file: {clash[:4]}")
        state.update(part)
    return state


def convert(src: str | Path, dst: str | Path, image_size: int = 256, name: str = "") -> ViTokConfig:
    """Convert reference v2 weights (read_reference's `src`) into a vitok checkpoint folder `dst`."""
    state = read_reference(src)
    config = config_of_reference(state, image_size)
    if name:
        config.name = name
    write_checkpoint(dst, config.to_dict(), convert_state(state, config))
    return config


def cache_root() -> Path:
    """Where converted checkpoints are kept: $VITOK_CACHE, else ~/.cache/vitok."""
    return Path(os.environ.get("VITOK_CACHE") or Path.home() / ".cache" / "vitok")


def released_name(name: str) -> str:
    """The RELEASED key of `name` ("vitok-v2/350M-f16x64" or "350M-f16x64"); ValueError listing them if unknown."""
    short = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if short not in RELEASED:
        raise ValueError(f"unknown released v2 checkpoint {name!r}; the released ones are "
                         f"{', '.join(PREFIX + n for n in RELEASED)}")
    return short


def download_released(name: str, revision: str | None = None) -> Path:
    """The Hub snapshot folder holding the reference files of released checkpoint `name`.

    Downloads through huggingface_hub into its own cache (HF_HUB_OFFLINE=1 uses only that cache);
    the folder's name is the Hub commit (huggingface_hub's layout: .../snapshots/<commit>/<file>).
    """
    short = released_name(name)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ValueError(f"loading {PREFIX}{short} downloads it from the Hugging Face Hub, which needs the "
                         f"huggingface_hub package: pip install 'vitok[hub]'; or download {ENCODER_FILE} and "
                         f"{DECODER_FILE} from {RELEASED[short].repo} yourself and run "
                         f"`vitok convert vitok-v2 FOLDER OUT`") from None
    repo = RELEASED[short].repo
    try:
        files = [Path(hf_hub_download(repo, f, revision=revision)) for f in (ENCODER_FILE, DECODER_FILE)]
    except Exception as err:  # network, authentication, offline cache miss: all end here, with the cause
        from huggingface_hub import constants

        fix = ("HF_HUB_OFFLINE is set and the Hugging Face cache lacks them: unset it to download, or point "
               "HF_HUB_CACHE at the cache that holds them" if getattr(constants, "HF_HUB_OFFLINE", False)
               else "check the network, or set HF_HUB_OFFLINE=1 to use a cached copy")
        raise ValueError(f"cannot fetch {ENCODER_FILE} and {DECODER_FILE} of {repo} from the Hugging Face Hub "
                         f"({type(err).__name__}: {err}); {fix}") from None
    return files[0].parent


def released_folder(name: str, revision: str | None = None, image_size: int = 256) -> Path:
    """A vitok checkpoint folder for released checkpoint `name` ("vitok-v2/350M-f16x64" or "350M-f16x64").

    Downloads the two files (download_released), converts them once per Hub commit (and nominal
    image size) into cache_root()/vitok-v2/NAME@COMMIT, and returns that folder.
    """
    short = released_name(name)
    snapshot = download_released(short, revision)
    commit = snapshot.name
    # The image size is part of config.json, so another size is another folder (256 keeps the plain name).
    out = cache_root() / "vitok-v2" / (f"{short}@{commit}" + ("" if image_size == 256 else f"@{image_size}px"))
    if (out / "config.json").is_file():
        return out
    # Converted in a private folder, then renamed: a killed conversion never leaves a half folder
    # that a later load would take for a complete one.
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        convert(snapshot, tmp, image_size, PREFIX + short)
        try:
            os.replace(tmp, out)
        except OSError:  # another process converted it first: theirs is as good
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
