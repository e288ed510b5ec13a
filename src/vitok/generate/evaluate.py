"""gFID and gIS of a DiT run's samples against a reference image folder, with the tokenizer metrics' Inception."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


@torch.no_grad()
def evaluate_run(run: str | Path, reference: str | Path, num: int, weights: str | None = None, cfg: float = 1.5,
                 steps: int = 250, method: str = "ddim", eta: float = 0.0, batch_size: int = 32, seed: int = 0,
                 device: str = "cpu", out: str | Path | None = None) -> dict:
    """Sample `num` images, compare their Inception features with the reference folder's; writes report.json."""
    from ..data.datasets import ImageFolder, collate, to_model_range
    from ..eval.networks import load_networks
    from ..metrics.frechet import FeatureStats, frechet_distance, inception_score
    from .sample import generate

    out = Path(out) if out else Path(run) / "gen-eval"
    document = {"run": str(run), "reference": str(reference), "num_samples": num, "cfg": cfg, "steps": steps,
                "sampler": method, "metrics": {}, "not_computed": {}}
    networks = load_networks(weights, video=False, wanted={"rfid", "ris"})
    if networks.inception is None:
        # Without the published Inception weights nothing may be reported under gFID/gIS.
        for name, key in (("gfid", "rfid"), ("gis", "ris")):
            document["not_computed"][name] = networks.missing.get(key, "Inception network unavailable")
    else:
        inception = networks.inception.to(device)
        images, _ = generate(run, num, cfg, steps, method, eta, batch_size, seed=seed, device=device)
        fake_stats, logits = FeatureStats(device=device), []
        for start in range(0, len(images), batch_size):
            feats, batch_logits = inception(to_model_range(images[start:start + batch_size].to(device)))
            fake_stats.update(feats)
            logits.append(batch_logits.float().cpu())
        size = images.shape[-1]
        dataset = ImageFolder(reference, size, upsample=True)
        real_stats = FeatureStats(device=device)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
        for batch in loader:
            if batch["pixels"] is not None:
                real_stats.update(inception(to_model_range(batch["pixels"].to(device)))[0])
        document["num_reference"] = real_stats.n
        if real_stats.n < 2 or fake_stats.n < 2:
            document["not_computed"]["gfid"] = (f"needs at least 2 images on each side, got {real_stats.n} "
                                                f"reference and {fake_stats.n} generated")
        else:
            document["metrics"]["gfid"] = float(frechet_distance(real_stats.mean(), real_stats.cov(),
                                                                 fake_stats.mean(), fake_stats.cov()))
        splits = min(10, num)
        document["metrics"]["gis"] = float(inception_score(torch.cat(logits), splits=splits, seed=2020)[0])
        for name in [k for k, v in document["metrics"].items() if not math.isfinite(v)]:
            document["not_computed"][name] = f"came out as {document['metrics'].pop(name)} (non-finite)"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(document, indent=2) + "\n")
    document["report"] = str(out / "report.json")
    return document
