"""Large CPU tensors without page faults at every step: keep freed memory in the process for reuse.

glibc serves an allocation above its mmap threshold (32 MiB at most) with a fresh mmap and gives
it back to the system when it is freed. A training step allocates and frees the same large
activations and gradients every step, so it pays their page faults (the kernel zero-fills every
4 KiB page) again and again: in ShuffleNet 1x g=8 at batch 32 a 38 MB ReLU gradient costs 10 ms
instead of 2, and the step spends about a third of its time faulting pages (measured on 2
CPU cores). torch has no caching allocator for the CPU.

`keep_freed_memory()` tells glibc to serve every allocation from its heap (M_MMAP_MAX = 0) and to
keep freed heap memory (M_TRIM_THRESHOLD at its maximum), which is what CUDA's caching allocator
does on the GPU: the process keeps its peak footprint for reuse, and page faults happen once. It
is a process-wide setting, so `groupconv train` and `groupconv benchmark` apply it for the whole
process (every contender of a benchmark runs under it), and so do `groupconv.accelerate()` and
`groupconv.inference.optimize_for_inference()` unless told not to; a library user may also call it.
GROUPCONV_KEEP_FREED_MEMORY=0 turns it off for processes that must give memory back.

The tuner's decisions measured with freed memory kept have a cache file of their own: page faults
weigh on the contenders unequally (torch's depthwise conv allocates twice what groupconv's does), so
the faster one can change with the setting.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from .. import environment

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
LARGEST_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int
ENV_KEEP_FREED_MEMORY = "GROUPCONV_KEEP_FREED_MEMORY"

_kept: bool | None = None  # None: not asked yet


def keep_freed_memory() -> bool:
    """Apply the setting once per process; True where it took effect (glibc), False elsewhere or where
    GROUPCONV_KEEP_FREED_MEMORY=0 (nothing changes)."""
    global _kept
    if _kept is None:
        _kept = environment.flag(ENV_KEEP_FREED_MEMORY, True) and _apply()
    return _kept


def freed_memory_kept() -> bool:
    """Whether keep_freed_memory() has taken effect in this process."""
    return bool(_kept)


def release_free_memory() -> bool:
    """Give the memory malloc holds free back to the system now (glibc's malloc_trim), kept or not: after a one-time
    burst of allocations (optimize_for_inference's timing of each layer's kernels) whose free blocks the process's
    later calls would only partly reuse. True where it ran (glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    libc.malloc_trim(0)
    return True


def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc, else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.gnu_get_libc_version  # only glibc has it; musl and macOS ignore or lack mallopt and malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def _apply() -> bool:
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, LARGEST_TRIM_THRESHOLD))
