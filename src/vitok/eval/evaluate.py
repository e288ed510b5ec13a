"""Stream a dataset through a tokenizer and measure reconstructions, on one or many GPUs.

Nothing grows with the dataset except one float per sample per metric, the rIS logits and a
few example images: feature moments are accumulated, images are dropped after each batch.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, Subset

from ..data.datasets import collate, to_model_range
from ..metrics.frechet import FeatureStats, frechet_of_stats, inception_score
from ..metrics.image import psnr, ssim, to_uint8
from ..metrics.sharpness import dataset_sharpness, high_frequency_energy
from ..metrics.structure import MS_SSIM_MIN_SIZE, gmsd, ms_ssim
from ..metrics.swd import PatchSWD
from ..metrics.temporal import temporal_rmse
from ..model import ViTok
from .networks import FeatureNetworks

# Weight-free metrics need no downloaded network: always computed (per frame for video).
WEIGHT_FREE_METRICS = ("psnr", "ssim", "ms_ssim", "gmsd", "sharpness", "swd")
IMAGE_METRICS = WEIGHT_FREE_METRICS + ("lpips", "rfid", "ris")
VIDEO_METRICS = WEIGHT_FREE_METRICS + ("temporal", "rfvd")
# Metrics from learned feature networks: with random weights they are plumbing checks only.
LEARNED_METRICS = frozenset({"lpips", "rfid", "ris", "rfvd"})
# torch-fidelity's default: the Inception Score is averaged over 10 splits.
RIS_SPLITS = 10


@dataclass
class EvalResult:
    """Per-sample scores, dataset-level metrics and the examples for the report.

    Only requested metrics appear in `metrics`, `plumbing_only` and `not_computed`. A sample
    reconstructed exactly has infinite PSNR: it is counted in `psnr_infinite` and left out of the
    PSNR mean (its per-sample value stays inf).
    """

    metrics: dict[str, float] = field(default_factory=dict)
    plumbing_only: dict[str, float] = field(default_factory=dict)
    not_computed: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    per_sample: dict[str, list] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    worst: list[tuple] = field(default_factory=list)  # (psnr, key, original uint8, reconstruction uint8)
    best: list[tuple] = field(default_factory=list)
    num_samples: int = 0
    psnr_infinite: int = 0
    swd_levels: dict[str, float] = field(default_factory=dict)  # SWD (x1e3) per pyramid level, by its size in px
    seconds: float = 0.0


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(obj):
    """All ranks' objects as a list (just [obj] without torch.distributed)."""
    rank, world = _rank_world()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def make_loader(dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    """A loader over this rank's share: sample i belongs to rank i mod world, so each is counted once."""
    rank, world = _rank_world()
    if not isinstance(dataset, IterableDataset) and world > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world))
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def _keep_extremes(heap: list, items: list[tuple], keep: int, largest: bool) -> None:
    """Maintain the `keep` items with the largest (or smallest) PSNR in a bounded heap."""
    for psnr_value, key, orig, recon in items:
        score = psnr_value if largest else -psnr_value
        entry = (score, key, orig, recon)
        if len(heap) < keep:
            heapq.heappush(heap, entry)
        elif entry[:2] > heap[0][:2]:
            heapq.heapreplace(heap, entry)


def _candidates(values: list[float], keys: list[str], x: torch.Tensor, x_hat: torch.Tensor, keep: int) -> list[tuple]:
    """(psnr, key, original, reconstruction) for the batch's `keep` worst and best samples only.

    Images go to the host as uint8 in one copy each (H×W×3; video shows its middle frame): a copy
    per sample would stall the GPU once per image.
    """
    order = sorted(range(len(values)), key=values.__getitem__)
    chosen = sorted(set(order[:keep] + order[-keep:]))
    index = torch.tensor(chosen, device=x.device)

    def frames(t: torch.Tensor) -> torch.Tensor:
        t = t.index_select(0, index)
        if t.dim() == 5:
            t = t[:, :, t.shape[2] // 2]
        return to_uint8(t).permute(0, 2, 3, 1).cpu()

    originals, reconstructions = frames(x), frames(x_hat)
    return [(values[i], keys[i], originals[j], reconstructions[j]) for j, i in enumerate(chosen)]


@torch.no_grad()
def evaluate(model: ViTok, loader, networks: FeatureNetworks, device: torch.device, keep: int = 6,
             progress: bool = True, metrics: set[str] | None = None, ris_splits: int = RIS_SPLITS,
             tiling: object = "auto") -> EvalResult:
    """Encode (posterior mean) and decode every sample; return metrics over the whole set, all ranks.

    `metrics` (default: all) limits what is computed and reported; PSNR is always measured per
    sample because it ranks the worst and best examples. `tiling`: encode's and decode's (large
    images in tiles, clips longer than the model's in chunks; "auto" cuts only above its budget).
    """
    from tqdm.auto import tqdm

    wanted = set(IMAGE_METRICS + VIDEO_METRICS) if metrics is None else set(metrics)
    rank, world = _rank_world()
    start = time.perf_counter()
    model.eval()
    use_lpips = networks.lpips is not None and "lpips" in wanted
    inception = networks.inception if wanted & {"rfid", "ris"} else None
    feature_net = inception if inception is not None else (networks.i3d if "rfvd" in wanted else None)
    frechet_name = "rfid" if inception is not None else "rfvd"
    want_frechet = feature_net is not None and frechet_name in wanted
    want_ris = inception is not None and "ris" in wanted
    per_sample: dict[str, list] = {"key": [], "psnr": []}
    video = bool(getattr(getattr(model, "config", None), "is_video", False))
    for name in ("ssim", "ms_ssim", "gmsd", *(("temporal",) if video else ())):
        if name in wanted:
            per_sample[name] = []
    if "sharpness" in wanted:
        # The dataset's ratio is of the sums (robust to near-flat images); both sums are gathered.
        per_sample.update(sharpness=[], hf_energy_original=[], hf_energy_reconstruction=[])
    if use_lpips:
        per_sample["lpips"] = []
    swd = PatchSWD() if "swd" in wanted else None
    too_small_for_ms_ssim = None
    real_stats = fake_stats = None
    logits: list[torch.Tensor] = []
    logit_keys: list[str] = []
    worst_heap: list = []
    best_heap: list = []
    skipped: list[dict] = []
    psnr_sum, psnr_count = 0.0, 0  # of the finite PSNRs so far, for the progress bar
    bar = tqdm(loader, desc="eval", unit="batch", disable=not progress or rank != 0, dynamic_ncols=True)
    for batch in bar:
        skipped.extend(batch["skipped"])
        if batch["pixels"] is None:
            continue
        x = to_model_range(batch["pixels"].to(device, non_blocking=True))
        if tiling is None or not _cuts(model, x, tiling):
            x_hat, _ = model(x, sample=False, check=False)
        else:
            z = model.encode(x, check=False, tiling=tiling).mode()
            x_hat = model.decode(z, size=tuple(x.shape[2:]), check=False, tiling=tiling)
        x_hat = x_hat.clamp(-1, 1)
        # Queue every kernel of the batch first and read results back once at the end: a read
        # after each metric would leave the GPU idle while the host queues the next one.
        scores = {"psnr": psnr(x, x_hat)}
        if "ssim" in wanted:
            scores["ssim"] = ssim(x, x_hat)
        if "ms_ssim" in wanted:
            if min(x.shape[-2:]) >= MS_SSIM_MIN_SIZE:
                scores["ms_ssim"] = ms_ssim(x, x_hat)
            else:
                too_small_for_ms_ssim = tuple(x.shape[-2:])
        if "gmsd" in wanted:
            scores["gmsd"] = gmsd(x, x_hat)
        if "temporal" in per_sample and x.dim() == 5 and x.shape[2] > 1:
            scores["temporal"] = temporal_rmse(x, x_hat)
        if "sharpness" in wanted:
            energy, energy_hat = high_frequency_energy(x), high_frequency_energy(x_hat)
            scores.update(sharpness=energy_hat / energy, hf_energy_original=energy,
                          hf_energy_reconstruction=energy_hat)
        if swd is not None:
            swd.update(content_keys(x), x, x_hat)
        if use_lpips:
            # On the 8-bit images, like every other metric here: what a saved file would score.
            scores["lpips"] = networks.lpips(_quantised(x), _quantised(x_hat)).double()
        if feature_net is not None:
            fake = feature_net(x_hat)
            if isinstance(fake, tuple):  # Inception returns (pool features, logits)
                fake, fake_logits = fake
                if want_ris:
                    logits.append(fake_logits.float())
                    logit_keys += batch["keys"]
            if want_frechet:
                real = feature_net(x)
                real = real[0] if isinstance(real, tuple) else real
                if real_stats is None:
                    real_stats, fake_stats = FeatureStats(device=device), FeatureStats(device=device)
                real_stats.update(real)
                fake_stats.update(fake)
        host = torch.stack([v.double() for v in scores.values()]).cpu()
        per_sample["key"] += batch["keys"]
        for name, row in zip(scores, host.tolist()):
            per_sample[name] += row
        psnr_values = per_sample["psnr"][-len(batch["keys"]):]
        items = _candidates(psnr_values, batch["keys"], x, x_hat, keep)
        _keep_extremes(worst_heap, items, keep, largest=False)
        _keep_extremes(best_heap, items, keep, largest=True)
        finite = [v for v in psnr_values if math.isfinite(v)]
        psnr_sum, psnr_count = psnr_sum + sum(finite), psnr_count + len(finite)
        if psnr_count:
            bar.set_postfix(psnr=f"{psnr_sum / psnr_count:.2f}")

    # Combine every rank's share: each sample was seen by exactly one rank.
    logits = [torch.cat(logits).cpu()] if logits else []
    if too_small_for_ms_ssim is not None:
        per_sample.pop("ms_ssim", None)
    gathered = _gather((per_sample, skipped, worst_heap, best_heap, logits, logit_keys,
                        _cpu_state(real_stats), _cpu_state(fake_stats), swd.state() if swd is not None else None,
                        too_small_for_ms_ssim))
    result = EvalResult(not_computed={k: v for k, v in networks.missing.items() if k in wanted},
                        seconds=time.perf_counter() - start)
    # A rank that saw images too small for MS-SSIM drops it for the whole set.
    small = next((part[-1] for part in gathered if part[-1] is not None), None)
    merged = {k: [] for k in per_sample if not (k == "ms_ssim" and small is not None)}
    all_logits, all_logit_keys, real_all, fake_all, swd_all = [], [], None, None, None
    for (part_samples, part_skipped, part_worst, part_best, part_logits, part_keys, part_real, part_fake,
         part_swd, _) in gathered:
        for k in merged:
            merged[k] += part_samples.get(k, [])
        if part_swd is not None:
            part_swd = PatchSWD.from_state(part_swd)
            swd_all = part_swd if swd_all is None else _merge(swd_all, part_swd)
        result.skipped += part_skipped
        for score, key, orig, recon in part_worst:
            _keep_extremes(result.worst, [(-score, key, orig, recon)], keep, largest=False)
        for score, key, orig, recon in part_best:
            _keep_extremes(result.best, [(score, key, orig, recon)], keep, largest=True)
        all_logits += part_logits
        all_logit_keys += part_keys
        if part_real is not None:
            real_all = _merge(real_all, FeatureStats.from_state(part_real))
            fake_all = _merge(fake_all, FeatureStats.from_state(part_fake))
    result.worst = sorted(((-s, k, o, r) for s, k, o, r in result.worst), key=lambda e: e[0])
    result.best = sorted(((s, k, o, r) for s, k, o, r in result.best), key=lambda e: -e[0])
    result.per_sample = merged
    result.num_samples = len(merged["key"])
    if result.num_samples == 0:
        raise ValueError(_no_samples_message(result.skipped))

    computed: dict[str, float] = {}
    finite_psnr = [v for v in merged["psnr"] if math.isfinite(v)]
    result.psnr_infinite = result.num_samples - len(finite_psnr)
    if "psnr" in wanted:
        if finite_psnr:
            computed["psnr"] = sum(finite_psnr) / len(finite_psnr)
        else:
            result.not_computed["psnr"] = (f"every one of the {result.num_samples} reconstructions equals its "
                                           f"original (infinite PSNR): there is no finite PSNR to average")
    for name in ("ssim", "ms_ssim", "gmsd", "lpips", "temporal"):
        if merged.get(name):  # temporal: video clips only
            computed[name] = sum(merged[name]) / len(merged[name])
    if small is not None and "ms_ssim" in wanted:
        result.not_computed["ms_ssim"] = (f"needs images of at least {MS_SSIM_MIN_SIZE}x{MS_SSIM_MIN_SIZE} pixels for "
                                          f"its 5 scales, got {small[0]}x{small[1]}")
    if "sharpness" in merged:
        computed["sharpness"] = dataset_sharpness(torch.tensor(merged["hf_energy_original"], dtype=torch.float64),
                                                  torch.tensor(merged["hf_energy_reconstruction"], dtype=torch.float64))
    if swd_all is not None:
        try:
            swd_result = swd_all.compute()
            computed["swd"] = swd_result["swd"]
            result.swd_levels = swd_result["levels"]
        except ValueError as err:
            result.not_computed["swd"] = str(err)
    if real_all is not None:
        if real_all.n < 2:
            result.not_computed[frechet_name] = f"needs at least 2 samples, got {real_all.n}"
        else:
            computed[frechet_name] = frechet_of_stats(frechet_name, real_all, fake_all)
    if want_ris:
        if len(all_logit_keys) < ris_splits:
            result.not_computed["ris"] = (f"needs at least {ris_splits} samples for its {ris_splits} splits, "
                                          f"got {len(all_logit_keys)}")
        else:
            # Sorted by key, the splits hold the same samples whatever the number of ranks or the
            # loader's order; then torch-fidelity's seeded permutation (seed 2020) as usual.
            order = sorted(range(len(all_logit_keys)), key=all_logit_keys.__getitem__)
            ordered = torch.cat(all_logits)[torch.tensor(order)]
            computed["ris"] = inception_score(ordered, splits=ris_splits, seed=2020)[0]
    for name, value in computed.items():
        value = float(value)
        if not math.isfinite(value):
            result.not_computed[name] = f"came out as {value} (non-finite); not reported"
            continue
        # Numbers from random weights are plumbing checks, never reported under a metric's name.
        plumbing = name in LEARNED_METRICS and not networks.published_weights
        (result.plumbing_only if plumbing else result.metrics)[name] = value
    return result


def _cuts(model, x: torch.Tensor, tiling) -> bool:
    """Whether encode's tiling would cut x into tiles or chunks (a model without tiling never does)."""
    tiles = getattr(model, "_tiles", None)
    return tiles is not None and tiles(model._pixel_grid(x.shape), tiling)[0] is not None


def content_keys(x: torch.Tensor) -> list[str]:
    """One key per sample from its 8-bit pixels (BLAKE2b): SWD's patch positions then follow the image
    itself, so the same images give the same SWD wherever their files are stored or however they are named."""
    pixels = to_uint8(x).cpu().numpy()
    return [hashlib.blake2b(sample.tobytes(), digest_size=16).hexdigest() for sample in pixels]


def _no_samples_message(skipped: list[dict], show: int = 5) -> str:
    """The 'no usable samples' error, with the first few files and why each was skipped."""
    if not skipped:
        return "no usable samples: the data source yielded none (an empty tar shard, or --limit too small?)"
    reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:show])
    more = f" (and {len(skipped) - show} more)" if len(skipped) > show else ""
    return f"no usable samples: all {len(skipped)} files were skipped. First reasons: {reasons}{more}"


def _merge(acc, part):
    """Fold a mergeable accumulator (FeatureStats, PatchSWD) into another; the first part starts it."""
    if acc is None:
        return part
    acc.merge(part)
    return acc


def _cpu_state(stats: FeatureStats | None) -> dict | None:
    """Accumulator state on the CPU, so every rank can unpickle what the others send."""
    return None if stats is None or stats.n == 0 else {k: v.cpu() for k, v in stats.state().items()}


def _quantised(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the 8-bit grid, back in [-1, 1]."""
    return to_uint8(x).float() / 127.5 - 1.0
