"""The registered backends, the ones forced by the user, and the automatic choices remembered per problem.

Backends are data: users can list them, ask why one cannot run an input, and force one, globally
(`set_backend`, or the GROUPCONV_BACKEND environment variable) or for a block (`with use_backend(...)`).
Strategies (ways of combining the registered backends, such as computing two gradients each on its own best
backend) are registered apart: only the tuner considers them, and they cannot be forced.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

from ... import environment
from ..cache import BoundedCache
from .backend import Backend
from .problems import Problem

ENV_BACKEND = "GROUPCONV_BACKEND"

_registry: dict[str, tuple[int, Backend]] = {}
_strategies: list[Backend] = []
# Automatic choices, per problem: asked once, then a lookup per call. Cleared when the registry changes.
_choices: BoundedCache[Backend] = BoundedCache()
_choices_generation = 0  # counts the clearings of _choices: caches built on its answers compare it
_forced_global: str | None = None
_forced_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar("groupconv_backend", default=None)


def forget_choices() -> None:
    """Drop the in-memory automatic choices (the registry or the tuning setting changed)."""
    global _choices_generation
    _choices.clear()
    _choices_generation += 1


def choices_generation() -> int:
    """A number that changes whenever the automatic choices are forgotten (for caches of what they were)."""
    return _choices_generation


def remember_choice(problem: Problem, backend: Backend) -> None:
    global _choices_generation
    earlier = _choices.get(problem)
    _choices.put(problem, backend)
    if earlier is not None and earlier is not backend:  # measured again, and changed: caches of the old one are stale
        _choices_generation += 1


def choice_for(problem: Problem) -> Backend | None:
    """The automatic choice remembered for `problem`, whether or not a backend is forced now."""
    return _choices.get(problem)


def register_backend(backend: Backend, priority: int) -> None:
    """Add (or replace) a backend. Higher priority is tried first."""
    if not backend.name:
        raise ValueError(f"backend {backend!r} needs a non-empty name")
    _registry[backend.name] = (priority, backend)
    forget_choices()


def unregister_backend(name: str) -> None:
    get_backend(name)
    del _registry[name]
    forget_choices()


def register_strategy(strategy: Backend) -> None:
    """Add a tuning contender that combines the registered backends (see the module docstring)."""
    _strategies[:] = [s for s in _strategies if s.name != strategy.name] + [strategy]
    forget_choices()


def strategies_for(problem: Problem) -> list[Backend]:
    """The registered strategies that can run `problem`."""
    return [strategy for strategy in _strategies if not strategy.not_supported_reasons(problem)]


def list_backends() -> list[str]:
    """Registered backend names, in the order the dispatcher tries them."""
    return [name for name, _ in sorted(_registry.items(), key=lambda item: -item[1][0])]


def get_backend(name: str) -> Backend:
    if name not in _registry:
        raise ValueError(f"backend={name!r} is not registered; available backends: {list_backends()}")
    return _registry[name][1]


def set_backend(name: str | None) -> None:
    """Force every call onto one backend (None restores automatic choice)."""
    global _forced_global
    if name is not None:
        get_backend(name)
    _forced_global = name


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force calls inside the block onto one backend (None: automatic choice inside the block).

    The gradients of a conv called inside the block follow it too, wherever the backward runs (see
    `backward_scope`), unless the backward is itself inside a block.
    """
    if name is not None:
        get_backend(name)
    token = _forced_scoped.set(name if name is not None else "")
    try:
        yield
    finally:
        _forced_scoped.reset(token)


def scoped_backend() -> str | None:
    """`use_backend`'s value in this context: a backend name, "" (use_backend(None): automatic), None (no block)."""
    return _forced_scoped.get()


@contextlib.contextmanager
def backward_scope(forward_scope: str | None) -> Iterator[None]:
    """Around a backward formula: the `use_backend` block its forward ran in (`forward_scope`, its
    `scoped_backend()`), unless the backward runs inside a block of its own.

    Autograd runs a CUDA backward on a device thread of its own, whose Python context is not the one
    that called backward(): a block around `loss.backward()` is not seen there (torch 2.11), and without
    this the gradients of a conv forced onto a backend would go to the automatic choice.
    """
    if forward_scope is None or _forced_scoped.get() is not None:
        yield
        return
    token = _forced_scoped.set(forward_scope)
    try:
        yield
    finally:
        _forced_scoped.reset(token)


def forced_backend() -> str | None:
    """The backend currently forced, by `use_backend`, `set_backend` or GROUPCONV_BACKEND, in that order."""
    scoped = _forced_scoped.get()
    if scoped is not None:
        return scoped or None
    if _forced_global is not None:
        return _forced_global
    return environment.text(ENV_BACKEND)


def not_supported_reasons(problem: Problem) -> dict[str, list[str]]:
    """For every backend, in dispatch order, the reasons it cannot run `problem` (empty: it can)."""
    return {name: get_backend(name).not_supported_reasons(problem) for name in list_backends()}
