"""The Hugging Face Hub: download a tokenizer by repo id, push one with a generated model card.

A Hub repo of a vitok tokenizer holds exactly the files of save_pretrained, config.json and
model.safetensors (nothing pickled; the latent statistics inside config.json), plus README.md,
the model card: architecture, E = L·c, training data and steps, the metrics of its report, the
latent statistics, the licence and how to load it. Needs `pip install 'vitok[hub]'`.

Loading goes through huggingface_hub's own cache (HF_HOME / HF_HUB_CACHE) and honours
HF_HUB_OFFLINE=1 (only the cache is used): `ViTok.from_pretrained("owner/name", revision=...)`
calls model/pretrained.py's hub_folder (the model reads its own files; this module only pushes).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..model.pretrained import (CARD_FILE, CONFIG_FILE, REPO_ID, WEIGHTS_FILE, hub_folder, json_dict_or_none,
                                looks_like_repo_id)

FILES = (CONFIG_FILE, WEIGHTS_FILE)
__all__ = ["hub_folder", "looks_like_repo_id", "model_card", "push", "push_model", "stage"]


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ValueError("pushing to the Hugging Face Hub needs the huggingface_hub package: "
                         "pip install 'vitok[hub]'") from None
    return huggingface_hub


# ---- pushing ---------------------------------------------------------------------------------

def model_folder_of(path: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint folder, run folder or None) of a `vitok train` run folder or a checkpoint folder."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        run = path.parent if (path.parent / "report.json").is_file() and path.name == "model" else None
        return path, run
    if (path / "model" / CONFIG_FILE).is_file():
        return path / "model", path
    raise ValueError(f"{path} is neither a tokenizer folder (config.json + model.safetensors, as save_pretrained "
                     f"writes) nor a `vitok train` run folder (with model/); pass one of those")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def model_card(folder: Path, repo_id: str, run: Path | None = None, license: str = "other",
               data: str | None = None) -> str:
    """README.md of a pushed tokenizer, from its config.json and, for a run, its report.json and config.yaml."""
    from .. import __version__
    from ..info import describe
    from ..model import ViTok

    config = ViTok.read_config(folder)
    document = json_dict_or_none(folder / CONFIG_FILE) or {}
    stats = document.get("latent_stats")
    info = describe(config)
    report = json_dict_or_none(run / "report.json") if run is not None else None
    train_yaml = None
    if run is not None and (run / "config.yaml").is_file():
        import yaml

        train_yaml = yaml.safe_load((run / "config.yaml").read_text())
    grid = "×".join(str(g) for g in config.grid)
    kind = "video" if config.is_video else "image"
    size = (f"{config.frames}×{config.image_size}×{config.image_size}" if config.is_video
            else f"{config.image_size}×{config.image_size}")
    tags = ["vitok", "visual-tokenizer", "autoencoder", "latent-diffusion", kind]
    lines = ["---", f"license: {license}", "library_name: vitok", "tags:", *[f"- {t}" for t in tags], "---", "",
             f"# {repo_id}", "",
             f"A ViTok {kind} tokenizer (Transformer autoencoder with a continuous latent bottleneck, "
             f"Hansen-Estruch et al., 2025), saved by vitok {__version__}.", "",
             "## Architecture", "",
             "| | |", "| --- | --- |",
             f"| architecture | {config.architecture} ({config.name or 'custom'}) |",
             f"| encoder | width {config.encoder_width}, depth {config.encoder_depth}, {config.encoder_heads} heads |",
             f"| decoder | width {config.decoder_width}, depth {config.decoder_depth}, {config.decoder_heads} heads |",
             f"| tubelet | q = {config.temporal_patch}, p = {config.patch_size} |",
             f"| latent channels c | {config.channels} |",
             f"| nominal input | {size} |",
             f"| tokens L | {info['tokens']} (grid {grid}) |",
             f"| E = L·c | {info['bottleneck']} floats per sample |",
             f"| parameters | encoder {info['params_encoder'] / 1e6:.1f}M, decoder {info['params_decoder'] / 1e6:.1f}M |",
             f"| latent | {'deterministic (LayerNorm bottleneck)' if config.is_v2 else 'diagonal Gaussian posterior'} |",
             ""]
    lines += ["## Training", ""]
    if report is not None:
        budget = f"{report.get('stage1_steps')} + {report.get('stage2_steps')}"
        lines += [f"- steps: {report.get('steps')} ({budget}: stage 1 + stage 2) at global batch "
                  f"{report.get('global_batch')}, {report.get('precision', '')} on {report.get('device', '')}"]
        source = data or ((train_yaml or {}).get("data") or {}).get("source") or "vitok's bundled photos"
        files = (report.get("data") or {}).get("train_files")
        lines.append(f"- data: {source}" + (f" ({files} training files)" if files else ""))
        if report.get("init"):
            lines.append(f"- initialised from: {report['init']}")
        if report.get("selection"):
            lines.append(f"- exported checkpoint: step {report['selection'].get('step')} "
                         f"({report['selection'].get('reason', '')})")
    else:
        lines.append(f"- data: {data or 'not recorded (pushed from a checkpoint folder, not a run folder)'}")
    lines.append("")
    metrics = (report or {}).get("metrics") or {}
    if metrics:
        held = (report or {}).get("num_eval_samples")
        lines += ["## Reconstruction (held-out data of the training run)", "",
                  f"{held} held-out samples, posterior mean." if held else "", "",
                  "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in metrics.items() if isinstance(value, (int, float))]
        for name in ((report or {}).get("not_computed") or {}):
            lines.append(f"| {name} | not computed (see the run's report) |")
        lines.append("")
    lines += ["## Latent statistics", ""]
    if stats:
        lines += [f"Computed by `vitok stats` on {stats.get('data') or 'unrecorded data'} ({stats.get('num_samples')} "
                  f"samples at {stats.get('image_size')} px, fingerprint {stats.get('fingerprint')}); stored in "
                  f"config.json.", "",
                  f"- shift_factor {stats['shift_factor']:.6g}, scaling_factor {stats['scaling_factor']:.6g} "
                  f"(z_model = (z - shift_factor) · scaling_factor)",
                  "- per-channel mean: " + ", ".join(f"{v:.4g}" for v in stats["mean"]),
                  "- per-channel std: " + ", ".join(f"{v:.4g}" for v in stats["std"]), ""]
    else:
        lines += ["None stored: compute them with `vitok stats MODEL --data DIR` before training a generator on "
                  "normalised latents.", ""]
    lines += ["## Use", "", "```python", "import torch", "from vitok import ViTok", "",
              f'tok = ViTok.from_pretrained("{repo_id}")  # pip install "vitok[hub]"',
              f"x = torch.rand(1, 3, {config.image_size}, {config.image_size}) * 2 - 1  # pixels in [-1, 1]"
              if not config.is_video else
              f"x = torch.rand(1, 3, {config.frames}, {config.image_size}, {config.image_size}) * 2 - 1",
              f"z = tok.encode(x{', normalise=True' if stats else ''}).mode()  # B×{info['tokens']}×{config.channels}",
              f"x_hat = tok.decode(z{', normalised=True' if stats else ''})", "```", "",
              f"Licence: {license}" + (" (set with `vitok push --license`; the weights' terms also depend on the "
                                       "training data)" if license == "other" else ""), ""]
    return "\n".join(lines)


def stage(path: str | Path, repo_id: str, out: str | Path, license: str = "other", data: str | None = None) -> Path:
    """Write the files a push uploads into `out` (config.json, model.safetensors, README.md); return out."""
    from ..model import ViTok

    if not REPO_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub repo id; use OWNER/NAME, e.g. my-name/vitok-sb16-c16")
    folder, run = model_folder_of(path)
    ViTok.read_config(folder)  # a damaged folder is refused before anything leaves the machine
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(folder / name, out / name)
    (out / CARD_FILE).write_text(model_card(folder, repo_id, run, license, data))
    return out


def push(path: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
         license: str = "other", data: str | None = None, commit_message: str | None = None,
         token: str | None = None) -> str:
    """Upload a tokenizer (checkpoint or run folder) with its model card to `repo_id`; returns the commit URL."""
    hub = _hub()
    with tempfile.TemporaryDirectory(prefix="vitok-push-") as tmp:
        staged = stage(path, repo_id, tmp, license, data)
        api = hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(staged), revision=revision,
                                   commit_message=commit_message or f"Upload vitok tokenizer {Path(path).name}")
    return str(getattr(commit, "commit_url", commit))


def push_model(model, repo_id: str, **options) -> str:
    """ViTok.push_to_hub: save_pretrained into a temporary folder, then push it."""
    with tempfile.TemporaryDirectory(prefix="vitok-model-") as tmp:
        model.save_pretrained(tmp)
        return push(tmp, repo_id, **options)
