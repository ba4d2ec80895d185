"""`groupconv benchmark inference`: eval-mode forward times of a zoo model run up to seven ways, timed in
alternation in one run: groupconv.inference.optimize_for_inference's model, groupconv's eager model (NCHW and
channels_last), the same model from plain torch.nn layers (twins.py; NCHW and channels_last), ONNX Runtime on the
model's ONNX export, and OpenVINO on the same file where it is installed. Each way runs in a process of its own
(inference_ways.py says why). Each time is printed with its ratio to ONNX Runtime's and the fraction of the machine's
compute ceiling (measured matmul peak) the model's FLOPs reach in it.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..analysis.cost import count_multiply_adds
from ..analysis.roofline import MachineCeilings
from ..ops.tuning.timing import median_seconds_interleaved
from .inference_ways import (EAGER_WAYS, ONNX_RUNTIME, OPENVINO, OPTIMIZED, WayProcess, export_onnx, model_input,
                             runtime_ways, zoo_model)

INFERENCE_MODELS = ("shufflenet_g8_w1", "shufflenet_g3_w1", "shufflenet_g1_w1", "mobilenet_w1", "resnext29_32x4d")
# The 1/G comparison: ShuffleNet 1x with 8 groups against 1 group, about the same multiply-adds (Zhang et al. 2018).
GROUPED_PAIR = ("shufflenet_g8_w1", "shufflenet_g1_w1")
BATCH_SIZES = (1, 32)
REPEATS = 11
# Idle time before each timed forward: ONNX Runtime's and OpenVINO's worker threads spin for a while after a run,
# and took the cores from the way timed next (measured: groupconv's optimised ShuffleNet g=8 at batch 1, 10.9 ms
# alone, 31.7 ms right after OpenVINO's run). Processes of their own do not change that: the cores are shared.
PAUSE_SECONDS = 0.05


@dataclass
class InferenceResult:
    """One model at one batch size: milliseconds per forward of each way of running it."""

    model: str
    batch: int
    image_size: int
    flops: int  # per forward of the whole batch (2 x multiply-adds)
    milliseconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def ratio_to_onnx_runtime(self, who: str) -> float | None:
        """`who`'s time over ONNX Runtime's (below 1: faster than ONNX Runtime)."""
        if ONNX_RUNTIME not in self.milliseconds:
            return None
        return self.milliseconds[who] / self.milliseconds[ONNX_RUNTIME]

    def fraction_of_peak(self, who: str, ceilings: MachineCeilings) -> float:
        return ceilings.compute_seconds(self.flops) / (self.milliseconds[who] / 1e3)

    def records(self, ceilings: MachineCeilings) -> list[dict]:
        return [{"model": self.model, "batch": self.batch, "image_size": self.image_size, "way": who,
                 "milliseconds": round(ms, 4), "ratio_to_onnx_runtime": self.ratio_to_onnx_runtime(who),
                 "fraction_of_peak": round(self.fraction_of_peak(who, ceilings), 4)}
                for who, ms in self.milliseconds.items()]


def inference_benchmark(names=INFERENCE_MODELS, batch_sizes=BATCH_SIZES, repeats: int = REPEATS,
                        image_size: int | None = None, progress=print) -> list[InferenceResult]:
    """Every model at every batch size, its ways of running (each in a process of its own, loaded one after the
    other) timed in alternation (median of `repeats`)."""
    results = []
    runtimes, notes = runtime_ways()
    with tempfile.TemporaryDirectory(prefix="groupconv-inference-") as directory:
        for name in names:
            model = zoo_model(name)
            for batch in batch_sizes:
                x = model_input(name, batch, image_size)
                result = InferenceResult(name, batch, x.shape[-1], 2 * count_multiply_adds(model, x),
                                         notes=list(notes))
                onnx_path = Path(directory) / f"{name}-{batch}.onnx"
                if runtimes:
                    onnx_path.write_bytes(export_onnx(model, x))
                with contextlib.ExitStack() as processes:
                    ways = {way: processes.enter_context(WayProcess(way, name, batch, image_size, str(onnx_path)))
                            for way in (OPTIMIZED, *EAGER_WAYS, *runtimes)}
                    seconds = median_seconds_interleaved(ways, repeats=repeats, warmup=1, pause=PAUSE_SECONDS,
                                                         measure=lambda way: way())
                result.milliseconds = {who: 1e3 * s for who, s in seconds.items()}
                results.append(result)
                if progress:
                    progress(result)
    return results


def summary(results: list[InferenceResult]) -> str:
    """groupconv's optimised model against ONNX Runtime and OpenVINO over every model and batch (geometric mean of
    the speed-ups, above 1: groupconv faster), and the 1/G comparison: ShuffleNet g=8's time over g=1's at each batch
    size for every way (1.0: the 8 groups cost nothing more)."""
    lines = []
    for rival in (ONNX_RUNTIME, OPENVINO):
        pairs = [(r.model, r.batch, r.milliseconds[rival] / r.milliseconds[OPTIMIZED]) for r in results
                 if rival in r.milliseconds and OPTIMIZED in r.milliseconds]
        if pairs:
            geometric_mean = math.exp(sum(math.log(speedup) for *_, speedup in pairs) / len(pairs))
            slower = [f"{model} batch {batch} ({speedup:.2f}x)" for model, batch, speedup in pairs if speedup < 1]
            lines.append(f"{OPTIMIZED} vs {rival}: speed-up {geometric_mean:.2f}x (geometric mean of {len(pairs)}), "
                         f"slower on {len(slower)}" + (f": {', '.join(slower)}" if slower else ""))
    by_key = {(r.model, r.batch): r for r in results}
    for batch in dict.fromkeys(r.batch for r in results):
        grouped, dense = (by_key.get((name, batch)) for name in GROUPED_PAIR)
        if grouped and dense:
            ratios = ", ".join(f"{who} {grouped.milliseconds[who] / dense.milliseconds[who]:.2f}x"
                               for who in grouped.milliseconds if who in dense.milliseconds)
            lines.append(f"1/G at batch {batch}: {GROUPED_PAIR[0]} time over {GROUPED_PAIR[1]}'s: {ratios}")
    return "\n".join(lines)


def format_result(result: InferenceResult, ceilings: MachineCeilings) -> str:
    lines = [f"\n{result.model}, batch {result.batch}, {result.image_size}x{result.image_size}, "
             f"{result.flops / 1e9:.3f} GFLOP per forward",
             f"  {'way':22} {'ms':>9} {'vs ORT':>7} {'of peak':>8}"]
    for who, ms in result.milliseconds.items():
        ratio = result.ratio_to_onnx_runtime(who)
        lines.append(f"  {who:22} {ms:9.2f} {'' if ratio is None else f'{ratio:6.2f}x':>7} "
                     f"{100 * result.fraction_of_peak(who, ceilings):7.1f}%")
    lines += [f"  ({note})" for note in result.notes]
    return "\n".join(lines)
