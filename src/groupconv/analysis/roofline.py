"""Machine ceilings and the roofline: the fastest a layer can possibly run on this machine.

A layer needs at least FLOPs / peak seconds to compute and bytes / bandwidth seconds to move its
data; whichever is larger is its floor, and the layer is "compute bound" or "memory bound"
accordingly (Williams, Waterman, Patterson 2009). ShuffleNet V2 (Ma et al. 2018) made the point
for grouped convolutions: at equal FLOPs, more groups mean more memory traffic per FLOP, so
grouped and depthwise layers sit under the memory roof, where the 1/G saving in FLOPs buys nothing.

The ceilings are either given (e.g. a machine's 500 GFLOP/s and 66.8 GB/s from its
specification) or measured in a fraction of a second: a dense float32 matmul
for the compute peak and a large tensor copy for the bandwidth (bytes read + bytes written, the
same convention as the traffic of a layer). Quick measurements on a shared machine come out low
when other work competes for the cores; `source` always says which numbers were used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.tuning.timing import seconds_of
from ..ops.tuning.tuner import warm_up


@dataclass(frozen=True)
class MachineCeilings:
    """Compute peak (GFLOP/s) and memory bandwidth (GB/s, 1 GB = 1e9 bytes), and where they came from."""

    peak_gflops: float
    bandwidth_gbs: float
    source: str

    def __post_init__(self):
        for name in ("peak_gflops", "bandwidth_gbs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name}={value!r} must be a positive number")

    def compute_seconds(self, flops: float) -> float:
        return flops / (self.peak_gflops * 1e9)

    def memory_seconds(self, traffic_bytes: float) -> float:
        return traffic_bytes / (self.bandwidth_gbs * 1e9)

    def seconds(self, flops: float, traffic_bytes: float) -> float:
        """Roofline time: max(FLOPs / peak, bytes / bandwidth)."""
        return max(self.compute_seconds(flops), self.memory_seconds(traffic_bytes))

    def bound(self, flops: float, traffic_bytes: float) -> str:
        """'compute' or 'memory': which ceiling sets the roofline time."""
        return "compute" if self.compute_seconds(flops) >= self.memory_seconds(traffic_bytes) else "memory"

    def ridge_intensity(self) -> float:
        """Arithmetic intensity (FLOP/byte) where the two roofs meet; below it a layer is memory bound."""
        return self.peak_gflops / self.bandwidth_gbs


def measure_peak_gflops(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> float:
    """GFLOP/s of a dense size x size float32 matmul (2 * size^3 FLOPs), the best case for the CPU's FPUs: the fastest
    of `repeats` runs of each size after a warm-up to a steady time. (A cold process's first matmuls run up to several
    times slower, and a 1024^3 one alone stays below what well-blocked convolutions reach on 2 cores: a ceiling
    measured that way let whole models pass 100% of it.)"""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        out = torch.empty(size, size)
        run = lambda: torch.mm(a, b, out=out)  # noqa: E731
        warm_up({"matmul": run})
        best = max(best, 2 * size**3 / min(seconds_of(run) for _ in range(repeats)) / 1e9)
    return best


def measure_bandwidth_gbs(megabytes: int = 128, repeats: int = 5) -> float:
    """GB/s of copying a large float32 tensor into a preallocated one, counting bytes read plus bytes written.

    The destination is allocated once and touched by the warm-up copies, so page faults of a fresh
    allocation (several ms for 50 MB) are not counted.
    """
    source = torch.randn(megabytes * 2**20 // 4)
    destination = torch.empty_like(source)
    run = lambda: destination.copy_(source)  # noqa: E731
    warm_up({"copy": run})
    return 2 * source.nbytes / min(seconds_of(run) for _ in range(repeats)) / 1e9


def machine_ceilings(peak_gflops: float | None = None, bandwidth_gbs: float | None = None) -> MachineCeilings:
    """The ceilings to use: the given ones, and a quick measurement of whichever is not given."""
    threads = torch.get_num_threads()
    parts = []
    if peak_gflops is None:
        peak_gflops = measure_peak_gflops()
        parts.append(f"peak {peak_gflops:.0f} GFLOP/s measured now (the best of 1024^3 and 2048^3 float32 matmuls, "
                     f"{threads} threads)")
    else:
        parts.append(f"peak {peak_gflops:g} GFLOP/s given")
    if bandwidth_gbs is None:
        bandwidth_gbs = measure_bandwidth_gbs()
        parts.append(f"bandwidth {bandwidth_gbs:.1f} GB/s measured now (128 MiB copy, read + write)")
    else:
        parts.append(f"bandwidth {bandwidth_gbs:g} GB/s given")
    return MachineCeilings(float(peak_gflops), float(bandwidth_gbs), "; ".join(parts))
