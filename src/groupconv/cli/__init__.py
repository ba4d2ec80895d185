"""The `groupconv` command (also `python -m groupconv`, and `torchrun ... -m groupconv train` for distributed training).

One parser, its subcommands grouped by what they drive:
- library.py:   demo, backends, models
- benchmark.py: benchmark (the sections of groupconv.benchmarks)
- train.py:     train, eval, predict, experiment
- analysis.py:  analyze, profile, correlate, draw, report
- export.py:    export (ONNX, TorchScript, ExportedProgram)
- errors.py:    how a subcommand reports a user's mistake (one line, exit code 2) and Ctrl-C (exit code 130)
"""

from __future__ import annotations

import argparse

from . import analysis, benchmark, export, library, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groupconv", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    library.add_commands(commands)  # demo, backends
    benchmark.add_commands(commands)  # benchmark
    library.add_models_command(commands)  # models
    train.add_commands(commands)  # train, eval, predict, experiment
    analysis.add_commands(commands)  # analyze, profile, correlate, draw, report
    export.add_commands(commands)  # export
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
