"""How every `groupconv` subcommand reports a user's mistake: one line, no traceback, exit code 2."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

EXIT_USER_ERROR = 2  # argparse's code for a bad command line
EXIT_INTERRUPTED = 130  # the shell's convention for a process stopped by SIGINT


def reported(command: str, function: Callable[[argparse.Namespace], int], user_errors: tuple[type[BaseException], ...]
             ) -> Callable[[argparse.Namespace], int]:
    """function(args), with `user_errors` printed as `groupconv COMMAND: error: ...` (exit 2) and Ctrl-C as
    `groupconv COMMAND: interrupted` (exit 130). Anything else is a bug and keeps its traceback."""

    @functools.wraps(function)
    def run(args: argparse.Namespace) -> int:
        try:
            return function(args)
        except user_errors as error:
            print(f"groupconv {command}: error: {error}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print(f"groupconv {command}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return run
