"""`groupconv benchmark inference`: eval-mode forward times of a zoo model run six ways, timed in alternation in one
run: groupconv.inference.optimize_for_inference's model, groupconv's eager model (NCHW and channels_last), the same
model from plain torch.nn layers (twins.py; NCHW and channels_last), ONNX Runtime on the model's ONNX export, and
OpenVINO on the same file where it is installed. Each time is printed with its ratio to ONNX Runtime's and the
fraction of the machine's compute ceiling (measured matmul peak) the model's FLOPs reach in it.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from dataclasses import dataclass, field

import torch

from .. import models
from ..analysis.cost import count_multiply_adds
from ..analysis.roofline import MachineCeilings
from ..inference import optimize_for_inference
from ..ops.tuning.timing import median_seconds_interleaved
from .twins import to_torch_layers

INFERENCE_MODELS = ("shufflenet_g8_w1", "shufflenet_g3_w1", "shufflenet_g1_w1", "mobilenet_w1", "resnext29_32x4d")
OPTIMIZED = "groupconv optimized"
OPENVINO = "OpenVINO"
# The 1/G comparison: ShuffleNet 1x with 8 groups against 1 group, about the same multiply-adds (Zhang et al. 2018).
GROUPED_PAIR = ("shufflenet_g8_w1", "shufflenet_g1_w1")
BATCH_SIZES = (1, 32)
REPEATS = 11
# Idle time before each timed forward: ONNX Runtime's and OpenVINO's worker threads spin for a while after a run,
# and took the cores from the way timed next (measured: groupconv's optimised ShuffleNet g=8 at batch 1, 10.9 ms
# alone, 31.7 ms right after OpenVINO's run).
PAUSE_SECONDS = 0.05
ONNX_RUNTIME = "ONNX Runtime"


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


def _eager(model: torch.nn.Module, x: torch.Tensor):
    def run():
        with torch.no_grad():
            model(x)
    return run


def export_onnx(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    """The model exported by torch.onnx.export's TorchScript-based exporter (static shapes: those of `x`)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # (the tracer's notes on Python-level checks, which hold for static shapes)
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["input"], output_names=["output"])
    return buffer.getvalue()


def run_with_onnx_runtime(onnx_file: bytes, x: torch.Tensor):
    """ONNX Runtime's CPU session on the file: default graph optimisations, torch's thread count."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    return lambda: session.run(None, feed)


def run_with_openvino(onnx_file: bytes, x: torch.Tensor):
    """OpenVINO's CPU plugin compiled from the same ONNX file, torch's thread count, float32 arithmetic (on a CPU
    with bfloat16 instructions its default is bfloat16, which would time other arithmetic); None where not
    installed."""
    try:
        import openvino
    except ImportError:
        return None
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(onnx_file), "CPU",
                                  {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    array = x.numpy()
    return lambda: request.infer([array])


def inference_benchmark(names=INFERENCE_MODELS, batch_sizes=BATCH_SIZES, repeats: int = REPEATS,
                        image_size: int | None = None, progress=print) -> list[InferenceResult]:
    """Every model at every batch size, its ways of running timed in alternation (median of `repeats`)."""
    results = []
    for name in names:
        torch.manual_seed(0)
        model = models.create_model(name).eval()
        twin = to_torch_layers(model).eval()
        channels, height, width = models.model_entry(name).input_size
        if image_size is not None:
            height = width = image_size
        for batch in batch_sizes:
            x = torch.randn(batch, channels, height, width)
            flops = 2 * count_multiply_adds(model, x)
            result = InferenceResult(name, batch, height, flops)
            channels_last = x.contiguous(memory_format=torch.channels_last)
            ways = {OPTIMIZED: (lambda optimized=optimize_for_inference(model, x): optimized(x)),
                    "groupconv eager": _eager(model, x),
                    "groupconv eager CL": _eager(copy.deepcopy(model).to(memory_format=torch.channels_last),
                                                 channels_last),
                    "torch eager": _eager(twin, x),
                    "torch eager CL": _eager(copy.deepcopy(twin).to(memory_format=torch.channels_last), channels_last)}
            try:
                onnx_file = export_onnx(model, x)
                ways[ONNX_RUNTIME] = run_with_onnx_runtime(onnx_file, x)
                openvino = run_with_openvino(onnx_file, x)
            except ImportError as error:
                result.notes.append(f"ONNX Runtime and OpenVINO skipped: {error} (pip install groupconv[export])")
                openvino = None
            if openvino is not None:
                ways[OPENVINO] = openvino
            elif not result.notes:
                result.notes.append("OpenVINO skipped: not installed (pip install groupconv[openvino])")
            seconds = median_seconds_interleaved(ways, repeats=repeats, warmup=2, pause=PAUSE_SECONDS)
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
