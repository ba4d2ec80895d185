"""The `groupconv export` subcommand: a trained run's checkpoint (or a zoo model) as an ONNX, TorchScript or
ExportedProgram file, checked against the eager model on a random batch (the options follow timm's onnx_export.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..export import FORMATS, ExportError, compare, export_model, load_exported
from ..models import create_model, is_model, model_entry
from ..train import CheckpointError, ConfigError
from ..train.checkpoint import load_checkpoint
from ..train.evaluation import checkpoint_path, load_run
from .errors import reported

USER_ERRORS = (ExportError, CheckpointError, ConfigError, OSError)  # (OSError: an output that cannot be written)
# The relative difference (to the largest output) above which the exported file is reported as wrong.
RELATIVE_TOLERANCE = 1e-3

EPILOG = """examples:
  groupconv export runs/X --format onnx --output model.onnx           # the run's best checkpoint
  groupconv export shufflenet_g3_wd4 --small-input --format onnx --output m.onnx --no-dynamo --opset 17
  groupconv export runs/X --format torchscript --output model.pt      # load with: import groupconv; torch.jit.load
  groupconv export runs/X --format exported-program --output model.pt2  # torch.export.load

A zoo model is exported with freshly initialised weights. TorchScript and exported-program files hold groupconv's
ops: `import groupconv` before loading them. ONNX files hold standard ONNX operators only."""


def _model_and_input_shape(source: str, which: str, small_input: bool) -> tuple[torch.nn.Module, tuple[int, ...]]:
    if Path(source).exists():
        if small_input:
            raise ExportError("--small-input applies to a zoo model; a run's model is built as it was trained")
        model, _ = load_run(source, which)
        _, _, info = load_checkpoint(checkpoint_path(source, which))
        return model, tuple(info["input_shape"])
    if not is_model(source):
        try:
            model_entry(source)  # (its error names the closest registered models)
        except ValueError as error:
            raise ExportError(f"{source!r} is neither a run directory or checkpoint nor a zoo model: {error}") \
                from None
    entry = model_entry(source)
    if small_input and not entry.has_small_input:
        raise ExportError(f"--small-input: {source} has no small-input variant")
    model = create_model(source, small_input=True) if small_input else create_model(source)
    return model, (entry.small_input_size if small_input else entry.input_size)


def run_export(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ExportError(f"--batch-size={args.batch_size} must be a positive integer")
    if args.opset is not None and args.format != "onnx":
        raise ExportError(f"--opset applies to --format onnx, not {args.format}")
    model, input_shape = _model_and_input_shape(args.source, args.which, args.small_input)
    torch.manual_seed(args.seed)
    # torch.export fixes a batch of 1 as a constant: a dynamic batch is traced on 2 examples at least.
    example_batch = max(args.batch_size, 2) if args.dynamic_batch else args.batch_size
    example = torch.randn(example_batch, *input_shape)
    output = export_model(model, example, args.output, args.format, opset=args.opset,
                          dynamic_batch=args.dynamic_batch, dynamo=args.dynamo)
    try:
        exported = load_exported(output, args.format)
    except ModuleNotFoundError as error:
        raise ExportError(f"checking an ONNX file needs onnxruntime (pip install groupconv[export]): {error}") \
            from None
    batch = torch.randn(args.batch_size, *input_shape)
    difference, scale = compare(model, exported, batch)
    how = "" if args.format != "onnx" else f", {'dynamo' if args.dynamo else 'TorchScript-based'} exporter"
    print(f"wrote {output} ({args.format}{how}, {output.stat().st_size / 1e6:.2f} MB, "
          f"{'dynamic' if args.dynamic_batch else 'fixed'} batch)")
    checker = "onnxruntime" if args.format == "onnx" else "torch"
    print(f"max |exported - eager| on a random batch of {args.batch_size} ({checker}): {difference:.3g} "
          f"(largest output {scale:.3g})")
    if difference > RELATIVE_TOLERANCE * max(scale, 1.0):
        print(f"groupconv export: error: the exported model differs from the eager one by more than "
              f"{RELATIVE_TOLERANCE:g} of its largest output", flush=True)
        return 1
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add export; it sets `run=` to a function(args) -> exit code."""
    parser = commands.add_parser(
        "export", help="write a trained run's model (or a zoo model) as ONNX, TorchScript or an ExportedProgram",
        description="Export a run's checkpoint (or a zoo model) and check the file against the eager model on a "
                    "random batch (onnxruntime for onnx, torch for the others), printing the largest difference.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="RUN_DIR_OR_MODEL",
                        help="a run directory of `groupconv train`, one of its .safetensors checkpoints, or a zoo "
                             "model name (`groupconv models`)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="(default: onnx)")
    parser.add_argument("--output", "-o", required=True, metavar="FILE", help="the file to write")
    parser.add_argument("--which", choices=("best", "last"), default="best",
                        help="which checkpoint of a run directory (default: best)")
    parser.add_argument("--small-input", action="store_true",
                        help="a zoo model's small-input (32x32) variant")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset version (default: the exporter's own)")
    parser.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                        help="the file accepts any batch size (default: on)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="batch size of the check (and of the export when the batch is fixed; default: 1)")
    parser.add_argument("--dynamo", action=argparse.BooleanOptionalAction, default=True,
                        help="ONNX: torch's dynamo exporter (default) or, with --no-dynamo, the TorchScript-based one")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random batches (default: 0)")
    parser.set_defaults(run=reported("export", run_export, USER_ERRORS))
