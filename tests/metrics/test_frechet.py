"""Tests for vitok.metrics.frechet against independent float64 numpy/scipy references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from vitok.metrics.frechet import FeatureStats, frechet_distance, inception_score


# ---------------------------------------------------------------- references


def _scipy_fd(mu1, s1, mu2, s2, eps: float = 1e-6, force_offset: bool = False) -> float:
    """Classic FID formula via scipy.linalg.sqrtm(s1 @ s2), with the eps·I fallback for singular products."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if force_offset or not np.isfinite(covmean).all():
        off = eps * np.eye(s1.shape[0])
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _fd(mu1, s1, mu2, s2) -> float:
    """frechet_distance on numpy inputs."""
    return frechet_distance(*(torch.from_numpy(np.asarray(a)) for a in (mu1, s1, mu2, s2)))


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    """Well-conditioned SPD matrix: eigenvalues in [0.5, 2]."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * rng.uniform(0.5, 2.0, d)) @ q.T


def _np_inception_score(logits: np.ndarray, splits: int, seed: int | None) -> tuple[float, float]:
    """Direct float64 IS: seeded shuffle, contiguous splits, exp(mean KL(p(y|x) || p(y)))."""
    x = logits.astype(np.float64)
    n = x.shape[0]
    if seed is not None:
        x = x[np.random.RandomState(seed).permutation(n)]
    z = x - x.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        sl = slice(i * n // splits, (i + 1) * n // splits)
        py = p[sl].mean(axis=0)
        kl = (p[sl] * (log_p[sl] - np.log(py))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------- frechet_distance


def test_fd_matches_scipy_well_conditioned():
    rng = np.random.default_rng(0)
    d = 64
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) * 0.5
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    ref = _scipy_fd(mu1, s1, mu2, s2)
    assert _fd(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)


def test_fd_matches_scipy_near_singular():
    # N=20 samples in D=64: both covariances have rank 19, so S1 S2 has 45+ zero
    # eigenvalues. Computed ones are ~eps·||S||² noise whose square roots are
    # ~sqrt(eps)·||S|| ≈ 1e-8·||S|| each, in both implementations; 45 of them
    # bound the disagreement near 1e-6 of the trace (~1e2 here), so rel=1e-5 is
    # honest for the exact sqrtm. The eps·I-regularised reference is biased by
    # O(sqrt(eps·λ)) per null direction of one matrix (measured ~1e-5 relative),
    # so it gets rel=1e-4.
    rng = np.random.default_rng(1)
    d, n = 64, 20
    a = rng.standard_normal((n, d))
    b = rng.standard_normal((n, d)) * 1.3 + 0.2
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    assert np.linalg.matrix_rank(s1) == n - 1
    got = _fd(mu1, s1, mu2, s2)
    assert got == pytest.approx(_scipy_fd(mu1, s1, mu2, s2), rel=1e-5)
    assert got == pytest.approx(_scipy_fd(mu1, s1, mu2, s2, force_offset=True), rel=1e-4)


def test_fd_identical_is_zero():
    rng = np.random.default_rng(2)
    d = 64
    mu, s = rng.standard_normal(d), _random_spd(rng, d)
    assert abs(_fd(mu, s, mu, s)) < 1e-8


def test_fd_identical_rank_deficient_is_near_zero():
    # Null-space eigenvalues give sqrt(eps)-sized noise; the result must stay far
    # below any real distance and never be reported as negative.
    rng = np.random.default_rng(3)
    a = rng.standard_normal((20, 64))
    mu, s = a.mean(0), np.cov(a, rowvar=False)
    got = _fd(mu, s, mu, s)
    assert 0.0 <= got < 1e-5 * np.trace(s)


def test_fd_diagonal_closed_form():
    rng = np.random.default_rng(4)
    d = 64
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    a[:5] = 0.0  # singular on purpose: the closed form still holds
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = float(((mu1 - mu2) ** 2).sum() + a.sum() + b.sum() - 2 * np.sqrt(a * b).sum())
    assert _fd(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_fd_symmetric():
    rng = np.random.default_rng(5)
    d = 64
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    assert _fd(mu1, s1, mu2, s2) == pytest.approx(_fd(mu2, s2, mu1, s1), rel=1e-10)
    # Also for rank-deficient sample covariances, at the sqrt(eps) noise level.
    x, y = rng.standard_normal((20, d)), rng.standard_normal((30, d)) + 0.1
    args = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert _fd(*args) == pytest.approx(_fd(*args[2:], *args[:2]), rel=1e-6)


def test_fd_accepts_float32_and_returns_float():
    rng = np.random.default_rng(6)
    d = 8
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    got = frechet_distance(*(torch.from_numpy(v).float() for v in (mu1, s1, mu2, s2)))
    assert isinstance(got, float)
    assert got == pytest.approx(_scipy_fd(mu1, s1, mu2, s2), rel=1e-5)


@pytest.mark.parametrize(
    "shapes",
    [
        ((4,), (4, 4), (5,), (4, 4)),
        ((4,), (4, 3), (4,), (4, 4)),
        ((4, 1), (4, 4), (4,), (4, 4)),
        ((4,), (4, 4), (4,), (5, 5)),
    ],
)
def test_fd_shape_errors(shapes):
    args = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(*args)


# ---------------------------------------------------------------- FeatureStats


def _stream(x: np.ndarray, sizes: list[int], **kw) -> FeatureStats:
    """Feed x to a fresh FeatureStats in consecutive batches of the given sizes."""
    st = FeatureStats(**kw)
    start = 0
    for s in sizes:
        st.update(torch.from_numpy(x[start : start + s]))
        start += s
    assert start == len(x)
    return st


def _rel(a, b) -> float:
    """Relative Frobenius error of a w.r.t. b."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_stats_streaming_matches_numpy():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((100, 16)) @ rng.standard_normal((16, 16)) + 3.0
    st = _stream(x, [1, 7, 33, 0, 59])
    assert st.n == 100
    assert _rel(st.mean().numpy(), x.mean(0)) < 1e-10
    assert _rel(st.cov().numpy(), np.cov(x, rowvar=False)) < 1e-10
    assert st.mean().dtype == st.cov().dtype == torch.float64


def test_stats_low_precision_input_is_accumulated_in_float64():
    rng = np.random.default_rng(11)
    x = torch.from_numpy(rng.standard_normal((50, 8))).to(torch.bfloat16)
    st = FeatureStats()
    st.update(x[:20])
    st.update(x[20:])
    ref = x.double().numpy()  # the bf16 values themselves, exactly
    assert _rel(st.cov().numpy(), np.cov(ref, rowvar=False)) < 1e-10


def test_stats_merge_equals_single_pass():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((90, 12)) * 2.0 + 5.0
    y = rng.standard_normal((45, 12)) - 1.0  # different first-batch mean, so a different shift
    a, b = _stream(x, [30, 60]), _stream(y, [5, 40])
    whole = _stream(np.concatenate([x, y]), [135])
    a.merge(b)
    assert a.n == whole.n == 135
    assert _rel(a.mean().numpy(), whole.mean().numpy()) < 1e-10
    assert _rel(a.cov().numpy(), np.cov(np.concatenate([x, y]), rowvar=False)) < 1e-10
    # Merging into / from an empty accumulator is the identity.
    e = FeatureStats().merge(b)
    assert _rel(e.cov().numpy(), np.cov(y, rowvar=False)) < 1e-10
    b.merge(FeatureStats())
    assert b.n == 45


def test_stats_large_mean_small_variance():
    # mean 1e4, std 1e-2: the naive Σxxᵀ - n·μμᵀ cancels ~16 digits down to ~4.
    rng = np.random.default_rng(13)
    x = 1e4 + 1e-2 * (rng.standard_normal((400, 8)) @ rng.standard_normal((8, 8)) / 3)
    ref = np.cov(x, rowvar=False)
    naive = (x.T @ x - len(x) * np.outer(x.mean(0), x.mean(0))) / (len(x) - 1)
    assert _rel(naive, ref) > 1e-6  # the test would catch a naive implementation
    st = _stream(x, [3, 97, 300])
    assert _rel(st.cov().numpy(), ref) < 1e-6
    assert _rel(st.mean().numpy(), x.mean(0)) < 1e-12
    # Also when two accumulators with different shifts are merged.
    a, b = _stream(x[:150], [150]), _stream(x[150:] + 1e-2, [250])
    a.merge(b)
    xy = np.concatenate([x[:150], x[150:] + 1e-2])
    assert _rel(a.cov().numpy(), np.cov(xy, rowvar=False)) < 1e-6


def test_stats_state_summable_with_shared_shift():
    # Simulates all_reduce(SUM) of n, sum, sum_outer across ranks that share a shift.
    rng = np.random.default_rng(14)
    x = rng.standard_normal((120, 6)) + 50.0
    shift = torch.from_numpy(x[:10].mean(0))
    ranks = [_stream(part, [len(part)], dim=6, shift=shift) for part in np.array_split(x, 4)]
    ranks.append(FeatureStats(dim=6, shift=shift))  # a rank that saw no data
    states = [r.state() for r in ranks]
    summed = {k: sum(s[k] for s in states) for k in ("n", "sum", "sum_outer")}
    summed["shift"] = states[0]["shift"]
    st = FeatureStats.from_state(summed)
    assert st.n == 120
    assert _rel(st.mean().numpy(), x.mean(0)) < 1e-12
    assert _rel(st.cov().numpy(), np.cov(x, rowvar=False)) < 1e-10


def test_stats_state_round_trip_and_gather_merge():
    rng = np.random.default_rng(15)
    x = rng.standard_normal((64, 5))
    parts = [_stream(p, [len(p)]) for p in np.array_split(x, 3)]  # different shifts per "rank"
    gathered = [FeatureStats.from_state(p.state()) for p in parts]
    total = gathered[0]
    for g in gathered[1:]:
        total.merge(g)
    assert _rel(total.cov().numpy(), np.cov(x, rowvar=False)) < 1e-10
    assert all(isinstance(v, torch.Tensor) for v in parts[0].state().values())


def test_stats_errors():
    st = FeatureStats()
    with pytest.raises(ValueError, match="at least 2"):
        st.cov()
    with pytest.raises(ValueError, match="at least 1"):
        st.mean()
    with pytest.raises(ValueError):
        st.state()
    st.update(torch.ones(1, 4))
    with pytest.raises(ValueError, match="at least 2"):
        st.cov()
    with pytest.raises(ValueError, match="dimension"):
        st.update(torch.ones(3, 5))
    with pytest.raises(ValueError, match="N×D"):
        st.update(torch.ones(4))
    with pytest.raises(ValueError, match="dimension"):
        st.merge(_stream(np.ones((2, 3)), [2]))
    with pytest.raises(ValueError, match="dimension"):
        FeatureStats(dim=4).update(torch.ones(2, 3))


# ---------------------------------------------------------------- inception_score


def test_is_one_hot_distinct_classes_per_split():
    classes, splits = 10, 5
    labels = np.tile(np.arange(classes), splits)  # each split holds every class once
    probs = torch.from_numpy(np.eye(classes)[labels])
    mean, std = inception_score(probs, splits=splits, from_logits=False, seed=None)
    assert mean == pytest.approx(classes, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)
    # Same as logits with -inf off-class: zero probabilities must not produce NaN.
    logits = torch.where(probs > 0, 0.0, float("-inf")).to(torch.float64)
    mean_l, _ = inception_score(logits, splits=splits, seed=None)
    assert mean_l == pytest.approx(classes, rel=1e-12)


def test_is_identical_predictions_is_one():
    logits = torch.randn(1, 30).expand(200, 30)
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", [None, 0, 2020])
def test_is_matches_numpy_reference(seed):
    rng = np.random.default_rng(20)
    # float32 logits like a real classifier's; 1003 % 10 != 0 gives uneven splits.
    logits = (rng.standard_normal((1003, 20)) * 3.0).astype(np.float32)
    ref_mean, ref_std = _np_inception_score(logits, splits=10, seed=seed)
    mean, std = inception_score(torch.from_numpy(logits), splits=10, seed=seed)
    assert mean == pytest.approx(ref_mean, rel=1e-10)
    assert std == pytest.approx(ref_std, rel=1e-10)
    # Probabilities give the same score as logits.
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1)
    mean_p, std_p = inception_score(probs, splits=10, from_logits=False, seed=seed)
    assert mean_p == pytest.approx(ref_mean, rel=1e-10)
    assert std_p == pytest.approx(ref_std, rel=1e-8)


def test_is_errors():
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.randn(5, 3), splits=10)
    with pytest.raises(ValueError, match="N×C"):
        inception_score(torch.randn(20), splits=2)
    with pytest.raises(ValueError, match="sum"):
        inception_score(torch.randn(20, 3), splits=2, from_logits=False)
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.randn(20, 3), splits=0)


def test_fvd_divides_the_covariance_by_n_and_fid_by_n_minus_1():
    """StyleGAN-V's FVD (which rFVD/gFVD follow) takes np.cov(..., bias=True); pytorch-fid's FID np.cov's default."""
    from vitok.metrics.frechet import frechet_distance, frechet_of_stats

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)), 1.3 * rng.normal(size=(30, 6)) + 0.2
    a, b = FeatureStats(), FeatureStats()
    a.update(torch.from_numpy(x))
    b.update(torch.from_numpy(y))
    assert _rel(a.cov(0).numpy(), np.cov(x, rowvar=False, bias=True)) < 1e-10
    for name, bias in (("rfvd", True), ("gfvd", True), ("rfid", False), ("gfid", False)):
        want = frechet_distance(torch.from_numpy(x.mean(0)), torch.from_numpy(np.cov(x, rowvar=False, bias=bias)),
                                torch.from_numpy(y.mean(0)), torch.from_numpy(np.cov(y, rowvar=False, bias=bias)))
        assert frechet_of_stats(name, a, b) == pytest.approx(want, rel=1e-10), name
    assert frechet_of_stats("rfvd", a, b) != pytest.approx(frechet_of_stats("rfid", a, b), rel=1e-6)
    with pytest.raises(ValueError, match="ddof"):
        a.cov(2)
