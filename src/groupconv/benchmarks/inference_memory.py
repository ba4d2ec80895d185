"""`groupconv benchmark inference-memory`: the peak memory of loading a model and running its eval-mode forwards,
groupconv.inference.optimize_for_inference's model against ONNX Runtime and OpenVINO on the model's ONNX export.

Each way runs in a process of its own, so that one's high-water mark is not another's: the process imports what the
way needs and makes the input, then its resident memory is the baseline; it loads the model (groupconv: the zoo
model built and optimised, as a user's script would; the runtimes: a session compiled from the ONNX file) and runs
REPEATS forwards. The peak is the process's resident high-water mark (Linux's VmHWM, reset after the imports) over
the baseline: weights, the runtime's own copies of them, activations and workspaces. The steady peak is the same
over the forwards after the first (the high-water mark reset after it): what serving the model holds, without the
one-time work of loading it (groupconv's timing of each layer's kernels, a runtime's graph compilation). Linux only
(/proc).

    groupconv benchmark inference-memory [--models ...] [--batch-sizes 1,32]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .inference import BATCH_SIZES, INFERENCE_MODELS
from .inference_ways import (ONNX_RUNTIME, OPENVINO, OPTIMIZED, export_onnx, load_way, model_input, runtime_ways,
                             zoo_model)

REPEATS = 4
# A way's process: importing torch and building and optimising the largest default model take about 10 s.
PROCESS_TIMEOUT_SECONDS = 600


@dataclass
class MemoryResult:
    """One model at one batch size: each way's peak resident memory over its process's baseline, loading included
    and in the steady state, in MiB."""

    model: str
    batch: int
    peak_mib: dict[str, float]
    steady_mib: dict[str, float]
    notes: list[str]

    def ratios_to_onnx_runtime(self, who: str) -> tuple[float, float] | None:
        """`who`'s peak and steady peak over ONNX Runtime's (below 1: less)."""
        if ONNX_RUNTIME not in self.peak_mib:
            return None
        return (self.peak_mib[who] / self.peak_mib[ONNX_RUNTIME],
                self.steady_mib[who] / self.steady_mib[ONNX_RUNTIME])

    def records(self) -> list[dict]:
        """One CSV row per way."""
        rows = []
        for who, mib in self.peak_mib.items():
            ratios = self.ratios_to_onnx_runtime(who)
            rows.append({"model": self.model, "batch": self.batch, "way": who, "peak_mib": round(mib, 1),
                         "steady_mib": round(self.steady_mib[who], 1),
                         "peak_ratio_to_onnx_runtime": None if ratios is None else round(ratios[0], 4),
                         "steady_ratio_to_onnx_runtime": None if ratios is None else round(ratios[1], 4)})
        return rows


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_high_water_mark() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # (5: reset the peak resident set size to the current one)


def measure_here(way: str, model_name: str, batch: int, image_size: int | None, onnx_path: str | None,
                 threads: int) -> dict:
    """In this process (a fresh one): `way`'s peak resident memory over the baseline, in KiB (see the module
    docstring). Returns {"peak_kib": over loading and every forward, "steady_kib": over the forwards after the
    first}."""
    torch.set_num_threads(threads)
    x = model_input(model_name, batch, image_size)
    if way == ONNX_RUNTIME:
        import onnxruntime  # noqa: F401  (imported before the baseline: what the way needs, not what it holds)
    elif way == OPENVINO:
        import openvino as _openvino  # noqa: F401
    baseline = _status_kib("VmRSS")
    _reset_high_water_mark()
    run = load_way(way, model_name, x, onnx_path)
    run()  # (the first forward: groupconv chooses its threads, the runtimes size their arenas)
    peak = _status_kib("VmHWM")
    _reset_high_water_mark()
    for _ in range(REPEATS - 1):
        run()
    steady = _status_kib("VmHWM")
    return {"peak_kib": max(peak, steady) - baseline, "steady_kib": steady - baseline}


def _measure_in_process(way: str, model_name: str, batch: int, image_size: int | None, onnx_path: str | None) -> dict:
    arguments = json.dumps([way, model_name, batch, image_size, onnx_path, torch.get_num_threads()])
    result = subprocess.run([sys.executable, "-m", "groupconv.benchmarks.inference_memory", arguments],
                            capture_output=True, text=True, timeout=PROCESS_TIMEOUT_SECONDS)
    if result.returncode != 0:
        raise RuntimeError(f"measuring {way} on {model_name} batch {batch} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def inference_memory_benchmark(names=INFERENCE_MODELS, batch_sizes=BATCH_SIZES, image_size: int | None = None,
                               progress=print) -> list[MemoryResult]:
    """Every model at every batch size, each way's peak memory measured in a process of its own."""
    results = []
    runtimes, notes = runtime_ways()
    with tempfile.TemporaryDirectory(prefix="groupconv-memory-") as directory:
        for name in names:
            model = zoo_model(name)
            for batch in batch_sizes:
                ways = [OPTIMIZED, *runtimes]
                onnx_path = Path(directory) / f"{name}-{batch}.onnx"
                if runtimes:
                    onnx_path.write_bytes(export_onnx(model, model_input(name, batch, image_size)))
                measured = {way: _measure_in_process(way, name, batch, image_size, str(onnx_path)) for way in ways}
                result = MemoryResult(name, batch, {way: m["peak_kib"] / 1024 for way, m in measured.items()},
                                      {way: m["steady_kib"] / 1024 for way, m in measured.items()}, list(notes))
                results.append(result)
                if progress:
                    progress(result)
    return results


def format_result(result: MemoryResult) -> str:
    lines = [f"\n{result.model}, batch {result.batch}",
             f"  {'way':22} {'peak MiB':>9} {'vs ORT':>7} {'steady MiB':>11} {'vs ORT':>7}"]
    for who, mib in result.peak_mib.items():
        ratios = result.ratios_to_onnx_runtime(who)
        peak_ratio, steady_ratio = ("", "") if ratios is None else (f"{ratios[0]:6.2f}x", f"{ratios[1]:6.2f}x")
        lines.append(f"  {who:22} {mib:9.1f} {peak_ratio:>7} {result.steady_mib[who]:11.1f} {steady_ratio:>7}")
    lines += [f"  ({note})" for note in result.notes]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(measure_here(*json.loads(sys.argv[1]))))
