"""Writing a model in a deployable format, loading it back, and comparing it with the eager model.

Formats: onnx (torch.onnx.export, the dynamo exporter by default or the TorchScript-based one; every groupconv op
becomes standard ONNX operators, ops/custom_ops/onnx.py), torchscript (torch.jit.trace, then torch.jit.save), and
exported-program (torch.export.export, then torch.export.save). TorchScript and exported-program files hold
groupconv's custom ops: `import groupconv` before loading them. A file is written beside its destination under a
temporary name and renamed when complete, so a failed export never leaves a partial file behind.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

FORMATS = ("onnx", "torchscript", "exported-program")
INPUT_NAME, OUTPUT_NAME = "input", "output"


class ExportError(ValueError):
    """A request that cannot be exported (bad format, options or model), in one line for the command line."""


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise ExportError(f"format={format!r} is not one of {', '.join(FORMATS)}")


@contextmanager
def _written_atomically(path: Path):
    """Yields a temporary path beside `path`; renamed to `path` if the block succeeds, removed if it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _export_onnx(model, example, path: Path, opset, dynamic_batch: bool, dynamo: bool) -> None:
    options = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamo=dynamo)
    if opset is not None:
        options["opset_version"] = opset
    if dynamo:
        options.update(external_data=False, verbose=False)
        if dynamic_batch:
            options["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    elif dynamic_batch:
        options["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    torch.onnx.export(model, (example,), str(path), **options)


def _exported_program(model, example, dynamic_batch: bool):
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)


def export_model(model: torch.nn.Module, example: torch.Tensor, path: str | Path, format: str, *,
                 opset: int | None = None, dynamic_batch: bool = True, dynamo: bool = True) -> Path:
    """Write `model` (put in eval mode) to `path` in `format`, traced on `example` (a batch of inputs).

    `dynamic_batch`: the file accepts any batch size (torch.export specialises a batch of 1, so the example
    should hold at least 2). `opset` and `dynamo` apply to onnx (None: the exporter's default opset).
    """
    check_format(format)
    if dynamic_batch and example.shape[0] < 2:
        raise ExportError(f"a dynamic batch needs an example batch of at least 2 (torch.export fixes a batch of "
                          f"1), got batch size {example.shape[0]}")
    path = Path(path)
    model.eval()
    with _written_atomically(path) as temporary, warnings.catch_warnings(), torch.no_grad():
        # (the argument checks read tensor sizes while tracing; torch warns for each, about sizes that never vary)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if format == "onnx":
            _export_onnx(model, example, temporary, opset, dynamic_batch, dynamo)
        elif format == "torchscript":
            torch.jit.save(torch.jit.trace(model, (example,)), str(temporary))
        else:
            torch.export.save(_exported_program(model, example, dynamic_batch), str(temporary))
    return path


def load_exported(path: str | Path, format: str):
    """A callable that runs the file on a float tensor and returns a tensor: an onnxruntime session for onnx (on the
    CPU), the loaded module otherwise."""
    check_format(format)
    path = str(path)
    if format == "onnx":
        import onnxruntime  # (optional dependency: groupconv[export])

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])
    if format == "torchscript":
        return torch.jit.load(path)
    return torch.export.load(path).module()


def compare(model: torch.nn.Module, exported, input: torch.Tensor) -> tuple[float, float]:
    """(largest absolute difference between the exported file's output and the eager model's on `input`, largest
    absolute value of the eager output): their ratio is the relative error."""
    with torch.no_grad():
        expected = model.eval()(input)
        actual = exported(input)
    if actual.shape != expected.shape:
        raise ExportError(f"the exported model's output has shape {tuple(actual.shape)}, the eager model's "
                          f"{tuple(expected.shape)}")
    return (actual.double() - expected.double()).abs().max().item(), expected.abs().max().item()
