"""Settled conv calls: a call signature whose path is decided runs from one lookup.

Before its kernel, an eager groupconv.conv2d call checks its arguments, handles autocast and the layout rule, looks
up its EagerCall and asks whether the dispatcher settled on torch's kernels: about 20 us of Python a call, most of a
small layer's time (torch's own conv of a 1x8x8x8 input takes 50 us). Once a signature's path is settled (torch's
conv with torch's autograd, or EagerConv on groupconv's kernels), the next call with the same signature runs that
path after one dictionary lookup and the tests of the global state that could send it elsewhere: torch.compile and
torch.jit tracing, torch.func transforms, dispatch modes, autocast, a forced backend. A change of the dispatcher's
choices (a new backend, tuning switched) forgets them all.

The signature is everything the slow path's outcome depends on: the operands' types, shapes, strides (the layout),
dtypes and devices, the arguments (ints and strings only, exactly: a bool or a float never finds an int's path),
which operands need gradients, and torch's thread count. Calls whose input the slow path changes (an unbatched
input, an even 'same' padding, a contiguous input of a channels_last weight) are never settled: they run the slow
path each time.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ..arguments import ConvArguments, exact_key, memory_format_of
from ..backends.aten import bound_conv
from ..cache import BoundedCache
from ..dispatch import choices_generation, forced_backend
from .eager import PLAIN_TENSOR_TYPES, profiled
from .eager_conv import EagerCall, EagerConv, on_torch_ops_only, torch_convolution

Runner = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]

_runners: BoundedCache[Runner] = BoundedCache()
_generation = choices_generation()


def signature(spatial_dims: int, input, weight, bias, stride, padding, dilation, groups,
              shuffle_groups) -> tuple | None:
    """The call's settled-path key, or None for a call that is never settled (inside torch.compile's tracing, operands
    that are not plain tensors)."""
    if torch.compiler.is_compiling():
        return None  # (dynamo would trace this function, and would guard on the cache's contents)
    if (type(input) not in PLAIN_TENSOR_TYPES or type(weight) not in PLAIN_TENSOR_TYPES
            or (bias is not None and type(bias) not in PLAIN_TENSOR_TYPES)):
        return None
    # (exact_key: stride=True or 2.0 must not find stride=1's or 2's path, which skips the checks that reject them)
    arguments = (exact_key(stride), exact_key(padding), exact_key(dilation), exact_key(groups),
                 exact_key(shuffle_groups))
    if None in arguments:
        return None
    grad = torch.is_grad_enabled()
    return (spatial_dims, input.shape, input.stride(), input.dtype, input.device, weight.shape, weight.stride(),
            weight.dtype, weight.device, None if bias is None else (bias.shape, bias.dtype, bias.device), arguments,
            grad and input.requires_grad, grad and weight.requires_grad,
            grad and bias is not None and bias.requires_grad, torch.get_num_threads())


def _state_allows_settled_paths() -> bool:
    """Whether nothing outside the signature sends calls elsewhere than their settled path now."""
    global _generation
    if _generation != choices_generation():
        _runners.clear()
        _generation = choices_generation()
        return False
    # (torch.compile's tracing is told by `signature`; torch.jit.is_tracing's test, without its Python layers)
    return not (torch._C._get_tracing_state() is not None
                or torch._C._functorch.peek_interpreter_stack() is not None
                or _get_current_dispatch_mode() is not None or torch._C._is_any_autocast_enabled()
                or forced_backend() is not None)


def run_settled(key: tuple, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor | None:
    """The call's output by its settled path; None where the signature has none (or the state does not allow it)."""
    runner = _runners.get(key)
    if runner is None or not _state_allows_settled_paths():
        return None
    return runner(input, weight, bias)


def settle(key: tuple, input: Tensor, weight: Tensor, bias: Optional[Tensor], args: ConvArguments) -> None:
    """After a call that ran the slow path on exactly these operands: keep its path for `key` where it is settled."""
    if on_torch_ops_only(input, weight) or not _state_allows_settled_paths():
        return
    call = EagerCall.of(input, weight, bias, args)
    on_torch = call.settled_on_torch(input, weight)
    if on_torch is None:
        return  # (a choice it depends on is still to be made: its first backward, say)
    if on_torch:
        runner = _on_torch_runner(args, memory_format_of(input))
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias)):
        runner = _eager_conv_runner(call)
    else:
        runner = _forward_runner(call)
    _runners.put(key, runner)


def _on_torch_runner(args: ConvArguments, memory_format: torch.memory_format) -> Runner:
    """torch_convolution for this signature, with what it looks up each call looked up once."""
    conv = bound_conv(args)
    if conv is None:
        return lambda input, weight, bias: torch_convolution(input, weight, bias, args)
    return lambda input, weight, bias: conv(input, weight, bias).contiguous(memory_format=memory_format)


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
