"""The generation phase of a sweep point: latents -> DiT -> samples -> scores (the paper's second law).

Reconstruction improves with E = L·c, generation does not keep improving: a latent space of many
channels per token is harder for a diffusion model to learn. A spec's `generation:` section adds,
for every point whose tokenizer has finished, in <point>/generation/:

    latents/              the labelled training set encoded with the point's tokenizer (posterior
                          mode, the store's own per-channel statistics), as `vitok latents` does
    dit/                  a class-conditional DiT of the section's size and budget trained on them,
                          as `vitok dit train` does (a DiT run folder: resumable from its checkpoints)
    samples.safetensors   samples_per_class decoded samples of every class (uint8) and their labels
    samples.png           a grid of the first 64
    generation.json       the scores; {"finished": true, ...} once every phase is done

and once per sweep, in <sweep>/generation/classifier/, the pixel classifier of fidelity.py.

Every phase is skipped when its output is complete and continued when it was cut short, so
rerunning `vitok sweep` resumes a point's generation where it stopped. Samples depend only on
the DiT and the section's seed, sampler and counts.

The scores are computed in pixel space on decoded samples, never on latents: a diffusion loss
or a latent probe means something different in every latent space, decoded images do not.
- gen_swd: patch SWD (x1e3) between the samples and the held-out real images of the same classes
  (val_data), pooled; gen_swd_class: its mean over classes (fidelity.generation_swd).
- gen_class_acc: the accuracy of a classifier trained once per sweep on the real labelled
  training images (from scratch) on the samples; its held-out accuracy is the ceiling.
- gfid / gis: Inception-v3 against val_data when its published weights are present, else
  listed as not computed with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..model.pretrained import atomic_write, json_dict_or_none

GENERATION_DIR = "generation"
GENERATION_FILE = "generation.json"
GENERATION_ERROR_FILE = "generation_error.txt"  # in the point folder: why its generation phase failed last
SECTION_FILE = "section.json"  # the generation section a point's phase started under
SAMPLES_FILE = "samples.safetensors"
BUNDLED = "bundled"  # data: bundled builds a small labelled crop set from the photos that ship with vitok
SECTION_KEYS = ("data", "val_data", "dit", "samples_per_class", "sampler", "classifier", "seed", "batch_size",
                "device", "weights", "latent_dtype")
SAMPLER_KEYS = ("method", "steps", "cfg", "eta")


@dataclass
class Sampler:
    """The fixed sampler every point's DiT samples with."""

    method: str = "ddim"
    steps: int = 50
    cfg: float = 2.0
    eta: float = 0.0


@dataclass
class GenerationSection:
    """A spec's `generation:` section: what every point's generation phase does."""

    data: str = ""  # labelled training images (a folder of class sub-folders), or "bundled"
    val_data: str = ""  # held-out labelled real images of the same classes ("" with data: bundled)
    dit: list[str] = field(default_factory=list)  # `vitok dit train` key=value settings (model, steps, ...)
    samples_per_class: int = 32
    sampler: Sampler = field(default_factory=Sampler)
    classifier: dict = field(default_factory=dict)  # fidelity.ClassifierConfig fields
    seed: int = 0
    batch_size: int = 64  # encoding and sampling batch
    device: str = "auto"  # auto | cpu | cuda
    weights: str = ""  # folder of the Inception weights for gFID/gIS ("" = $VITOK_WEIGHTS or the default)
    latent_dtype: str = "float16"  # storage dtype of the latent store

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_generation(raw: object, origin: str) -> GenerationSection:
    """The `generation:` section of a spec, checked completely (the DiT and classifier settings included)."""
    from ..generate.checks import check_sampling_args
    from ..generate.fidelity import ClassifierConfig
    from ..generate.train import DiTTrainConfig, parse_overrides

    if not isinstance(raw, dict):
        raise ValueError(f"{origin}: generation must be a mapping with keys {', '.join(SECTION_KEYS)}, got {raw!r}")
    unknown = sorted(set(raw) - set(SECTION_KEYS))
    if unknown:
        raise ValueError(f"{origin}: unknown generation key(s) {', '.join(unknown)}; the section has "
                         f"{', '.join(SECTION_KEYS)}")
    values = dict(raw)
    sampler = values.pop("sampler", None) or {}
    if not isinstance(sampler, dict) or set(sampler) - set(SAMPLER_KEYS):
        raise ValueError(f"{origin}: generation.sampler takes {', '.join(SAMPLER_KEYS)}, got {sampler!r}")
    try:
        section = GenerationSection(**values, sampler=Sampler(**sampler))
    except TypeError as err:
        raise ValueError(f"{origin}: generation: {err}") from None
    where = f"{origin}: generation"
    if not section.data:
        raise ValueError(f"{where}.data is missing: a folder of labelled training images (one sub-folder per "
                         f"class), or '{BUNDLED}' for a small set cut from vitok's bundled photos")
    if section.data != BUNDLED and not section.val_data:
        raise ValueError(f"{where}.val_data is missing: held-out labelled real images of the same classes, the "
                         f"reference of gen_swd and the classifier's ceiling")
    if not isinstance(section.dit, list) or not all(isinstance(t, str) for t in section.dit):
        raise ValueError(f"{where}.dit must be a list of key=value strings (`vitok dit train` settings), "
                         f"got {section.dit!r}")
    if any(t.split("=", 1)[0] in ("latents",) for t in section.dit):
        raise ValueError(f"{where}.dit sets latents: each point encodes its own; drop it")
    try:
        parse_overrides(DiTTrainConfig(latents="-"), section.dit).validate()
    except ValueError as err:
        raise ValueError(f"{where}.dit: {err}") from None
    for key in ("samples_per_class", "batch_size"):
        value = getattr(section, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}.{key} must be a positive integer, got {value!r}")
    if section.samples_per_class < 2:
        raise ValueError(f"{where}.samples_per_class must be at least 2 (SWD and the Frechet distance compare "
                         f"sets), got {section.samples_per_class}")
    s = section.sampler
    try:
        check_sampling_args(section.samples_per_class, s.cfg, s.steps, s.eta, section.batch_size)
    except ValueError as err:
        raise ValueError(f"{where}.sampler: {err}") from None
    if s.method not in ("ddim", "ddpm"):
        raise ValueError(f"{where}.sampler.method must be ddim or ddpm, got {s.method!r}")
    if section.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{where}.device must be auto, cpu or cuda, got {section.device!r}")
    if not isinstance(section.classifier, dict):
        raise ValueError(f"{where}.classifier must be a mapping of ClassifierConfig fields, got "
                         f"{section.classifier!r}")
    try:
        ClassifierConfig(**section.classifier)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}.classifier: {err}") from None
    return section


def resolve_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


# ---- data ------------------------------------------------------------------------------------

def labelled_folders(section: GenerationSection, sweep_dir: Path) -> tuple[Path, Path]:
    """(training, held-out) labelled folders; `bundled` cuts them from the bundled photos once."""
    if section.data != BUNDLED:
        for key in ("data", "val_data"):
            if not Path(getattr(section, key)).is_dir():
                raise ValueError(f"generation.{key} {getattr(section, key)} is not a folder; point it at "
                                 f"labelled images (one sub-folder per class)")
        return Path(section.data).resolve(), Path(section.val_data).resolve()
    root = sweep_dir.resolve() / GENERATION_DIR / "bundled_set"
    if not (root / "done").is_file():
        shutil.rmtree(root, ignore_errors=True)
        bundled_crop_set(root, seed=section.seed)
        (root / "done").write_text("")
    return root / "train", root / "val"


# Four bundled photos of clearly different content: the classes of the bundled crop set.
BUNDLED_CLASSES = ("astronaut", "chelsea", "coffee", "rocket")


def bundled_crop_set(root: Path, train_per_class: int = 16, val_per_class: int = 6, size: int = 96,
                     seed: int = 0) -> None:
    """root/{train,val}/<photo>/<k>.png: random square crops (25-100 % of the largest square) of four
    bundled photos, one class per photo; for smoke tests and demos (CI has no labelled data)."""
    from PIL import Image

    from ..data.images import bundled_photos

    photos = {p.stem: p for p in bundled_photos()}
    rng = random.Random(seed)
    for name in BUNDLED_CLASSES:
        with Image.open(photos[name]) as opened:
            image = opened.convert("RGB")
        side = min(image.size)
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                crop = int(side * math.sqrt(rng.uniform(0.25, 1.0)))
                x, y = rng.randint(0, image.size[0] - crop), rng.randint(0, image.size[1] - crop)
                piece = image.crop((x, y, x + crop, y + crop)).resize((size, size), Image.LANCZOS)
                piece.save(folder / f"{k:03d}.png")


# ---- phases ----------------------------------------------------------------------------------

def read_generation_document(point_dir: Path) -> dict | None:
    """generation.json of a point (None when absent or unreadable)."""
    return json_dict_or_none(point_dir / GENERATION_DIR / GENERATION_FILE)


def generation_finished(point_dir: Path) -> bool:
    document = read_generation_document(point_dir)
    return bool(document and document.get("finished"))


def ensure_classifier(section: GenerationSection, sweep_dir: Path, log: Callable[[str], None]) -> Path:
    """The sweep's pixel classifier, trained once on the labelled training images (loaded when present)."""
    from ..generate.fidelity import ClassifierConfig, train_classifier_on_folders

    train_root, val_root = labelled_folders(section, sweep_dir)
    folder = sweep_dir / GENERATION_DIR / "classifier"
    info = train_classifier_on_folders(train_root, val_root, folder, ClassifierConfig(**section.classifier),
                                       resolve_device(section.device), log)
    log(f"classifier: held-out accuracy {info['val_accuracy']:.3f} (the ceiling of gen_class_acc), {folder}")
    return folder


def check_generation_unchanged(section: GenerationSection, point_dir: Path, point_name: str) -> None:
    """A point's generation started under other settings cannot continue under these: say which differ."""
    saved = json_dict_or_none(point_dir / GENERATION_DIR / SECTION_FILE)
    if saved is None:
        return
    wanted = json.loads(json.dumps(section.to_dict()))
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differ[:4])
        raise ValueError(f"point {point_name}: its generation phase in {point_dir / GENERATION_DIR} ran with other "
                         f"settings ({details}); restore the spec's generation section, or delete that folder "
                         f"to generate again")


def run_generation(section: GenerationSection, sweep_dir: Path, point_dir: Path, point_name: str,
                   log: Callable[[str], None] = print, classifier: Path | None = None) -> dict:
    """Every unfinished phase of one point's generation; returns generation.json's content.

    `classifier`: the sweep's classifier folder when the caller has ensured it (else it is here)."""
    done = read_generation_document(point_dir)
    if done and done.get("finished"):
        return done
    device = resolve_device(section.device)
    point_dir = point_dir.resolve()  # the latent store and the DiT record these paths: absolute, cwd-proof
    gen = point_dir / GENERATION_DIR
    gen.mkdir(parents=True, exist_ok=True)
    check_generation_unchanged(section, point_dir, point_name)
    text = json.dumps(section.to_dict(), indent=2) + "\n"
    atomic_write(gen / SECTION_FILE, lambda tmp: Path(tmp).write_text(text))
    train_root, val_root = labelled_folders(section, sweep_dir)
    classifier = classifier or ensure_classifier(section, sweep_dir, log)
    tokenizer = point_dir / "model"
    if not (tokenizer / "config.json").is_file():
        raise ValueError(f"point {point_name}: no trained tokenizer in {tokenizer}; its training has not finished")

    latents = gen / "latents"
    if not (latents / "index.json").is_file():
        from ..generate.latents import encode_folder

        log(f"  {point_name}: encoding {train_root} with its tokenizer")
        encode_folder(tokenizer, train_root, latents, batch_size=section.batch_size, dtype=section.latent_dtype,
                      device=device, log=lambda line: None)

    dit_run = gen / "dit"
    dit_report = json_dict_or_none(dit_run / "report.json")
    if dit_report is None:
        from ..generate.train import DiTTrainConfig, parse_overrides, train_dit

        config = parse_overrides(DiTTrainConfig(latents=str(latents), device=section.device, seed=section.seed,
                                                progress=False), section.dit)
        resume = (dit_run / "config.yaml").is_file()
        log(f"  {point_name}: {'resuming' if resume else 'training'} the DiT ({config.model}, {config.steps} steps"
            + (f", at most {config.time_limit_minutes} min" if config.time_limit_minutes else "") + ")")
        train_dit(config, out=None if resume else dit_run, resume=dit_run if resume else None)
        dit_report = json_dict_or_none(dit_run / "report.json")

    samples_path = gen / SAMPLES_FILE
    if not samples_path.is_file():
        log(f"  {point_name}: sampling {section.samples_per_class} images per class")
        write_samples(section, dit_run, samples_path, device)

    log(f"  {point_name}: scoring the samples")
    document = score(section, samples_path, val_root, classifier, device)
    document["dit"] = {"steps": dit_report["steps"], "planned_steps": dit_report["planned_steps"],
                       "seconds": dit_report["wall_seconds"], "params": dit_report["parameters"],
                       "stopped_by": "time" if dit_report["stopped_early"] else "steps",
                       "time_limit_minutes": dit_report["time_limit_minutes"],
                       "final_loss": dit_report["final_loss"], "model": dit_report["model"]}
    document["finished"] = True
    text = json.dumps(document, indent=2) + "\n"
    atomic_write(gen / GENERATION_FILE, lambda tmp: Path(tmp).write_text(text))
    return document


def write_samples(section: GenerationSection, dit_run: Path, path: Path, device: str) -> None:
    """samples_per_class samples of every class from the run's EMA DiT, decoded; safetensors + a grid."""
    from safetensors.torch import save_file

    from ..generate.diffusion import GaussianDiffusion
    from ..generate.folders import load_dit, run_model_folder
    from ..generate.sample import decode_latents, sample_latents, save_grid
    from ..model import ViTok

    model, document = load_dit(run_model_folder(dit_run), device)
    info = document["latents"]
    tokenizer = ViTok.from_pretrained(info["tokenizer"], device=device)
    diffusion = GaussianDiffusion(**document["diffusion"])
    s = section.sampler
    # Class-major order (all of class 0, then class 1, ...): the labels of sample i are i // per_class.
    labels = torch.arange(info["num_classes"]).repeat_interleave(section.samples_per_class)
    images = []
    for start in range(0, len(labels), section.batch_size):
        z = sample_latents(model, diffusion, info["grid"], labels[start:start + section.batch_size], s.steps, s.cfg,
                           s.method, s.eta, seed=section.seed * 1_000_003 + start, device=device)
        images.append(decode_latents(tokenizer, z, info))
    images = torch.cat(images)
    tensors = {"images": images.contiguous(), "labels": labels.contiguous()}
    meta = {"classes": json.dumps(info["classes"]), "sampler": json.dumps(dataclasses.asdict(s))}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    # 8 per row, interleaving classes so the grid shows every class.
    order = torch.arange(len(labels)).view(info["num_classes"], -1).t().flatten()[:64]
    save_grid(images[order], path.with_name("samples.png"))


def score(section: GenerationSection, samples_path: Path, val_root: Path, classifier_folder: Path,
          device: str) -> dict:
    """The pixel-space scores of a point's samples: gen_swd, gen_swd_class, gen_class_acc, gfid, gis."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..generate.evaluate import feature_network, score_samples
    from ..generate.fidelity import accuracy, generation_swd, load_classifier, load_labelled

    tensors = load_file(str(samples_path))
    images, labels = tensors["images"], tensors["labels"]
    with safe_open(str(samples_path), "pt") as f:
        classes = json.loads(f.metadata()["classes"])
    # Labelled by the training folder's class list (a held-out class outside it is an error).
    real, real_labels, _, _ = load_labelled(val_root, images.shape[-1], classes)
    started = time.perf_counter()
    swd = generation_swd(images, labels, real, real_labels)
    swd["per_class"] = {classes[c]: v for c, v in swd["per_class"].items()}
    swd["skipped_classes"] = {classes[c]: v for c, v in swd["skipped_classes"].items()}
    model, info = load_classifier(classifier_folder, device)
    metrics = {"gen_swd": swd["swd"], "gen_swd_class": swd.get("swd_class"),
               "gen_class_acc": accuracy(model, images, labels)}
    not_computed = {}
    net, names, missing, _, published = feature_network(section.weights or None, 1)
    if net is None:
        not_computed.update({name: missing[name] for name in names})
        metrics.update({name: None for name in names})
    else:
        scores = score_samples(net, names, published, images, val_root, section.batch_size, device)
        for name in names:
            metrics[name] = scores["metrics"].get(name)
            if metrics[name] is None:
                not_computed[name] = scores["not_computed"].get(name, "random-weight test network: plumbing only")
    return {"metrics": metrics, "not_computed": not_computed,
            "swd": swd, "classifier": {"val_accuracy": info["val_accuracy"], "folder": str(classifier_folder)},
            "samples": {"num": len(labels), "per_class": section.samples_per_class, "classes": classes,
                        **dataclasses.asdict(section.sampler), "seed": section.seed},
            "real": {"folder": str(val_root), "num": len(real)},
            "score_seconds": time.perf_counter() - started}
