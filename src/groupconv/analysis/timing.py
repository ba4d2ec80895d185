"""Timing that holds up on shared machines: warm-up, several runs, the median, and ratios from one run."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def _wait_for_device() -> None:
    """CUDA kernels run asynchronously: without waiting, a wall clock measures only their launch."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` untimed runs (GPU work included)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _wait_for_device()
        start = time.perf_counter()
        fn()
        _wait_for_device()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
