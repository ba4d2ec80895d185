"""Reading groupconv's environment variables (GROUPCONV_NATIVE, GROUPCONV_TUNE, GROUPCONV_BACKEND, ...).

One parser for every on/off switch, so that each accepts the same spellings and a misspelt value is an error
naming the variable, never a silent default.
"""

from __future__ import annotations

import os

TRUE_VALUES = ("1", "true", "on", "yes")
FALSE_VALUES = ("0", "false", "off", "no")


def flag(name: str, default: bool) -> bool:
    """The on/off switch `name`: `default` when unset or empty."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise ValueError(f"{name}={os.environ[name]!r} must be one of {TRUE_VALUES + FALSE_VALUES}")


def text(name: str) -> str | None:
    """The variable `name`'s value, None when unset or empty."""
    return os.environ.get(name, "").strip() or None


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
