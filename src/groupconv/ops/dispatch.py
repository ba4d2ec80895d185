"""Choosing an implementation per call.

Backends are data: a registry of objects that each say which problems they cannot run and why
(`not_supported_reasons`, as in xformers). The dispatcher picks the highest-priority backend with
no reasons against the problem. Users can list backends, ask why one cannot run an input, and
force one, globally (`set_backend`, or the GROUPCONV_BACKEND environment variable) or for a block
(`with use_backend(...)`). A forced backend that cannot run an input is an error, never a silent
fallback.

Problems are small frozen dataclasses. When several fast backends can run a problem, the first
call measures them on its own tensors and the fastest is remembered, in memory and on disk
(tuning.py); GROUPCONV_TUNE=0 falls back to priority order, passing over a backend that says it is slower than
torch's kernels on a problem (`runs_untuned`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from . import tuning
from .arguments import ConvArguments, memory_format_of

ENV_BACKEND = "GROUPCONV_BACKEND"

CONV_OPS = ("conv_forward", "conv_backward_input", "conv_backward_weight", "conv_backward")


def layout_name(tensor: torch.Tensor) -> str:
    """A problem's `layout`: contiguous, channels_last or strided (anything else)."""
    fmt = memory_format_of(tensor)
    if fmt == torch.contiguous_format:
        return "contiguous" if tensor.is_contiguous() else "strided"
    return "channels_last"


@dataclass(frozen=True)
class ConvProblem:
    """One convolution call as the dispatcher sees it: everything that may change the best kernel."""

    op: str  # one of CONV_OPS
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    arguments: ConvArguments
    has_bias: bool
    dtype: torch.dtype
    device_type: str
    layout: str
    num_threads: int

    # A problem is a dict key on every call (the dispatcher's choices, the tuner's cache): its hash is computed once.
    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.op, self.input_shape, self.weight_shape, self.arguments,
                                                self.has_bias, self.dtype, self.device_type, self.layout,
                                                self.num_threads)))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def build(
        cls,
        op: str,
        input_shape: Sequence[int],
        weight_shape: Sequence[int],
        arguments: ConvArguments,
        like: torch.Tensor,
        has_bias: bool = False,
    ) -> "ConvProblem":
        return cls(
            op=op,
            input_shape=tuple(map(int, input_shape)),
            weight_shape=tuple(map(int, weight_shape)),
            arguments=arguments,
            has_bias=has_bias,
            dtype=like.dtype,
            device_type=like.device.type,
            layout=layout_name(like),
            num_threads=torch.get_num_threads(),
        )


@dataclass(frozen=True)
class ShuffleProblem:
    """One channel-shuffle call as the dispatcher sees it."""

    shape: tuple[int, ...]
    groups: int
    dtype: torch.dtype
    device_type: str
    layout: str
    op: str = "channel_shuffle"

    @classmethod
    def build(cls, x: torch.Tensor, groups: int) -> "ShuffleProblem":
        return cls(tuple(int(s) for s in x.shape), groups, x.dtype, x.device.type, layout_name(x))


Problem = ConvProblem | ShuffleProblem


class Backend:
    """An implementation of the grouped-convolution ops.

    Subclasses set `name` and `description`, implement the four ops, and override
    `not_supported_reasons` to refuse the problems they cannot run (an empty list means "I can").
    The reasons must depend on the problem alone: the automatic choice is cached per problem.
    Output memory format is normalised by the caller, so a backend may return any layout.
    """

    name: str = ""
    description: str = ""
    # Whether the tuner may time this backend against the others; the reference (a specification,
    # never the fastest) opts out.
    tunable: bool = True
    # torch's own kernels: the tuner keeps them unless another contender is clearly faster (tuning.choose).
    baseline: bool = False

    def not_supported_reasons(self, problem: Problem) -> list[str]:
        return []

    def runs_untuned(self, problem: Problem) -> bool:
        """Whether to run `problem`, when tuning is off, as the first capable backend in priority order. A backend
        says False where measurements showed torch's kernels faster: the tuner would not pick it there either, and
        without tuning the next capable backend runs instead (forcing it still works)."""
        return True

    def conv_forward(self, input, weight, bias, args: ConvArguments) -> torch.Tensor:
        raise NotImplementedError

    def conv_backward_input(self, grad_output, weight, input_shape, args: ConvArguments,
                            input: torch.Tensor | None = None) -> torch.Tensor:
        """The input's gradient. `input` is the forward's input where the caller has it: a backend may read its
        shape and layout, never its values (torch's kernels take it as the template of the gradient, which saves
        allocating one of the input's size)."""
        raise NotImplementedError

    def conv_backward_weight(self, grad_output, input, weight_shape, args: ConvArguments) -> torch.Tensor:
        raise NotImplementedError

    def conv_backward(self, grad_output, input, weight, args: ConvArguments) -> tuple[torch.Tensor, torch.Tensor]:
        """Both gradients (input, weight). By default the two single ops; a backend that shares work overrides it."""
        return (self.conv_backward_input(grad_output, weight, input.shape, args, input),
                self.conv_backward_weight(grad_output, input, weight.shape, args))

    # A residual block's input feeds its first conv and its shortcut, and autograd sums the two gradients in a pass of
    # its own (2 reads and a write of the input's size). A backend whose kernel writes the input gradient can add the
    # shortcut's gradient (`accumulate`) as it writes instead: these return that sum, or None where the backend has
    # no such kernel for the call (the caller then adds).
    def conv_backward_input_accumulating(self, grad_output, weight, input_shape, args: ConvArguments,
                                         input: torch.Tensor | None, accumulate: torch.Tensor) -> torch.Tensor | None:
        return None

    def conv_backward_accumulating(self, grad_output, input, weight, args: ConvArguments,
                                   accumulate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def channel_shuffle(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<groupconv backend {self.name!r}: {self.description}>"


_registry: dict[str, tuple[int, Backend]] = {}
# Automatic choices, per problem: asked once, then a dict lookup per call. Cleared when the registry changes.
_choices: dict[Problem, Backend] = {}
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
    return os.environ.get(ENV_BACKEND) or None


def not_supported_reasons(problem: Problem) -> dict[str, list[str]]:
    """For every backend, in dispatch order, the reasons it cannot run `problem` (empty: it can)."""
    return {name: get_backend(name).not_supported_reasons(problem) for name in list_backends()}


def select_backend(problem: Problem, run: Callable[[Backend], object] | None = None,
                   strategies: Callable[[Problem], Sequence[Backend]] | None = None) -> Backend:
    """The backend for `problem`: the forced one, or the automatic choice.

    The automatic choice is the highest-priority backend that can run the problem; if `run` is
    given (a function running the call on a backend) and tuning is on, the tunable capable
    backends are measured once with it and the fastest is kept. Either way the choice is cached.
    `strategies(problem)` gives unregistered contenders that only the tuner considers (ways of combining
    the registered backends, such as computing two gradients each on its own best backend); it is
    asked only when a choice is made, not on every call.
    """
    forced = forced_backend()
    if forced is not None:
        backend = get_backend(forced)
        reasons = backend.not_supported_reasons(problem)
        if reasons:
            raise ValueError(f"backend {forced!r} is forced but cannot run {problem}: " + "; ".join(reasons))
        return backend
    chosen = _choices.get(problem)
    if chosen is not None:
        return chosen
    capable = [get_backend(name) for name in list_backends() if not get_backend(name).not_supported_reasons(problem)]
    if not capable:
        raise RuntimeError(f"no registered backend can run {problem}: {not_supported_reasons(problem)}")
    contenders = [backend for backend in capable if backend.tunable] + list(strategies(problem) if strategies else ())
    if len(contenders) > 1 and tuning.tuning_enabled():
        if run is None:  # nothing to measure with (explain): say what priority order gives, remember nothing
            return _untuned_choice(problem, capable)
        chosen = tuning.choose(problem, contenders, run)
    else:
        chosen = _untuned_choice(problem, capable)
    _choices[problem] = chosen
    return chosen


def _untuned_choice(problem: Problem, capable: Sequence[Backend]) -> Backend:
    """Priority order without measuring: the first capable backend that runs the problem untuned (else the first)."""
    return next((backend for backend in capable if backend.runs_untuned(problem)), capable[0])


def remembered_choice(problem: Problem) -> str | None:
    """The backend the automatic choice has settled on for `problem` in this process (None: not chosen yet, or a
    backend is forced)."""
    if forced_backend() is not None:
        return None
    chosen = _choices.get(problem)
    return chosen.name if chosen is not None else None


def explain(problem: Problem) -> str:
    """A readable account of the dispatch decision for `problem`."""
    lines = [f"{problem}"]
    chosen = select_backend(problem).name
    seconds = tuning.measured_seconds(problem) or {}
    peaks = tuning.measured_peak_bytes(problem) or {}

    def measured(name: str) -> str:
        memory = f", peak memory {peaks[name] / 2**20:.1f} MiB" if name in peaks else ""
        return f"measured {seconds[name] * 1e3:.3f} ms{memory}"

    for name, reasons in not_supported_reasons(problem).items():
        mark = "->" if name == chosen else "  "
        timing = f" ({measured(name)})" if name in seconds else ""
        lines.append(f"{mark} {name}: " + ("; ".join(reasons) if reasons else "can run") + timing)
    for name in seconds.keys() - set(list_backends()):  # a measured strategy (conv_backward's "split")
        mark = "->" if name == _measured_choice(problem) else "  "
        lines.append(f"{mark} {name}: a strategy over the backends above ({measured(name)})")
    return "\n".join(lines)


def _measured_choice(problem: Problem) -> str | None:
    chosen = _choices.get(problem)
    return chosen.name if chosen is not None else None
