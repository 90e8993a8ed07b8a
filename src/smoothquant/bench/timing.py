"""Timing helpers: CUDA graphs and events on the GPU, the wall clock on the CPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch


def cuda_time_ms(
    fns: Sequence[Callable[[], object]], reps: int = 20, warmup: int = 3, graph: bool = True
) -> float:
    """Median milliseconds per call, calling ``fns`` round-robin.

    The calls are captured in one CUDA graph, so launch overhead stays out of the numbers (as it
    does in a serving loop), and rotating over several input sets keeps small problems from
    being timed out of L2. ``graph=False`` times eager calls instead.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compiles, allocates workspaces) off the capture
        for _ in range(warmup):
            for f in fns:
                f()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for f in fns:
                f()
        run = g.replay
        run()
    else:

        def run() -> None:
            for f in fns:
                f()

    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(fns))
    return statistics.median(times)


def cpu_time_ms(fn: Callable[[], object], reps: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)
