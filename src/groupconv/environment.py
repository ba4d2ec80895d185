"""The process's environment variables: groupconv's own (GROUPCONV_NATIVE, GROUPCONV_TUNE, GROUPCONV_BACKEND, ...),
and OpenMP's wait setting, which `import groupconv` makes before torch loads OpenMP.

One parser for every on/off switch, so that each accepts the same spellings and a misspelt value is an error
naming the variable, never a silent default. This module imports nothing of torch: it runs first.
"""

from __future__ import annotations

import os
import sys

TRUE_VALUES = ("1", "true", "on", "yes")
FALSE_VALUES = ("0", "false", "off", "no")


def _value(name: str) -> str:
    """The variable's value, "" when unset.

    os.environ.get raises and catches a KeyError inside for an unset variable, about 3 us a call beside a small conv
    (measured in a loop of 408-channel depthwise convs of a 10x10 input, 51 us each): more than the lookup it is, and
    the settled conv calls and the dispatcher read GROUPCONV_BACKEND and GROUPCONV_TUNE at every call. CPython's
    environ mapping keeps the variables, encoded, in a dict, read here without the exception; os.environ.get where
    that dict is not there."""
    data = getattr(os.environ, "_data", None)
    if data is None:
        return os.environ.get(name, "")
    key = _encoded_keys.get(name)
    if key is None:
        key = _encoded_keys[name] = os.environ.encodekey(name)
    value = data.get(key)
    return "" if value is None else os.environ.decodevalue(value)


_encoded_keys: dict[str, object] = {}


def flag(name: str, default: bool) -> bool:
    """The on/off switch `name`: `default` when unset or empty."""
    value = _value(name).strip().lower()
    if not value:
        return default
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise ValueError(f"{name}={os.environ[name]!r} must be one of {TRUE_VALUES + FALSE_VALUES}")


def text(name: str) -> str | None:
    """The variable `name`'s value, None when unset or empty."""
    return _value(name).strip() or None


def seconds(name: str, default: float) -> float:
    """A duration in seconds: `default` when unset or empty."""
    value = text(name)
    if value is None:
        return default
    try:
        result = float(value)
    except ValueError:
        result = -1.0
    if not result >= 0:
        raise ValueError(f"{name}={value!r} must be a non-negative number of seconds")
    return result


# OpenMP's worker threads, between two parallel regions (each kernel call is one), spin a while and then sleep; waking
# a sleeping one takes tens of microseconds on a virtual machine (milliseconds after a longer idle: docs/inference.md),
# and every kernel waits for its slowest thread. The
# spin of torch's OpenMP (GNU libgomp) is short by default, shorter than the Python between two layers, so at batch 1,
# where a layer takes 20-200 us, a second thread brought nothing: ShuffleNet 1x g=3 at batch 1, optimised, took
# 6.1-6.9 ms a forward on 2 threads (as on 1), and 4.2-4.3 ms with a spin of 20,000 to 300,000 (measured on 2 cores;
# 3,000 was too short). ONNX Runtime's and OpenVINO's thread pools spin by default too.
ENV_OPENMP_SPIN = "GROUPCONV_OPENMP_SPIN"
OPENMP_WAIT_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
# libgomp's own unit: about 100,000 spins a millisecond. A spinning worker holds its core that long after each
# region: at most about a millisecond, then it sleeps as before.
OPENMP_SPIN_COUNT = 100_000

openmp_wait = "not set by groupconv"  # what spin_openmp_workers did, for reports
openmp_loaded_first = False  # whether torch (and OpenMP) came before groupconv, leaving OpenMP's short default spin


def spin_openmp_workers() -> str:
    """Let OpenMP's workers spin between parallel regions (GOMP_SPINCOUNT=OPENMP_SPIN_COUNT), unless the environment
    already says how they wait (GOMP_SPINCOUNT, OMP_WAIT_POLICY), GROUPCONV_OPENMP_SPIN=0, or torch (hence OpenMP,
    which reads its environment once, as it loads) was imported first. `import groupconv` calls it before importing
    torch. Returns what it did, also kept in `openmp_wait`."""
    global openmp_wait, openmp_loaded_first
    own = [f"{name}={os.environ[name]}" for name in OPENMP_WAIT_VARIABLES if text(name)]
    if not flag(ENV_OPENMP_SPIN, True):
        openmp_wait = f"OpenMP's default ({ENV_OPENMP_SPIN}=0)"
    elif own:
        openmp_wait = f"as the environment says ({', '.join(own)})"
    elif "torch" in sys.modules:
        openmp_loaded_first = True
        openmp_wait = (f"OpenMP's default (torch was imported before groupconv: import groupconv first, or set "
                       f"GOMP_SPINCOUNT={OPENMP_SPIN_COUNT} in the environment)")
    else:
        os.environ["GOMP_SPINCOUNT"] = str(OPENMP_SPIN_COUNT)
        openmp_wait = f"workers spin between parallel regions (GOMP_SPINCOUNT={OPENMP_SPIN_COUNT}, set by groupconv)"
    return openmp_wait
