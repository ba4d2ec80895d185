"""`groupconv benchmark layers`: every distinct grouped, depthwise and pointwise-grouped conv of the zoo's
models, forward and forward+backward, torch in NCHW and channels_last against groupconv, next to the
roofline floor max(FLOPs / peak, bytes / bandwidth) of the machine measured in the same run, and
forward+backward's peak memory against torch's in the same layout (ops.tuning.memory).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ..ops.tuning import memory
from ..analysis.roofline import MachineCeilings, machine_ceilings
from ..ops.tuning.timing import median_seconds_interleaved
from ..ops.tuning import MEMORY_TOLERANCE
from .results import geometric_mean
from .shapes import LayerShape


def layer_step(layer: torch.nn.Module, x: torch.Tensor, backward: bool):
    """A callable running layer(x), or layer(x) and its backward pass to input and weight."""
    if not backward:
        def forward():
            with torch.no_grad():
                layer(x)

        return forward
    x = x.detach().requires_grad_()
    with torch.no_grad():
        grad = torch.randn_like(layer(x))

    def step():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    return step


# Short steps get more runs than `repeats`: enough for the contenders' rounds to fill MIN_TIMED_SECONDS, up to
# MAX_REPEATS. On this shared 2-core machine five runs of a 0.5 ms step left the median 10-30% off from one run to the
# next (a 144-channel 14x14 depthwise layer measured 0.76x torch in one benchmark and 0.94-0.95x over 150 runs).
MIN_TIMED_SECONDS = 0.5
MAX_REPEATS = 100


def time_layers(steps: dict[str, object], repeats: int) -> dict[str, float]:
    """Milliseconds (median) of each step, the contenders timed in alternation so that they see the same load."""
    start = time.perf_counter()
    for step in steps.values():  # (a first warm-up run, which also says how long a round takes)
        step()
    round_seconds = max(time.perf_counter() - start, 1e-6)
    repeats = max(repeats, min(MAX_REPEATS, int(MIN_TIMED_SECONDS / round_seconds)))
    return {name: 1e3 * seconds for name, seconds in median_seconds_interleaved(steps, repeats=repeats,
                                                                                warmup=1).items()}


@dataclass
class LayerResult:
    model: str
    layer: str
    shape: str
    kind: str
    passes: str  # "forward" or "forward+backward"
    torch_nchw_ms: float
    torch_channels_last_ms: float
    groupconv_ms: float  # NCHW input, the user's default
    groupconv_channels_last_ms: float
    floor_ms: float
    # Forward+backward: the most memory groupconv's step held at once over torch's, in the same layout (NCHW, and
    # channels_last); 1 means as much. None for the forward (the memory rule, never more than torch's, is about forward+backward).
    peak_memory_vs_torch: float | None = None
    peak_memory_vs_torch_channels_last: float | None = None

    @property
    def peak_memory_ratio(self) -> float | None:
        """The larger of the two layouts' peak-memory ratios."""
        if self.peak_memory_vs_torch is None:
            return None
        return max(self.peak_memory_vs_torch, self.peak_memory_vs_torch_channels_last)

    @property
    def speedup_over_nchw(self) -> float:
        return self.torch_nchw_ms / self.groupconv_ms

    @property
    def speedup_over_best_torch(self) -> float:
        return min(self.torch_nchw_ms, self.torch_channels_last_ms) / min(self.groupconv_ms,
                                                                          self.groupconv_channels_last_ms)

    @property
    def ratio_to_floor(self) -> float:
        return min(self.groupconv_ms, self.groupconv_channels_last_ms) / self.floor_ms

    def record(self) -> dict:
        return {**asdict(self), "speedup_over_nchw": round(self.speedup_over_nchw, 3),
                "speedup_over_best_torch": round(self.speedup_over_best_torch, 3),
                "ratio_to_floor": round(self.ratio_to_floor, 2)}


def layer_benchmark(shapes: list[LayerShape], batch: int = 32, repeats: int = 5, backward_too: bool = True,
                    ceilings: MachineCeilings | None = None, progress=print) -> list[LayerResult]:
    ceilings = ceilings or machine_ceilings()
    results = []
    for shape in shapes:
        torch.manual_seed(0)
        ours = shape.groupconv_layer()
        theirs = shape.torch_layer(ours)
        x = torch.randn(batch, shape.in_channels, shape.height, shape.width)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for backward in ((False, True) if backward_too else (False,)):
            steps = {"torch_nchw_ms": layer_step(theirs, x, backward),
                     "torch_channels_last_ms": layer_step(theirs, x_cl, backward),
                     "groupconv_ms": layer_step(ours, x, backward),
                     "groupconv_channels_last_ms": layer_step(ours, x_cl, backward)}
            ms = time_layers(steps, repeats)
            memory_ratios = {}
            if backward and memory.can_measure():  # (after the timing: the choices are made, no tuning counts)
                peak = {name: memory.peak_allocated_bytes(step) for name, step in steps.items()}
                memory_ratios = {"peak_memory_vs_torch": peak["groupconv_ms"] / peak["torch_nchw_ms"],
                                 "peak_memory_vs_torch_channels_last":
                                     peak["groupconv_channels_last_ms"] / peak["torch_channels_last_ms"]}
            result = LayerResult(shape.model, shape.layer, shape.label(), shape.kind,
                                 "forward+backward" if backward else "forward", **ms,
                                 floor_ms=1e3 * shape.floor_seconds(batch, ceilings, backward), **memory_ratios)
            results.append(result)
            if progress:
                progress(format_layer_row(result))
    return results


LAYER_HEADER = (f"{'layer':52} {'pass':>6} {'torch':>8} {'torch CL':>8} {'ours':>8} {'ours CL':>8} "
                f"{'floor':>7} {'xfloor':>6} {'vs NCHW':>7} {'vs best':>7} {'memory':>6}")


def format_layer_row(r: LayerResult) -> str:
    passes = "f" if r.passes == "forward" else "fb"
    return (f"{r.shape:52} {passes:>6} {r.torch_nchw_ms:8.2f} {r.torch_channels_last_ms:8.2f} {r.groupconv_ms:8.2f} "
            f"{r.groupconv_channels_last_ms:8.2f} {r.floor_ms:7.2f} {r.ratio_to_floor:6.1f} "
            f"{r.speedup_over_nchw:6.2f}x {r.speedup_over_best_torch:6.2f}x"
            + (f" {r.peak_memory_ratio:5.2f}x" if r.peak_memory_ratio is not None else ""))


def summarise_layers(results: list[LayerResult]) -> str:
    lines = []
    for passes in ("forward", "forward+backward"):
        chosen = [r for r in results if r.passes == passes]
        if not chosen:
            continue
        worst = min(chosen, key=lambda r: r.speedup_over_best_torch)
        lines.append(
            f"{passes:>16}: geometric-mean speedup {geometric_mean(r.speedup_over_nchw for r in chosen):.2f}x over "
            f"torch NCHW, {geometric_mean(r.speedup_over_best_torch for r in chosen):.2f}x over torch's faster layout; "
            f"slowest {worst.speedup_over_best_torch:.2f}x ({worst.shape}); "
            f"median {statistics.median(r.ratio_to_floor for r in chosen):.1f}x the floor")
    measured = [r for r in results if r.peak_memory_ratio is not None]
    if measured:
        most = max(measured, key=lambda r: r.peak_memory_ratio)
        above = sum(r.peak_memory_ratio > 1 + MEMORY_TOLERANCE for r in measured)  # (the tuner's tolerance)
        lines.append(f"{'peak memory':>16}: forward+backward holds more than torch's in the same layout on {above} of "
                     f"{len(measured)} layers; most {most.peak_memory_ratio:.2f}x ({most.shape})")
    return "\n".join(lines)
