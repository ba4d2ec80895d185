"""Measuring kernels: the tuner that picks the fastest backend per problem (tuner.py), its decisions on disk
(disk_cache.py), the re-check of a decision against the calls it serves (observation.py), and the timing and
peak-memory measurements it and the benchmarks rely on (timing.py, memory.py). The switch that turns tuning on and
off lives with the dispatcher (dispatch/selection.py)."""

from .disk_cache import ENV_CACHE_DIR, cache_path, kernels_fingerprint, sources_fingerprint
from .memory import MEASUREMENT_LOCK, can_measure, is_measuring, peak_allocated_bytes
from .timing import median_seconds, median_seconds_interleaved, seconds_interleaved
from .tuner import MEMORY_TOLERANCE, choose, clearly_faster, measure, within_memory

__all__ = [
    "ENV_CACHE_DIR", "MEASUREMENT_LOCK", "MEMORY_TOLERANCE", "cache_path", "can_measure", "choose", "clearly_faster",
    "is_measuring", "kernels_fingerprint", "measure", "median_seconds", "median_seconds_interleaved",
    "peak_allocated_bytes", "seconds_interleaved", "sources_fingerprint", "within_memory",
]
