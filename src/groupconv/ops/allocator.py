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

from . import environment

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


def _apply() -> bool:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        gnu_libc = libc.gnu_get_libc_version  # only glibc has both; musl and macOS ignore or lack mallopt
    except (OSError, AttributeError, TypeError):
        return False
    del gnu_libc
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, LARGEST_TRIM_THRESHOLD))
