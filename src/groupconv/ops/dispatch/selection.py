"""Choosing the backend for a call: the forced one, else the automatic choice, measured or in priority order.

The automatic choice is the highest-priority backend with no reasons against the problem, or, with tuning on
and several fast backends able to run it, the fastest as measured on the call's own tensors (ops.tuning), and is
remembered per problem. GROUPCONV_TUNE=0 falls back to priority order, passing over a backend that says it is
slower than torch's kernels on a problem (`runs_untuned`). A forced backend that cannot run an input is an
error, never a silent fallback. The tuning switch lives here, beside the choices it changes.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

from ... import environment
from ..tuning import disk_cache, observation, tuner
from .backend import Backend
from .problems import Problem
from .registry import (choice_for, forced_backend, forget_choices, get_backend, list_backends, not_supported_reasons,
                       remember_choice, strategies_for)

ENV_TUNE = "GROUPCONV_TUNE"

_tuning_override: bool | None = None


def set_tuning(enabled: bool | None) -> None:
    """Turn measuring on or off for this process (None: follow GROUPCONV_TUNE, default on)."""
    global _tuning_override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled={enabled!r} must be True, False or None")
    _tuning_override = enabled
    forget_choices()  # the in-memory choices were made under the old setting
    observation.forget()


def tuning_enabled() -> bool:
    if _tuning_override is not None:
        return _tuning_override
    return environment.flag(ENV_TUNE, True)


def clear_tuning_cache() -> None:
    """Forget every measured decision, in this process and on disk."""
    disk_cache.clear()
    observation.forget()
    forget_choices()


@contextlib.contextmanager
def fresh_tuning_cache() -> Iterator[None]:
    """Inside the block every problem is measured afresh, as in a first process on this machine, into a temporary
    cache; the decisions remembered before (in this process and on disk) are back after it."""
    forget_choices()
    observation.forget()
    try:
        with disk_cache.temporary_cache():
            yield
    finally:
        forget_choices()
        observation.forget()


def select_backend(problem: Problem, run: Callable[[Backend], object] | None = None) -> Backend:
    """The backend for `problem`: the forced one, or the automatic choice.

    If `run` is given (a function running the call on a backend) and tuning is on, the tunable capable backends
    and the registered strategies that can run the problem are measured once with it and the fastest is kept.
    Either way the choice is remembered. A measured choice's calls are then sampled, and the problem is measured
    again where they contradict the measurement (tuning/observation.py).

    A problem with no values (an empty batch, channel or spatial extent) runs on torch's kernels whatever is forced:
    they return torch's empty (or zero, or bias-only) result, where groupconv's kernels would divide by the empty
    extent and a measurement has nothing to time.
    """
    if problem.empty:
        return get_backend("aten")
    forced = forced_backend()
    if forced is not None:
        backend = get_backend(forced)
        reasons = backend.not_supported_reasons(problem)
        if reasons:
            raise ValueError(f"backend {forced!r} is forced but cannot run {problem}: " + "; ".join(reasons))
        return backend
    chosen = choice_for(problem)
    remeasure = False
    if chosen is not None:
        if run is None:
            return chosen
        observed = observation.observed(problem, chosen)
        if observed is not None:
            return observed
        remeasure = True
    capable = [get_backend(name) for name in list_backends() if not get_backend(name).not_supported_reasons(problem)]
    if not capable:
        raise RuntimeError(f"no registered backend can run {problem}: {not_supported_reasons(problem)}")
    contenders = [backend for backend in capable if backend.tunable]
    if len(contenders) > 1 and tuning_enabled():
        if run is None:  # nothing to measure with (explain): say what priority order gives, remember nothing
            return _untuned_choice(problem, capable)
        chosen = tuner.choose(problem, contenders + strategies_for(problem), run, remeasure)
    else:
        chosen = _untuned_choice(problem, capable)
        if remeasure:  # (tuning was turned off since the choice was measured: nothing to check it against now)
            observation.unwatch(problem)
    remember_choice(problem, chosen)
    return chosen


def _untuned_choice(problem: Problem, capable: Sequence[Backend]) -> Backend:
    """Priority order without measuring: the first capable backend that runs the problem untuned (else the first)."""
    return next((backend for backend in capable if backend.runs_untuned(problem)), capable[0])


def remembered_choice(problem: Problem) -> str | None:
    """The backend the automatic choice has settled on for `problem` in this process (None: not chosen yet, or a
    backend is forced)."""
    if forced_backend() is not None:
        return None
    chosen = choice_for(problem)
    return chosen.name if chosen is not None else None


def explain(problem: Problem) -> str:
    """A readable account of the dispatch decision for `problem`."""
    lines = [f"{problem}"]
    chosen = select_backend(problem).name
    seconds = tuner.measured_seconds(problem) or {}
    peaks = tuner.measured_peak_bytes(problem) or {}

    def measured(name: str) -> str:
        memory = f", peak memory {peaks[name] / 2**20:.1f} MiB" if name in peaks else ""
        return f"measured {seconds[name] * 1e3:.3f} ms{memory}"

    for name, reasons in not_supported_reasons(problem).items():
        mark = "->" if name == chosen else "  "
        timing = f" ({measured(name)})" if name in seconds else ""
        lines.append(f"{mark} {name}: " + ("; ".join(reasons) if reasons else "can run") + timing)
    remembered = choice_for(problem)
    for name in seconds.keys() - set(list_backends()):  # a measured strategy (conv_backward's "split")
        mark = "->" if remembered is not None and name == remembered.name else "  "
        lines.append(f"{mark} {name}: a strategy over the backends above ({measured(name)})")
    record = tuner.measurement_record(problem)
    if record is not None:
        how = "warm, kept on disk" if record.get("warm") else (
            f"cold (not steady: {', '.join(record.get('unsteady', [])) or 'none'}; still getting faster: "
            f"{', '.join(record.get('falling', [])) or 'none'}), kept for this process only")
        lines.append(f"measured {record.get('at', '')}: {how}")
    return "\n".join(lines)
