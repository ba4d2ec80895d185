"""Timing that holds up on shared machines: warm-up, several runs, the median, and ratios from one run."""

from __future__ import annotations

import random
import statistics
import time
from typing import Callable, Mapping

import torch


def _wait_for_device() -> None:
    """CUDA kernels run asynchronously: without waiting, a wall clock measures only their launch."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def seconds_of(fn: Callable[[], object]) -> float:
    """Wall time of one fn() call (GPU work included)."""
    _wait_for_device()
    start = time.perf_counter()
    fn()
    _wait_for_device()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` untimed runs (GPU work included)."""
    for _ in range(warmup):
        fn()
    return statistics.median(seconds_of(fn) for _ in range(repeats))


def median_seconds_interleaved(fns: Mapping[str, Callable[[], object]], repeats: int = 7, warmup: int = 1,
                               pause: float = 0.0, measure: Callable[[Callable[[], object]], float] | None = None
                               ) -> dict[str, float]:
    """Median wall time of each fn, timed in alternation: round r times every fn once before round r + 1, in an order
    of its own (see seconds_interleaved).

    On a shared machine the load changes from second to second; timing the contenders side by side
    lets each see the same load, where timing one after the other can crown whichever ran in a quiet spell.
    `pause` (seconds) and `measure`: see seconds_interleaved.
    """
    return {name: statistics.median(values)
            for name, values in seconds_interleaved(fns, repeats, warmup, pause, measure).items()}


def seconds_interleaved(fns: Mapping[str, Callable[[], object]], repeats: int = 7, warmup: int = 1,
                        pause: float = 0.0, measure: Callable[[Callable[[], object]], float] | None = None
                        ) -> dict[str, list[float]]:
    """Every round's wall time of each fn, timed in alternation (median_seconds_interleaved's runs): entry r of
    each list comes from round r, so a ratio taken round by round compares runs that saw the same load.

    Each round runs the fns in an order drawn afresh (seeded: the same in every run), so that no fn always follows
    the same other one: what a run leaves behind changes the next one's time. Two NCHW grouped convs of one shape in a
    row take 1.6x the time of the second alone after a channels_last one (oneDNN's state), and runtimes whose worker
    threads keep spinning after a run (ONNX Runtime's, OpenVINO's) take the cores from whichever fn follows them; in a
    fixed order both fall on the same fn every round. With a `pause`, the machine idles `pause` seconds, untimed,
    before each run.

    `measure(fn)` gives one run's seconds: by default (None) seconds_of, fn's wall time here; fns that time
    themselves elsewhere (a forward in another process) return their seconds, measured with
    `measure=lambda fn: fn()`."""
    measure = measure or seconds_of
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    orders = random.Random(0)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name in orders.sample(names, len(names)):
            if pause:
                time.sleep(pause)
            times[name].append(measure(fns[name]))
    return times
