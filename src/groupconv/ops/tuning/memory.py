"""Peak memory of a CPU computation: the check behind "never allocate more in forward+backward than torch would".

torch keeps no statistics for its CPU allocator (CUDA has torch.cuda.max_memory_allocated). groupconv's native
module stands a counting allocator in for torch's CPU allocator while `fn` runs (csrc/memory_tracking.cpp): it
counts every tensor, and oneDNN's reorder and scratch buffers, which PyTorch takes from the same allocator. Memory a
kernel takes from malloc directly is not seen; groupconv's kernels take only small per-thread buffers that way.
(torch.profiler's memory records would do too, but its start and stop print to stderr in this torch build, and a
profiler cannot run inside a user's profiling session: the tuner measures inside training loops.)
"""

from __future__ import annotations

import threading
from typing import Callable

from ..backends.native import build

# One measurement at a time in this process, the tuner's timings and these memory counts alike: two threads
# measuring at once would time each other's load, count each other's allocations as their contenders', and write the
# decisions while the other adds one. A thread that waits here finds the decision the other made. One lock for both,
# so that no two threads can take them in opposite orders; reentrant, so that a measurement may call what chooses (a
# strategy's parts, a user's peak_allocated_bytes around a first call).
MEASUREMENT_LOCK = threading.RLock()

# The counting allocator is one for the process: one measurement at a time (MEASUREMENT_LOCK: another thread waits;
# another thread's allocations that do not wait, outside groupconv's measurements, still count), and none inside
# another in the same thread.
_thread = threading.local()


def can_measure() -> bool:
    """Whether peak memory can be measured here: the native module is built (backends/native)."""
    return build.load() is not None


def is_measuring() -> bool:
    """Whether this thread is inside `peak_allocated_bytes`."""
    return getattr(_thread, "measuring", False)


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """The most bytes that tensors allocated while fn() runs held at one time (freed ones no longer count; memory
    that existed before is not counted). A first groupconv call inside fn that tunes counts its measurement runs too.
    Raises RuntimeError where `can_measure()` is False, or inside another measurement in the same thread."""
    module = build.load()
    if module is None:
        raise RuntimeError(f"peak memory cannot be measured: {build.unavailable_reason()}")
    with MEASUREMENT_LOCK:
        if is_measuring():
            raise RuntimeError("peak_allocated_bytes: a measurement is already running in this thread; they do not "
                               "nest (one counter for the process)")
        _thread.measuring = True
        try:
            module.start_memory_tracking()
            try:
                fn()
            finally:
                peak = module.stop_memory_tracking()
        finally:
            _thread.measuring = False
    return peak
