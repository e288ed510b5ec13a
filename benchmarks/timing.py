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


def graph_bench(fn, launches: int = 10, warmup: int = 2, iters: int = 10) -> float:
    """Median seconds per call of fn, replayed from a CUDA graph of `launches` calls: for kernels of about
    the time Python takes to launch one, so that only the GPU's time is counted."""
    import torch

    fn()  # compile, autotune
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(launches):
            fn()
    return bench(graph.replay, warmup, iters) / launches


def matmul_tflops(n: int = 8192) -> float:
    """This GPU's bf16 dense matmul rate (an n³ product, median of 20): the ceiling MFU is taken against."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return 2 * n ** 3 / bench(lambda: a @ a, 5, 20) / 1e12
