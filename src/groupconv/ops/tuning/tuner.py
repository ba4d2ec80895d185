"""Measure once, remember: which backend is fastest for a problem.

When more than one fast backend can run a problem, the dispatcher times each on the call's own
tensors (one warm-up, then the median of 3 to 15 runs timed in alternation, more for short ops),
keeps the fastest (torch's own kernels unless another is clearly faster: `clearly_faster`) of those
that hold no more memory than torch's kernels (on the CPU, measured in one more run: `within_memory`),
and writes the decision to disk keyed by the problem (disk_cache.py).

Controls: GROUPCONV_TUNE=0 (or `set_tuning(False)`) turns measuring off, and the highest-priority
capable backend runs; `clear_tuning_cache()` forgets every decision, on disk too. Forcing a
backend (`use_backend`, `set_backend`, GROUPCONV_BACKEND) bypasses tuning altogether.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

from . import disk_cache, memory
from .disk_cache import warn_once
from .memory import MEASUREMENT_LOCK
from .timing import median_seconds_interleaved

TIMED_RUNS = 3
MAX_TIMED_RUNS = 15
TARGET_SECONDS = 0.01


def measure(runs: dict[str, Callable[[], object]], repeats: int | None = None) -> dict[str, float]:
    """Median wall time of each run after one warm-up call, timed in alternation (the same load for all).

    Without `repeats`, short runs are repeated more (TIMED_RUNS at least, up to MAX_TIMED_RUNS, about
    TARGET_SECONDS of timing per contender): on a shared machine three runs of a 0.2 ms op decide by noise.
    A run that raises (in its warm-up) gets infinite time and a warning: a backend that fails is never chosen, and
    the decision on disk remembers that it was tried.
    """
    working, failed, warm_seconds = {}, {}, []
    for name, run in runs.items():
        try:
            start = time.perf_counter()
            run()
            warm_seconds.append(time.perf_counter() - start)
        except Exception as error:
            warn_once(f"backend {name!r} failed while being measured: {error}")
            failed[name] = math.inf
        else:
            working[name] = run
    if repeats is None:
        # The warm-up overestimates a run (first-call costs), so this errs towards fewer repeats.
        typical = max(min(warm_seconds, default=0.0), 1e-6)
        repeats = max(TIMED_RUNS, min(MAX_TIMED_RUNS, int(TARGET_SECONDS / typical)))
    return {**(median_seconds_interleaved(working, repeats=repeats, warmup=0) if working else {}), **failed}


# Leaving torch's kernels costs more than the kernel time the tuner measures: a call whose forward and backward both
# run on torch's kernels runs F.convNd with torch's autograd directly, ~30-50 us a direction less Python than any
# other route (custom_ops.eager.EagerCall.runs_on_torch). A near tie (a 7x7 depthwise layer: 86 us against 87) is a loss.
BASELINE_MARGIN = 0.03  # and timing noise: a contender must also be 3% faster
BASELINE_OVERHEAD_SECONDS = 30e-6


def clearly_faster(seconds: float, baseline_seconds: float) -> bool:
    """Whether a contender measured at `seconds` beats torch's kernels (`baseline_seconds`) by enough to be chosen."""
    return seconds < baseline_seconds * (1 - BASELINE_MARGIN) - BASELINE_OVERHEAD_SECONDS




# groupconv's forward+backward never holds more memory than torch's would. On the CPU, each
# contender's peak memory is measured once more after the timings (memory.py), and one that holds more than
# torch's kernels for the same op is not chosen, however fast. (Converting an NCHW ResNeXt 3x3 conv's operands to
# channels_last for the faster kernels, via_channels_last, holds one activation more than oneDNN's NCHW path.)
MEMORY_TOLERANCE = 0.01  # within 1%: the allocator's bookkeeping, a scratch buffer of another size


def measures_memory(problem) -> bool:
    """Whether the tuner weighs memory for `problem`: a CPU problem, where the native module (which counts the CPU
    allocator's bytes) is built, and no peak-memory measurement is running in this thread already (a user's
    `peak_allocated_bytes` around a first call: counts do not nest); elsewhere it decides by time alone, and the
    decision is weighed again in a later process."""
    return problem.device_type == "cpu" and memory.can_measure() and not memory.is_measuring()


def peak_memory(runs: dict[str, Callable[[], object]]) -> dict[str, int]:
    """The peak bytes each run holds (memory.py)."""
    return {name: memory.peak_allocated_bytes(run) for name, run in runs.items()}


def within_memory(peak_bytes: int, baseline_peak_bytes: int) -> bool:
    """Whether a contender whose run held `peak_bytes` at most holds no more than torch's kernels."""
    return peak_bytes <= baseline_peak_bytes * (1 + MEMORY_TOLERANCE)


def choose(problem, contenders: Sequence, run: Callable) -> object:
    """The fastest of `contenders` for `problem`: remembered from disk, or measured with run(backend) and saved."""
    with MEASUREMENT_LOCK:
        return _choose(problem, contenders, run)


def _choose(problem, contenders: Sequence, run: Callable) -> object:
    decisions = disk_cache.decisions()
    key = disk_cache.problem_key(problem)
    by_name = {backend.name: backend for backend in contenders}
    baseline = next((backend.name for backend in contenders if backend.baseline), None)
    checks_memory = baseline is not None and measures_memory(problem)
    remembered = decisions.get(key)
    # A decision holds while it was made among (at least) today's contenders: a new backend is measured too (and
    # on the CPU, one made before memory was measured).
    if (remembered is not None and remembered.get("backend") in by_name
            and set(remembered.get("seconds", {})) >= set(by_name)
            and (not checks_memory or "peak_bytes" in remembered)):
        return by_name[remembered["backend"]]
    runs = {backend.name: (lambda backend=backend: run(backend)) for backend in contenders}
    timings = measure(runs)
    if all(math.isinf(seconds) for seconds in timings.values()):
        raise RuntimeError(f"every capable backend failed on {problem}")
    working = [name for name in timings if not math.isinf(timings[name])]
    baseline = next((backend.name for backend in contenders if backend.baseline and backend.name in working), None)
    peaks = peak_memory({name: runs[name] for name in working}) if checks_memory and baseline else None
    eligible = [name for name in working if peaks is None or within_memory(peaks[name], peaks[baseline])]
    best = min(eligible, key=timings.get)
    if baseline is not None and not clearly_faster(timings[best], timings[baseline]):
        best = baseline
    decisions[key] = {"backend": best, "seconds": timings, **({"peak_bytes": peaks} if peaks is not None else {})}
    disk_cache.save()
    return by_name[best]


def measured_seconds(problem) -> dict[str, float] | None:
    """The timings behind the decision for `problem`, if it was measured."""
    entry = disk_cache.decisions().get(disk_cache.problem_key(problem))
    return None if entry is None else entry.get("seconds")


def measured_peak_bytes(problem) -> dict[str, int] | None:
    """The peak memory of each contender behind the decision for `problem`, if it was measured."""
    entry = disk_cache.decisions().get(disk_cache.problem_key(problem))
    return None if entry is None else entry.get("peak_bytes")
