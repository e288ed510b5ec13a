"""Distribution-level metrics: streaming feature statistics, Fréchet distance, Inception Score.

:class:`FeatureStats` accumulates the mean and covariance of D-dim features batch
by batch in float64 without keeping the samples. :func:`frechet_distance` turns
two (mean, covariance) pairs into the Fréchet distance (FID/FVD given Inception/I3D
features). :func:`inception_score` follows Salimans et al. (2016) with the split
and shuffle conventions of torch-fidelity. Everything is torch float64, so it runs
on whichever device the inputs live on and needs no scipy.

Conventions, each that of the reference implementation the metric's published numbers come from:
FID (pytorch-fid) takes the unbiased covariance (divides by N - 1); FVD (StyleGAN-V's
implementation, which vitok's rFVD and gFVD follow) divides by N (frechet_of_stats picks by name).

These functions only turn features or logits into numbers. The features themselves come
from :mod:`vitok.metrics.inception`, whose 299×299 resize follows pytorch-fid (PyTorch's
bilinear ``F.interpolate``), not torch-fidelity (a TensorFlow-1.x-style bilinear resize):
the same images give slightly different features, so rFID and rIS match pytorch-fid's
preprocessing and need not equal torch-fidelity's numbers exactly. The input scaling differs
too: vitok (as pytorch-fid) quantises to 8 bits and maps to 2x/255 - 1, torch-fidelity feeds
(x - 128) / 128, a map shifted by half a level and scaled by 255/256, so identical images reach
the network as slightly different tensors; rIS and rFID are therefore pytorch-fid-comparable,
torch-fidelity numbers are close but not identical.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["FeatureStats", "frechet_distance", "inception_score"]

_F64_EPS = torch.finfo(torch.float64).eps


class FeatureStats:
    """Streaming float64 mean/covariance of D-dim features, kept as shifted sums.

    Stores ``n``, a fixed ``shift`` (D), ``sum`` = Σ(x - shift) (D) and
    ``sum_outer`` = Σ(x - shift)(x - shift)ᵀ (D×D). Subtracting a shift close to the
    data mean before squaring avoids the catastrophic cancellation of the naive
    Σxxᵀ - n·μμᵀ when features have a large mean and a small spread. Unless given,
    the shift is the mean of the first batch seen.

    Distributed use: ``n``, ``sum`` and ``sum_outer`` may simply be summed across
    ranks (``all_reduce``) **only if every rank uses the same shift** — pass the same
    ``shift`` (and ``dim``) to every rank's constructor, e.g. a reference mean
    broadcast from rank 0. Otherwise ``all_gather`` the :meth:`state` dicts and
    combine them with :meth:`from_state` + :meth:`merge`, which re-expresses sums
    around a common shift exactly.
    """

    def __init__(
        self,
        dim: int | None = None,
        device: torch.device | str | None = None,
        shift: Tensor | None = None,
    ) -> None:
        """Empty accumulator on ``device`` (CPU by default); ``shift`` is (D,) if given."""
        self.device = torch.device("cpu") if device is None else torch.device(device)
        if shift is not None:
            shift = torch.as_tensor(shift).to(self.device, torch.float64)
            if shift.dim() != 1:
                raise ValueError(f"shift must be 1-D (D,), got shape {tuple(shift.shape)}")
            if dim is not None and shift.numel() != dim:
                raise ValueError(f"shift has {shift.numel()} entries but dim={dim}")
            dim = shift.numel()
        if dim is not None and dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.n = 0
        self.shift: Tensor | None = shift
        self.sum: Tensor | None = None
        self.sum_outer: Tensor | None = None
        if dim is not None:
            self._alloc(dim)

    def _alloc(self, dim: int) -> None:
        """Allocate zero (D,) and (D, D) float64 buffers."""
        self.dim = dim
        self.sum = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.sum_outer = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)

    def update(self, feats: Tensor) -> None:
        """Add an N×D batch of features (any real dtype/device; N may be 0)."""
        if feats.dim() != 2:
            raise ValueError(f"features must be N×D, got shape {tuple(feats.shape)}")
        if self.dim is not None and feats.shape[1] != self.dim:
            raise ValueError(f"feature dimension mismatch: expected D={self.dim}, got shape {tuple(feats.shape)}")
        if feats.shape[0] == 0:
            return
        # Cast before subtracting: a float32 difference would already have lost the small spread.
        x = feats.detach().to(self.device, torch.float64)
        if self.sum is None:
            self._alloc(x.shape[1])
        if self.shift is None:
            self.shift = x.mean(dim=0)
        xc = x - self.shift
        self.n += x.shape[0]
        self.sum += xc.sum(dim=0)
        self.sum_outer += xc.T @ xc

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Fold ``other``'s samples into this accumulator in place; returns self."""
        if other.n == 0:
            if self.dim is not None and other.dim is not None and other.dim != self.dim:
                raise ValueError(f"feature dimension mismatch: D={self.dim} vs D={other.dim}")
            return self
        if self.dim is not None and other.dim != self.dim:
            raise ValueError(f"feature dimension mismatch: D={self.dim} vs D={other.dim}")
        o_shift = other.shift.to(self.device)
        o_sum = other.sum.to(self.device)
        o_outer = other.sum_outer.to(self.device)
        if self.sum is None:
            self._alloc(other.dim)
        if self.shift is None:
            self.shift = o_shift.clone()
        # Re-centre other's sums on our shift: x - a = (x - b) + d with d = b - a,
        # which is exact algebra and keeps d small when both shifts are near the mean.
        d = o_shift - self.shift
        self.sum += o_sum + other.n * d
        self.sum_outer += o_outer + torch.outer(o_sum, d) + torch.outer(d, o_sum) + other.n * torch.outer(d, d)
        self.n += other.n
        return self

    def mean(self) -> Tensor:
        """Sample mean, (D,) float64."""
        if self.n < 1:
            raise ValueError("mean needs at least 1 sample, got 0")
        return self.shift + self.sum / self.n

    def cov(self, ddof: int = 1) -> Tensor:
        """Sample covariance, (D, D) float64: ddof=1 (unbiased) as np.cov(x, rowvar=False), what FID uses;
        ddof=0 divides by N, as np.cov(x, rowvar=False, bias=True), what FVD uses (frechet_of_stats)."""
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
        if self.n < 2:
            raise ValueError(f"covariance needs at least 2 samples, got {self.n}")
        m = self.sum / self.n  # mean of the shifted data; small, so no cancellation
        c = (self.sum_outer - self.n * torch.outer(m, m)) / (self.n - ddof)
        return 0.5 * (c + c.T)

    def state(self) -> dict[str, Tensor]:
        """Plain tensors: n (int64 scalar), shift (D), sum (D), sum_outer (D, D); see class doc."""
        if self.shift is None or self.sum is None:
            raise ValueError("state of an accumulator with no shift yet: update it or pass dim and shift")
        return {
            "n": torch.tensor(self.n, dtype=torch.int64, device=self.device),
            "shift": self.shift.clone(),
            "sum": self.sum.clone(),
            "sum_outer": self.sum_outer.clone(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Tensor], device: torch.device | str | None = None) -> FeatureStats:
        """Rebuild an accumulator from :meth:`state` (e.g. after all_reduce or all_gather)."""
        shift = torch.as_tensor(state["shift"])
        out = cls(dim=shift.numel(), device=device if device is not None else shift.device, shift=shift)
        s = torch.as_tensor(state["sum"]).to(out.device, torch.float64)
        so = torch.as_tensor(state["sum_outer"]).to(out.device, torch.float64)
        if s.shape != (out.dim,) or so.shape != (out.dim, out.dim):
            raise ValueError(
                f"inconsistent state shapes: shift {tuple(shift.shape)}, sum {tuple(s.shape)}, "
                f"sum_outer {tuple(so.shape)}"
            )
        out.n = int(torch.as_tensor(state["n"]).item())
        out.sum = s.clone()
        out.sum_outer = so.clone()
        return out


def _psd_sqrt(s: Tensor) -> Tensor:
    """Symmetric PSD square root of a (D, D) matrix, negative eigenvalues clamped to 0."""
    w, v = torch.linalg.eigh(0.5 * (s + s.T))
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_of_stats(name: str, real: "FeatureStats", fake: "FeatureStats") -> float:
    """The Fréchet distance a metric reports from two accumulators, with that metric's covariance
    convention: FVD-family names (rfvd, gfvd) divide by N as StyleGAN-V does; FID-family by N - 1."""
    ddof = 0 if name.endswith("fvd") else 1
    return frechet_distance(real.mean(), real.cov(ddof), fake.mean(), fake.cov(ddof))


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); mu (D,), sigma (D, D).

    ||mu1 - mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^½) in float64 on mu1's device.
    The trace term is Σ sqrt(λ) over the eigenvalues λ ≥ 0 of the symmetric PSD matrix
    S1^½ S2 S1^½, which shares its spectrum with S1 S2 but, unlike a general matrix
    square root of S1 S2, stays well defined for rank-deficient covariances. A small
    negative result from rounding is clamped to 0; a larger one is returned as is
    and means the covariances were not PSD.
    """
    args = [torch.as_tensor(a) for a in (mu1, sigma1, mu2, sigma2)]
    device = args[0].device
    mu1, sigma1, mu2, sigma2 = (a.to(device, torch.float64) for a in args)
    d = mu1.shape[0] if mu1.dim() == 1 else -1
    if mu1.dim() != 1 or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            "expected mu1, mu2 of shape (D,) and sigma1, sigma2 of shape (D, D), got "
            f"mu1 {tuple(mu1.shape)}, sigma1 {tuple(sigma1.shape)}, "
            f"mu2 {tuple(mu2.shape)}, sigma2 {tuple(sigma2.shape)}"
        )
    r1 = _psd_sqrt(sigma1)
    m = r1 @ sigma2 @ r1
    lam = torch.linalg.eigvalsh(0.5 * (m + m.T))
    tr_sqrt = lam.clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    tr1, tr2 = torch.trace(sigma1), torch.trace(sigma2)
    fd = float(diff @ diff + tr1 + tr2 - 2 * tr_sqrt)
    # Eigenvalues that should be 0 come out as ~eps·||S1||·||S2||, and their square roots
    # as ~sqrt(eps)·(Tr S1 + Tr S2)/2 each; with up to D of them that bounds the rounding.
    tol = d * math.sqrt(_F64_EPS) * float(tr1.abs() + tr2.abs())
    if -tol <= fd < 0:
        fd = 0.0
    return fd


def inception_score(
    probs_or_logits: Tensor,
    splits: int = 10,
    from_logits: bool = True,
    seed: int | None = 0,
) -> tuple[float, float]:
    """Inception Score (mean, std over splits) of N×C class logits or probabilities.

    Samples are shuffled with ``np.random.RandomState(seed).permutation(N)`` (no
    shuffle if ``seed`` is None), cut into ``splits`` contiguous chunks
    ``[i·N//splits, (i+1)·N//splits)``, and each chunk scores
    exp(mean_i KL(p(y|x_i) || p(y))) with p(y) the chunk's mean prediction, all in
    float64. The std is the population std (ddof=0). With ``seed=2020``, given the
    same logits, this is torch-fidelity's ``inception_score_mean``/``_std`` computation;
    end-to-end rIS can still differ from torch-fidelity's because the logits come from
    pytorch-fid-style preprocessing (see the module docstring).
    """
    x = probs_or_logits
    if x.dim() != 2:
        raise ValueError(f"expected N×C predictions, got shape {tuple(x.shape)}")
    n, c = x.shape
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    if n < splits:
        raise ValueError(f"need at least as many samples as splits, got N={n} < splits={splits}")
    if c < 1:
        raise ValueError(f"need at least one class, got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    if seed is not None:
        # numpy's RandomState permutation so seeds mean the same thing as in torch-fidelity.
        perm = np.random.RandomState(seed).permutation(n)
        x = x[torch.as_tensor(perm, device=x.device)]
    if from_logits:
        log_p = torch.log_softmax(x, dim=1)
        p = log_p.exp()
    else:
        if bool((x < 0).any()) or bool(((x.sum(dim=1) - 1).abs() > 1e-3).any()):
            raise ValueError("from_logits=False needs non-negative rows summing to 1; pass logits otherwise")
        p = x / x.sum(dim=1, keepdim=True)
        log_p = p.log()
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        pc, lpc = p[lo:hi], log_p[lo:hi]
        log_py = pc.mean(dim=0).log()
        # 0·log 0 = 0: classes with p = 0 contribute nothing (avoids 0·(-inf) = NaN).
        kl = torch.where(pc > 0, pc * (lpc - log_py), torch.zeros_like(pc)).sum(dim=1)
        scores.append(math.exp(float(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
