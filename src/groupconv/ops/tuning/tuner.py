"""Measure once, remember: which backend is fastest for a problem.

When more than one fast backend can run a problem, the dispatcher times each on the call's own
tensors (a warm-up to a steady time, then the median of 3 to 15 runs timed in alternation, more for short ops),
keeps the fastest (torch's own kernels unless another is clearly faster: `clearly_faster`) of those
that hold no more memory than torch's kernels (on the CPU, measured in one more run: `within_memory`),
and writes the decision to disk keyed by the problem (disk_cache.py), with how it was measured, if the
measurement was warm (`Measurement.warm`). The chosen backend's calls are then timed now and then, and a decision
they contradict is measured again (observation.py).

Controls: GROUPCONV_TUNE=0 (or `set_tuning(False)`) turns measuring off, and the highest-priority
capable backend runs; `clear_tuning_cache()` forgets every decision, on disk too. Forcing a
backend (`use_backend`, `set_backend`, GROUPCONV_BACKEND) bypasses tuning altogether.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Sequence

from .. import allocator
from . import disk_cache, memory, observation
from .disk_cache import warn_once
from .memory import MEASUREMENT_LOCK
from .timing import seconds_interleaved, seconds_of

TIMED_RUNS = 3
MAX_TIMED_RUNS = 15
TARGET_SECONDS = 0.01

# Warm-up to a steady state. A first call pays one-time costs (oneDNN builds its primitives, the allocator maps fresh
# pages), and in a process that has done little work yet oneDNN's kernels ran up to 10x slower for several calls: a
# measurement taken then crowned the wrong contender, and the decision stayed on disk. So each contender is called,
# in alternation with the others, until two consecutive calls agree within STEADY_TOLERANCE (or STEADY_SLACK_SECONDS,
# the clock's noise on a short op), MIN_WARMUP_CALLS to MAX_WARMUP_CALLS calls, all contenders together within
# WARMUP_BUDGET_SECONDS once each has had its minimum.
MIN_WARMUP_CALLS = 2
MAX_WARMUP_CALLS = 10
WARMUP_BUDGET_SECONDS = 2.0
STEADY_TOLERANCE = 0.15
STEADY_SLACK_SECONDS = 20e-6
# Timed runs still falling: the first half's median more than this above the second half's (and by more than the
# slack). Such a contender was not steady yet, whatever its warm-up said.
FALLING_RATIO = 1.3


@dataclass
class Measurement:
    """Each contender's median time, and how it was measured.

    `warm`: every contender came to a steady time within the warm-up's budget and none was still getting faster while
    timed. Only a warm measurement's decision is written to disk (disk_cache.record)."""

    seconds: dict[str, float]
    warmup_calls: dict[str, int] = field(default_factory=dict)
    unsteady: list[str] = field(default_factory=list)  # warm-up ran out of calls or time before two calls agreed
    falling: list[str] = field(default_factory=list)  # the timed runs were still getting faster
    timed_runs: int = 0

    @property
    def warm(self) -> bool:
        return not self.unsteady and not self.falling

    def record(self) -> dict:
        """What the cache entry says about how its decision was measured."""
        return {"warm": self.warm, "warmup_calls": self.warmup_calls, "unsteady": self.unsteady,
                "falling": self.falling, "timed_runs": self.timed_runs, "freed_memory_kept": allocator.freed_memory_kept(),
                "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _agree(a: float, b: float) -> bool:
    return abs(a - b) <= max(STEADY_TOLERANCE * min(a, b), STEADY_SLACK_SECONDS)


def warm_up(runs: dict[str, Callable[[], object]]) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Call each run, in alternation, until it is steady (see MIN_WARMUP_CALLS above); returns every warm-up call's
    time per working run, and the runs that raised (infinite time, with a warning)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    failed: dict[str, float] = {}
    pending = list(runs)
    deadline = time.perf_counter() + WARMUP_BUDGET_SECONDS
    while pending:
        for name in list(pending):
            try:
                times[name].append(seconds_of(runs[name]))
            except Exception as error:
                warn_once(f"backend {name!r} failed while being measured: {error}")
                failed[name] = math.inf
                del times[name]
                pending.remove(name)
                continue
            calls = times[name]
            if len(calls) >= MAX_WARMUP_CALLS or (len(calls) >= MIN_WARMUP_CALLS and _agree(calls[-1], calls[-2])):
                pending.remove(name)
        if time.perf_counter() > deadline and all(len(times[name]) >= MIN_WARMUP_CALLS for name in pending):
            break
    return times, failed


def _still_falling(rounds: list[float]) -> bool:
    half = len(rounds) // 2
    if half == 0:
        return False
    first, second = statistics.median(rounds[:half]), statistics.median(rounds[-half:])
    return first > FALLING_RATIO * second and first - second > STEADY_SLACK_SECONDS


def measure(runs: dict[str, Callable[[], object]], repeats: int | None = None) -> Measurement:
    """Median wall time of each run after a warm-up to a steady state, timed in alternation (the same load for all).

    Without `repeats`, short runs are repeated more (TIMED_RUNS at least, up to MAX_TIMED_RUNS, about
    TARGET_SECONDS of timing per contender): on a shared machine three runs of a 0.2 ms op decide by noise.
    A run that raises (in its warm-up) gets infinite time and a warning: a backend that fails is never chosen, and
    the decision on disk remembers that it was tried.
    """
    warmup, failed = warm_up(runs)
    working = {name: runs[name] for name in warmup}
    if repeats is None:
        typical = max(min((calls[-1] for calls in warmup.values()), default=0.0), 1e-6)
        repeats = max(TIMED_RUNS, min(MAX_TIMED_RUNS, int(TARGET_SECONDS / typical)))
    rounds = seconds_interleaved(working, repeats=repeats, warmup=0) if working else {}
    return Measurement(
        seconds={**{name: statistics.median(values) for name, values in rounds.items()}, **failed},
        warmup_calls={name: len(calls) for name, calls in warmup.items()} | {name: 1 for name in failed},
        unsteady=[name for name, calls in warmup.items()
                  if len(calls) < MIN_WARMUP_CALLS or not _agree(calls[-1], calls[-2])],
        falling=[name for name, values in rounds.items() if _still_falling(values)],
        timed_runs=repeats if working else 0)


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


def choose(problem, contenders: Sequence, run: Callable, remeasure: bool = False) -> object:
    """The fastest of `contenders` for `problem`: remembered from disk, or measured with run(backend) and saved.
    `remeasure`: measure even where a decision is remembered (the observed calls disagreed with it: observation.py).
    """
    with MEASUREMENT_LOCK:
        return _choose(problem, contenders, run, remeasure)


def _holds(remembered: dict | None, contenders: set[str], checks_memory: bool) -> bool:
    """Whether a remembered decision still holds: made among (at least) today's contenders (a new backend is measured
    too), on the CPU with memory counted where it can be counted now, and measured warm (a decision without a record
    of how it was measured predates the warm-up and may have been measured cold)."""
    return (remembered is not None and remembered.get("backend") in contenders
            and set(remembered.get("seconds", {})) >= contenders
            and (not checks_memory or "peak_bytes" in remembered)
            and remembered.get("measured", {}).get("warm") is True)


def _choose(problem, contenders: Sequence, run: Callable, remeasure: bool) -> object:
    key = disk_cache.problem_key(problem)
    by_name = {backend.name: backend for backend in contenders}
    baseline = next((backend.name for backend in contenders if backend.baseline), None)
    checks_memory = baseline is not None and measures_memory(problem)
    remembered = disk_cache.entry(key)
    if not remeasure and _holds(remembered, set(by_name), checks_memory):
        observation.expect(problem, remembered["backend"], remembered["seconds"][remembered["backend"]], cold=False)
        return by_name[remembered["backend"]]
    runs = {backend.name: (lambda backend=backend: run(backend)) for backend in contenders}
    measurement = measure(runs)
    timings = measurement.seconds
    if all(math.isinf(seconds) for seconds in timings.values()):
        raise RuntimeError(f"every capable backend failed on {problem}")
    working = [name for name in timings if not math.isinf(timings[name])]
    baseline = next((backend.name for backend in contenders if backend.baseline and backend.name in working), None)
    peaks = peak_memory({name: runs[name] for name in working}) if checks_memory and baseline else None
    eligible = [name for name in working if peaks is None or within_memory(peaks[name], peaks[baseline])]
    best = min(eligible, key=timings.get)
    if baseline is not None and not clearly_faster(timings[best], timings[baseline]):
        best = baseline
    disk_cache.record(key, {"backend": best, "seconds": timings, **({"peak_bytes": peaks} if peaks is not None else {}),
                            "measured": measurement.record()})
    observation.expect(problem, best, timings[best], cold=not measurement.warm)
    return by_name[best]


def measured_seconds(problem) -> dict[str, float] | None:
    """The timings behind the decision for `problem`, if it was measured."""
    entry = disk_cache.entry(disk_cache.problem_key(problem))
    return None if entry is None else entry.get("seconds")


def measured_peak_bytes(problem) -> dict[str, int] | None:
    """The peak memory of each contender behind the decision for `problem`, if it was measured."""
    entry = disk_cache.entry(disk_cache.problem_key(problem))
    return None if entry is None else entry.get("peak_bytes")


def measurement_record(problem) -> dict | None:
    """How the decision for `problem` was measured (Measurement.record), if it was measured and recorded."""
    entry = disk_cache.entry(disk_cache.problem_key(problem))
    return None if entry is None else entry.get("measured")
