"""The ways the inference benchmarks run a zoo model, each loaded in a process of its own.

A way is a name (OPTIMIZED, the eager models, ONNX_RUNTIME, OPENVINO) and `load_way` makes its forward. The timing
benchmark (inference.py) runs every way in a `WayProcess` and times them in alternation; the memory benchmark
(inference_memory.py) loads one way per process and reads its peak. Why processes of their own: ways sharing one
process share its heap, OpenMP's and the runtimes' thread pools and its caches, and slow each other down. Measured in
one process, groupconv's optimised ShuffleNet 1x g=3 at batch 1 took 8-17 ms a forward in three runs, against
4.4-6.7 ms in a process of its own; a user deploying a model runs one runtime, not six.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from .. import models
from ..inference import optimize_for_inference
from ..ops.tuning.timing import seconds_of
from .twins import to_torch_layers

OPTIMIZED = "groupconv optimized"
GROUPCONV_EAGER = "groupconv eager"
GROUPCONV_EAGER_CHANNELS_LAST = "groupconv eager CL"
TORCH_EAGER = "torch eager"
TORCH_EAGER_CHANNELS_LAST = "torch eager CL"
ONNX_RUNTIME = "ONNX Runtime"
OPENVINO = "OpenVINO"
EAGER_WAYS = (GROUPCONV_EAGER, GROUPCONV_EAGER_CHANNELS_LAST, TORCH_EAGER, TORCH_EAGER_CHANNELS_LAST)
WAYS = (OPTIMIZED, *EAGER_WAYS, ONNX_RUNTIME, OPENVINO)
RUNTIMES = (ONNX_RUNTIME, OPENVINO)  # the ways that read the model's ONNX file

# A way's process: importing torch and building and optimising the largest default model take about 10 s; a forward
# of the slowest way at batch 32, under a second.
LOAD_TIMEOUT_SECONDS = 600
RUN_TIMEOUT_SECONDS = 120


def runtime_ways() -> tuple[list[str], list[str]]:
    """The runtimes installed (ONNX Runtime, OpenVINO), and a note for each one skipped."""
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return [], ["ONNX Runtime and OpenVINO skipped: not installed (pip install groupconv[export])"]
    if importlib.util.find_spec("openvino") is None:
        return [ONNX_RUNTIME], ["OpenVINO skipped: not installed (pip install groupconv[openvino])"]
    return [ONNX_RUNTIME, OPENVINO], []


def model_input(model_name: str, batch: int, image_size: int | None) -> torch.Tensor:
    """The benchmark's input for the model: random, the same in every process (seeded)."""
    channels, height, width = models.model_entry(model_name).input_size
    if image_size is not None:
        height = width = image_size
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(1))


def zoo_model(model_name: str) -> torch.nn.Module:
    """The zoo model in eval mode, the same weights in every process (seeded)."""
    torch.manual_seed(0)
    return models.create_model(model_name).eval()


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


def _eager(model: torch.nn.Module, x: torch.Tensor):
    def run():
        with torch.no_grad():
            model(x)
    return run


def load_way(way: str, model_name: str, x: torch.Tensor, onnx_path: str | None = None) -> Callable[[], object]:
    """`way`'s forward of the zoo model on `x`, loaded as a user's script would load it (groupconv: the model built
    and optimised or moved to its layout; the runtimes: a session compiled from the ONNX file at `onnx_path`)."""
    if way not in WAYS:
        raise ValueError(f"way={way!r} is not one of {', '.join(map(repr, WAYS))}")
    if way in RUNTIMES:
        if onnx_path is None:
            raise ValueError(f"way={way!r} reads the model's ONNX file: onnx_path is required")
        onnx_file = Path(onnx_path).read_bytes()
        run = run_with_onnx_runtime(onnx_file, x) if way == ONNX_RUNTIME else run_with_openvino(onnx_file, x)
        if run is None:
            raise ImportError(f"{way} is not installed")
        return run
    model = zoo_model(model_name)
    if way == OPTIMIZED:
        optimized = optimize_for_inference(model, x)
        return lambda: optimized(x)
    if way in (TORCH_EAGER, TORCH_EAGER_CHANNELS_LAST):
        model = to_torch_layers(model).eval()
    if way in (GROUPCONV_EAGER_CHANNELS_LAST, TORCH_EAGER_CHANNELS_LAST):
        model, x = copy.deepcopy(model).to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last)
    return _eager(model, x)


class WayProcess:
    """One way of running a model, loaded in a child process that times its forwards when asked.

    Calling it times one forward in the child, right after an untimed one (_serve says why), and returns its seconds
    (measured there: the pipe's round trip is not counted). The child's errors come back as a RuntimeError with its last output; every wait is bounded."""

    def __init__(self, way: str, model_name: str, batch: int, image_size: int | None, onnx_path: str | None,
                 warmup: int = 2):
        self.way = way
        self._errors = tempfile.TemporaryFile(mode="w+")  # (a file: a full pipe would block a chatty child)
        arguments = json.dumps([way, model_name, batch, image_size, onnx_path, torch.get_num_threads(), warmup])
        self._process = subprocess.Popen([sys.executable, "-m", "groupconv.benchmarks.inference_ways", arguments],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors,
                                         bufsize=0)
        self._unread = b""  # what the child wrote past the last line read (os.read has no line buffer to hide it)
        try:
            self._answer("ready", LOAD_TIMEOUT_SECONDS)
        except BaseException:
            self.close()
            raise

    def __call__(self) -> float:
        self._process.stdin.write(b"time\n")
        return float(self._answer("seconds", RUN_TIMEOUT_SECONDS))

    def _answer(self, word: str, timeout: float) -> str:
        """The rest of the child's next line starting with `word` (other output is skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._unread:
                line, self._unread = self._unread.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if text == word or text.startswith(word + " "):
                    return text[len(word):].strip()
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._process.stdout], [], [], left)[0]:
                raise RuntimeError(f"{self.way}: no answer from its process in {timeout:.0f} s{self._last_errors()}")
            data = os.read(self._process.stdout.fileno(), 65536)
            if not data:
                self._process.wait(timeout=10)
                raise RuntimeError(f"{self.way}: its process ended (exit code {self._process.returncode})"
                                   f"{self._last_errors()}")
            self._unread += data

    def _last_errors(self) -> str:
        self._errors.seek(0)
        text = self._errors.read()[-3000:]
        return f":\n{text}" if text else ""

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._process.stdin.close()  # (the child ends at the end of its input)
                self._process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._errors.close()

    def __enter__(self) -> "WayProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(way: str, model_name: str, batch: int, image_size: int | None, onnx_path: str | None, threads: int,
           warmup: int) -> None:
    """The child's side of WayProcess: load the way, warm it up, then answer each `time` line with the seconds of a
    forward run right after an untimed one, until the input ends.

    Why the untimed forward: the benchmark idles between timed runs (inference.py's pause), and a worker thread
    that idled more than a few milliseconds has gone to sleep; on a virtual machine its core is then halted, and waking
    it took about 4 ms here, more than a whole forward at batch 1 (a 0.2 ms conv on 2 threads took 4.3 ms after 5 ms
    of idle). Thread pools that spin longer hide it, those that spin less pay it: the timed forward measures every way
    warm, as a loop of requests runs it."""
    torch.set_num_threads(threads)
    run = load_way(way, model_name, model_input(model_name, batch, image_size), onnx_path)
    for _ in range(warmup):
        run()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "time":
            run()
            print(f"seconds {seconds_of(run)!r}", flush=True)


if __name__ == "__main__":
    _serve(*json.loads(sys.argv[1]))
