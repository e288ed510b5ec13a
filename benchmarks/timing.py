"""CUDA-event timing shared by the GPU scripts in this folder."""

from __future__ import annotations


def bench(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median seconds per call of fn(), timed with CUDA events after `warmup` untimed calls."""
    import torch  # imported here so scripts can point sys.path at another vitok first

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]
