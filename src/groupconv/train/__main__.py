"""`python -m groupconv.train COMMAND ...`: the train, eval and experiment commands on their own.

The same commands as `groupconv train/eval/experiment`, for `torchrun -m groupconv.train train ...`
and for environments where only this package's commands are wanted.
"""

from __future__ import annotations

import argparse
import sys

from .cli import add_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groupconv", description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
