"""How class-conditional and how novel a trained DiT's samples are, measured in latent space.

gFID needs Inception weights that cannot be fetched on the offline GPU machine, so the GPU check of
latent generation (benchmarks/dit_check.sh) reports two measures that need no outside weights:

- class fidelity: a linear softmax classifier is fitted on 80 % of the real latents of the store
  (flattened L x c, normalised as the DiT sees them) and scored on the other 20 % (its ceiling)
  and on DiT samples of every class, with and without classifier-free guidance. A conditional
  generator that follows its label scores near the ceiling; one that ignores it scores 1/classes.
- novelty: for every sample, the distance to its nearest real training latent, divided by the
  median of the same distance for held-out real latents. Ratios far below 1 mean the DiT copies
  its training set; about 1 means samples sit as far from the training set as unseen real data.

    python benchmarks/dit_class_check.py DIT_RUN --per-class 100 --cfg 1 3 --steps 100 --out check.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vitok.generate.diffusion import GaussianDiffusion
from vitok.generate.latents import LatentStore
from vitok.generate.sample import sample_latents
from vitok.generate.folders import load_dit, run_model_folder


def split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed 80/20 split of range(n)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = max(1, int(0.8 * n))
    return order[:cut], order[cut:]


def fit_classifier(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 300,
                   weight_decay: float = 1e-3) -> torch.nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS (convex, so the fit does not depend on luck)."""
    head = torch.nn.Linear(x.shape[1], classes).to(x.device)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head.eval()


@torch.no_grad()
def accuracy(head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list[float]]:
    """Overall and per-class accuracy."""
    hit = head(x).argmax(1) == y
    per_class = [float(hit[y == k].float().mean()) if (y == k).any() else float("nan")
                 for k in range(head.out_features)]
    return float(hit.float().mean()), per_class


@torch.no_grad()
def nearest(x: torch.Tensor, reference: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Euclidean distance from each row of x to its nearest row of reference."""
    return torch.cat([torch.cdist(part, reference).min(1).values for part in x.split(chunk)])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder of `vitok dit train`")
    parser.add_argument("--latents", default="", help="latent store (default: the run's config.yaml latents)")
    parser.add_argument("--per-class", type=int, default=100, help="samples drawn per class and guidance scale")
    parser.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0], help="guidance scales to measure")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)

    model, document = load_dit(run_model_folder(args.run), args.device)
    if args.latents:
        latents = args.latents
    else:
        import yaml

        latents = yaml.safe_load((Path(args.run) / "config.yaml").read_text())["latents"]
    store = LatentStore(latents)
    classes = store.num_classes
    x = store.batch(torch.arange(len(store)))[0].flatten(1).to(args.device)
    y = store.labels.long().to(args.device)
    train_idx, test_idx = split(len(store), args.seed)
    head = fit_classifier(x[train_idx], y[train_idx], classes)
    real_acc, real_per_class = accuracy(head, x[test_idx], y[test_idx])
    reference = nearest(x[test_idx], x[train_idx]).median()
    result = {"run": str(args.run), "latents": str(latents), "classes": document["latents"]["classes"],
              "num_latents": len(store), "chance": 1.0 / classes,
              "real_heldout_accuracy": real_acc, "real_heldout_per_class": real_per_class,
              "heldout_nn_distance_median": float(reference), "sampling": {"sampler": "ddim", "steps": args.steps},
              "by_cfg": {}}
    print(f"{len(store)} latents, {classes} classes; classifier on held-out real latents: {real_acc:.3f} "
          f"(chance {1 / classes:.3f})")

    diffusion = GaussianDiffusion(**document["diffusion"])
    labels = torch.arange(classes).repeat_interleave(args.per_class)
    for cfg in args.cfg:
        z = torch.cat([sample_latents(model, diffusion, store.grid, part, args.steps, cfg, seed=args.seed + i,
                                      device=args.device)
                       for i, part in enumerate(labels.split(args.batch_size))]).flatten(1).float()
        acc, per_class = accuracy(head, z, labels.to(args.device))
        ratio = nearest(z, x[train_idx]) / reference
        result["by_cfg"][str(cfg)] = {"accuracy": acc, "per_class": per_class,
                                      "nn_ratio_median": float(ratio.median()),
                                      "nn_ratio_p10": float(ratio.quantile(0.1)),
                                      "latent_std": float(z.std())}
        print(f"cfg {cfg:g}: class accuracy {acc:.3f}; nearest-train distance / held-out real: median "
              f"{float(ratio.median()):.2f}, 10th percentile {float(ratio.quantile(0.1)):.2f}; "
              f"sample std {float(z.std()):.2f} (real 1.00)")
        if args.out:  # after every scale, so a run cut by a time limit keeps what it measured
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
