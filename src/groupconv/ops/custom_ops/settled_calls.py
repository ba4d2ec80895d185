"""Settled conv calls: a call signature whose path is decided runs from one lookup, in C++.

Before its kernel, an eager groupconv.conv2d call checks its arguments, handles autocast and the layout rule, looks
up its EagerCall and asks whether the dispatcher settled on torch's kernels: about 20 us of Python a call, most of a
small layer's time (torch's own conv of a 1x8x8x8 input takes 60 us). Once a signature's path is settled (torch's
conv with torch's autograd, or EagerConv on groupconv's kernels), the next call with the same signature runs that
path from a table in the compiled library (csrc/settled_calls.cpp): the signature is read from the tensors and the
argument objects there, and a call settled on torch's conv runs it without coming back to Python. The state that
could send a call elsewhere is tested at each call: torch.compile (here), a forced backend (here), torch.jit
tracing, torch.func transforms, dispatch modes and autocast (in C++). A change of the dispatcher's choices (a new
backend, tuning switched) forgets them all.

The signature is everything the slow path's outcome depends on: the operands' types (torch.Tensor or Parameter
exactly), shapes, strides (the layout), dtypes and devices, the arguments (ints, the padding names, tuples and lists
of ints, exactly: a bool or a float never finds an int's path), which operands need gradients, and torch's thread
count. Calls whose input the slow path changes (an unbatched input, an even 'same' padding, a contiguous input of a
channels_last weight) are never settled: they run the slow path each time. Without the compiled library (it could
not be built, or GROUPCONV_NATIVE=0) no call is settled.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..arguments import ConvArguments, memory_format_of
from ..backends import native
from ..dispatch import choices_generation, forced_backend
from .eager import profiled
from .eager_conv import EagerCall, EagerConv, on_torch_ops_only, torch_convolution

Runner = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]

_table = None  # the compiled library, once a call has been settled in it
_generation = choices_generation()

_MEMORY_FORMAT_NAMES = {torch.contiguous_format: "contiguous", torch.channels_last: "channels_last",
                        torch.channels_last_3d: "channels_last_3d"}


def run_settled(spatial_dims: int, input, weight, bias, stride, padding, dilation, groups,
                shuffle_groups) -> Tensor | None:
    """The call's output by its settled path; None where its signature has none, or the state does not allow it."""
    if torch.compiler.is_compiling():
        return None  # (dynamo would trace the lookup, and guard on the table)
    if _table is None or _generation != choices_generation() or forced_backend() is not None:
        return None
    return _table.run_settled_conv(spatial_dims, input, weight, bias, stride, padding, dilation, groups,
                                   shuffle_groups)


def settle(spatial_dims: int, input: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation,
           groups, shuffle_groups, args: ConvArguments) -> None:
    """After a call that ran the slow path on exactly these operands and arguments (`args`, as checked): keep its
    path where it is settled."""
    if torch.compiler.is_compiling() or forced_backend() is not None or on_torch_ops_only(input, weight):
        return
    table = _current_table()
    if table is None:
        return
    call = EagerCall.of(input, weight, bias, args)
    on_torch = call.settled_on_torch(input, weight)
    if on_torch is None:
        return  # (a choice it depends on is still to be made: its first backward, say)
    given = (spatial_dims, input, weight, bias, stride, padding, dilation, groups, shuffle_groups)
    if on_torch and args.shuffle_groups == 1:
        table.settle_conv_on_torch(*given, list(args.stride), [int(p) for p in args.padding], list(args.dilation),
                                   args.groups, _MEMORY_FORMAT_NAMES[memory_format_of(input)])
        return
    if on_torch:
        runner = _on_torch_runner(args)
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias)):
        runner = _eager_conv_runner(call)
    else:
        runner = _forward_runner(call)
    table.settle_conv_on_runner(*given, runner)


def settled_path(spatial_dims: int, input, weight, bias, stride, padding, dilation, groups,
                 shuffle_groups) -> str | Runner | None:
    """The call's settled path: "torch" (torch's conv, run from C++), a runner, or None."""
    if _table is None:
        return None
    return _table.settled_conv_path(spatial_dims, input, weight, bias, stride, padding, dilation, groups,
                                    shuffle_groups)


def _current_table():
    """The compiled library's table, emptied if the dispatcher's choices changed since its paths were settled; None
    without the library."""
    global _table, _generation
    if _table is None:
        _table = native.load()
        if _table is None:
            return None
    if _generation != choices_generation():
        _table.forget_settled_convs()
        _generation = choices_generation()
    return _table


def _on_torch_runner(args: ConvArguments) -> Runner:
    """torch_convolution for a signature with a fused shuffle (which torch's conv does not take)."""
    return lambda input, weight, bias: torch_convolution(input, weight, bias, args)


def _forward_runner(call: EagerCall) -> Runner:
    """The forward alone, for a signature whose operands need no gradient (the signature says so): no autograd
    Function around it, whose apply cost about 5.6 us a call (a 1x16x6x6 depthwise conv: 13.9 us through
    EagerConv, 8.3 us without)."""
    def run(input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        with profiled("groupconv::conv_forward"):
            return call.forward(input, weight, bias)
    return run


def _eager_conv_runner(call: EagerCall) -> Runner:
    def run(input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        with profiled("groupconv::conv_forward"):
            return EagerConv.apply(input, weight, bias, call)
    return run
