"""Measure once, remember: which backend is fastest for a problem, cached in memory and on disk.

When more than one fast backend can run a problem, the dispatcher times each on the call's own
tensors (one warm-up, then the median of 3 to 15 runs timed in alternation, more for short ops),
keeps the fastest (torch's own kernels unless another is clearly faster: `clearly_faster`) of those
that hold no more memory than torch's kernels (on the CPU, measured in one more run: `within_memory`),
and writes the decision to a JSON file keyed by the problem (op, shapes, stride/padding/dilation/groups,
layout, dtype, device, thread count). The file name carries the torch version, the CPU (and GPUs) and a
hash of groupconv's kernel sources, so a decision is never reused on another machine or build, nor after
the kernels it measured change. Later processes read the file and measure nothing.

Controls: GROUPCONV_TUNE=0 (or `set_tuning(False)`) turns measuring off, and the highest-priority
capable backend runs; GROUPCONV_CACHE_DIR moves the cache (default: $XDG_CACHE_HOME/groupconv or
~/.cache/groupconv); `clear_tuning_cache()` forgets every decision, on disk too. Forcing a
backend (`use_backend`, `set_backend`, GROUPCONV_BACKEND) bypasses tuning altogether.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

ENV_TUNE = "GROUPCONV_TUNE"
ENV_CACHE_DIR = "GROUPCONV_CACHE_DIR"
TIMED_RUNS = 3
MAX_TIMED_RUNS = 15
TARGET_SECONDS = 0.01

_enabled_override: bool | None = None
_decisions: dict[str, dict] | None = None  # the disk file's contents, loaded on first use
_warned: set[str] = set()


def set_tuning(enabled: bool | None) -> None:
    """Turn measuring on or off for this process (None: follow GROUPCONV_TUNE, default on)."""
    global _enabled_override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled={enabled!r} must be True, False or None")
    _enabled_override = enabled
    from .dispatch import forget_choices  # the in-memory choices were made under the old setting

    forget_choices()


def tuning_enabled() -> bool:
    if _enabled_override is not None:
        return _enabled_override
    return os.environ.get(ENV_TUNE, "1").strip().lower() not in ("0", "false", "off", "no")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The code whose speed the decisions measured: groupconv's compiled and Triton kernels. A decision measured against
# other kernels (an earlier groupconv) does not hold for these, so the cache file is named after their contents too.
_KERNEL_SOURCES = ("csrc/*.cpp", "csrc/*.h", "ops/triton/kernels.py")


@functools.cache
def kernels_fingerprint() -> str:
    """A short hash of groupconv's kernel sources (what a tuning decision measured)."""
    return sources_fingerprint(Path(__file__).resolve().parent.parent)


def sources_fingerprint(package: Path) -> str:
    """A short hash of the kernel sources under `package` (groupconv's directory layout)."""
    digest = hashlib.sha1()
    for pattern in _KERNEL_SOURCES:
        for path in sorted(package.glob(pattern)):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:8]


def cache_path() -> Path:
    """The JSON file holding the decisions of this machine, this torch build and these kernels."""
    root = os.environ.get(ENV_CACHE_DIR)
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "groupconv"
    # The GPUs too: a decision between Triton and cuDNN measured on one card does not hold on another.
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    machine = hashlib.sha1(f"{platform.machine()}|{_cpu_name()}|{'|'.join(gpus)}".encode()).hexdigest()[:10]
    return Path(root) / f"tuning-torch{torch.__version__}-{machine}-kernels{kernels_fingerprint()}.json"


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(f"groupconv tuning: {message}", RuntimeWarning, stacklevel=3)


def _load() -> dict[str, dict]:
    global _decisions
    if _decisions is None:
        path = cache_path()
        try:
            _decisions = json.loads(path.read_text()) if path.exists() else {}
            if not isinstance(_decisions, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:
            _warn_once(f"ignoring unreadable cache {path} ({error}); decisions will be measured again")
            _decisions = {}
    return _decisions


def _save() -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a crash or a concurrent process never leaves a half-written file.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
            json.dump(_decisions, f, indent=1, sort_keys=True)
        os.replace(f.name, path)
    except OSError as error:
        _warn_once(f"cannot write {path} ({error}); decisions are kept for this process only")


def clear_tuning_cache() -> None:
    """Forget every measured decision, in this process and on disk."""
    global _decisions
    _decisions = {}
    cache_path().unlink(missing_ok=True)
    from .dispatch import forget_choices

    forget_choices()


def problem_key(problem) -> str:
    return repr(problem)


def measure(runs: dict[str, Callable[[], object]], repeats: int | None = None) -> dict[str, float]:
    """Median wall time of each run after one warm-up call, timed in alternation (the same load for all).

    Without `repeats`, short runs are repeated more (TIMED_RUNS at least, up to MAX_TIMED_RUNS, about
    TARGET_SECONDS of timing per contender): on a shared machine three runs of a 0.2 ms op decide by noise.
    A run that raises (in its warm-up) gets infinite time and a warning: a backend that fails is never chosen, and
    the decision on disk remembers that it was tried.
    """
    from ..analysis.timing import median_seconds_interleaved  # the project's timing rule; imported late (no cycle)

    working, failed, warm_seconds = {}, {}, []
    for name, run in runs.items():
        try:
            start = time.perf_counter()
            run()
            warm_seconds.append(time.perf_counter() - start)
        except Exception as error:
            _warn_once(f"backend {name!r} failed while being measured: {error}")
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
# other route (library.EagerCall.runs_on_torch). A near tie (a 7x7 depthwise layer: 86 us against 87) is a loss.
BASELINE_MARGIN = 0.03  # and timing noise: a contender must also be 3% faster
BASELINE_OVERHEAD_SECONDS = 30e-6


def clearly_faster(seconds: float, baseline_seconds: float) -> bool:
    """Whether a contender measured at `seconds` beats torch's kernels (`baseline_seconds`) by enough to be chosen."""
    return seconds < baseline_seconds * (1 - BASELINE_MARGIN) - BASELINE_OVERHEAD_SECONDS


# One measurement at a time in this process, the tuner's timings and analysis.memory's counts alike: two threads
# measuring at once would time each other's load, count each other's allocations as their contenders', and write the
# decisions while the other adds one. A thread that waits here finds the decision the other made. One lock for both,
# so that no two threads can take them in opposite orders; reentrant, so that a measurement may call what chooses (a
# strategy's parts, a user's peak_allocated_bytes around a first call).
MEASUREMENT_LOCK = threading.RLock()


# The rule: groupconv's forward+backward never holds more memory than torch's would. On the CPU, each
# contender's peak memory is measured once more after the timings (analysis.memory), and one that holds more than
# torch's kernels for the same op is not chosen, however fast. (Converting an NCHW ResNeXt 3x3 conv's operands to
# channels_last for the faster kernels, via_channels_last, holds one activation more than oneDNN's NCHW path.)
MEMORY_TOLERANCE = 0.01  # within 1%: the allocator's bookkeeping, a scratch buffer of another size


def measures_memory(problem) -> bool:
    """Whether the tuner weighs memory for `problem`: a CPU problem, where the native module (which counts the CPU
    allocator's bytes) is built, and no peak-memory measurement is running in this thread already (a user's
    `peak_allocated_bytes` around a first call: counts do not nest); elsewhere it decides by time alone, and the
    decision is weighed again in a later process."""
    from ..analysis import memory  # (imported late: analysis imports the ops)

    return problem.device_type == "cpu" and memory.can_measure() and not memory.is_measuring()


def peak_memory(runs: dict[str, Callable[[], object]]) -> dict[str, int]:
    """The peak bytes each run holds (analysis.memory)."""
    from ..analysis import memory

    return {name: memory.peak_allocated_bytes(run) for name, run in runs.items()}


def within_memory(peak_bytes: int, baseline_peak_bytes: int) -> bool:
    """Whether a contender whose run held `peak_bytes` at most holds no more than torch's kernels."""
    return peak_bytes <= baseline_peak_bytes * (1 + MEMORY_TOLERANCE)


def choose(problem, contenders: Sequence, run: Callable) -> object:
    """The fastest of `contenders` for `problem`: remembered from disk, or measured with run(backend) and saved."""
    with MEASUREMENT_LOCK:
        return _choose(problem, contenders, run)


def _choose(problem, contenders: Sequence, run: Callable) -> object:
    decisions = _load()
    key = problem_key(problem)
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
    _save()
    return by_name[best]


def measured_seconds(problem) -> dict[str, float] | None:
    """The timings behind the decision for `problem`, if it was measured."""
    entry = _load().get(problem_key(problem))
    return None if entry is None else entry.get("seconds")


def measured_peak_bytes(problem) -> dict[str, int] | None:
    """The peak memory of each contender behind the decision for `problem`, if it was measured."""
    entry = _load().get(problem_key(problem))
    return None if entry is None else entry.get("peak_bytes")
