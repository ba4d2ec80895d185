"""The ops as PyTorch custom ops (torch.library), so autograd, torch.compile and torch.export see them.

Four ops, each with a fake (meta) implementation that only computes shapes:
  groupconv::conv_forward, groupconv::conv_backward_input, groupconv::conv_backward_weight,
  groupconv::channel_shuffle.
Forward and both backward halves are separate ops so that a fast backend can serve each one
separately. The backend is chosen at run time inside the op, so a compiled graph still honours
`use_backend` and later tuning.

Plain eager calls (`convolution` and `shuffle`, what groupconv.conv2d and channel_shuffle call) run
the same implementations and gradient formulas through torch.autograd.Functions instead
(EagerConv, EagerShuffle; `eager_function`): torch.library's dispatch costs ~100 us a call each
way, most of a small layer's time. Everything that must see the ops (torch.compile, torch.export,
functorch transforms, dispatch modes, tensor subclasses) still does. A call whose forward and
backward the dispatcher has settled on torch's kernels for runs torch's own ops directly.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import ClassVar, Optional, Sequence

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import native
from .arguments import ConvArguments, memory_format_of, output_size
from .dispatch import (Backend, ConvProblem, ShuffleProblem, backward_scope, choices_generation, forced_backend,
                       get_backend, layout_name, remembered_choice, scoped_backend, select_backend)


def _arguments(stride, padding, dilation, groups, shuffle_groups) -> ConvArguments:
    return ConvArguments(tuple(stride), tuple(padding), tuple(dilation), groups, shuffle_groups)


def _unpacked(args: ConvArguments) -> tuple:
    """The arguments as the ops take them, after the tensors and shapes (the inverse of `_arguments`)."""
    return args.stride, args.padding, args.dilation, args.groups, args.shuffle_groups


def _owned(out: Tensor, memory_format: torch.memory_format, *inputs: Tensor | None) -> Tensor:
    """`out` in the layout the fake impl promises, not a view, never sharing memory with an input (a custom
    op's contract).

    A backend may return a view of its input (a shuffle with one group is the identity) or of an
    intermediate (gemm's matmul result, reshaped).
    """
    out = out.contiguous(memory_format=memory_format)
    if out._is_view():  # a view of the backend's own intermediate: autograd must see a fresh tensor (in-place ReLU)
        out = out.detach()
    storage = out.untyped_storage().data_ptr()
    if any(t is not None and t.untyped_storage().data_ptr() == storage for t in inputs):
        out = out.clone(memory_format=memory_format)
    return out


def _empty_like_layout(shape: Sequence[int], like: Tensor) -> Tensor:
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device, memory_format=memory_format_of(like))


def _conv_forward(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    shuffle_groups: int,
) -> Tensor:
    args = _arguments(stride, padding, dilation, groups, shuffle_groups)
    problem = ConvProblem.build("conv_forward", input.shape, weight.shape, args, input, has_bias=bias is not None)
    return _run_forward(problem, input, weight, bias)


# Each op's implementation is the problem it makes of its arguments, then the _run_* function: the dispatch and the
# output's ownership. The eager path (EagerCall) builds its problems once per call signature and calls these directly.
def _run_forward(problem: ConvProblem, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    args = problem.arguments
    out = select_backend(problem, lambda b: b.conv_forward(input, weight, bias, args),
                         strategies=_strategies).conv_forward(input, weight, bias, args)
    return _owned(out, memory_format_of(input), input, weight, bias)


conv_forward = torch.library.custom_op("groupconv::conv_forward", _conv_forward, mutates_args=())


@conv_forward.register_fake
def _conv_forward_fake(input, weight, bias, stride, padding, dilation, groups, shuffle_groups):
    spatial = output_size(input.shape[2:], weight.shape[2:], stride, padding, padding, dilation)
    return _empty_like_layout((input.shape[0], weight.shape[0], *spatial), input)


def _conv_backward_input(
    grad_output: Tensor,
    weight: Tensor,
    input_shape: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    shuffle_groups: int,
) -> Tensor:
    args = _arguments(stride, padding, dilation, groups, shuffle_groups)
    problem = ConvProblem.build("conv_backward_input", input_shape, weight.shape, args, grad_output)
    return _run_backward_input(problem, grad_output, weight, input_shape)


def _run_backward_input(problem: ConvProblem, grad_output: Tensor, weight: Tensor, input_shape,
                        input: Optional[Tensor] = None, accumulate: Optional[Tensor] = None) -> Tensor:
    """(`input`: the forward's input where the caller has it, for its shape and layout; Backend.conv_backward_input.
    `accumulate`: a tensor added to the gradient, by the backend's kernel where it can: Backend.*_accumulating)"""
    args = problem.arguments
    backend = select_backend(problem, lambda b: b.conv_backward_input(grad_output, weight, input_shape, args, input),
                             strategies=_strategies)
    if accumulate is not None:
        summed = backend.conv_backward_input_accumulating(grad_output, weight, input_shape, args, input, accumulate)
        if summed is not None:
            return _owned(summed, memory_format_of(grad_output), grad_output, weight, accumulate)
    grad_input = backend.conv_backward_input(grad_output, weight, input_shape, args, input)
    return _accumulated(_owned(grad_input, memory_format_of(grad_output), grad_output, weight), accumulate)


def _accumulated(grad_input: Tensor, accumulate: Optional[Tensor]) -> Tensor:
    """grad_input (the op's own tensor) plus `accumulate`, in place: the pass autograd would make to sum them."""
    return grad_input if accumulate is None else grad_input.add_(accumulate)


conv_backward_input = torch.library.custom_op("groupconv::conv_backward_input", _conv_backward_input, mutates_args=())


@conv_backward_input.register_fake
def _conv_backward_input_fake(grad_output, weight, input_shape, stride, padding, dilation, groups, shuffle_groups):
    return _empty_like_layout(input_shape, grad_output)


def _conv_backward_weight(
    grad_output: Tensor,
    input: Tensor,
    weight_shape: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    shuffle_groups: int,
) -> Tensor:
    args = _arguments(stride, padding, dilation, groups, shuffle_groups)
    problem = ConvProblem.build("conv_backward_weight", input.shape, weight_shape, args, input)
    return _run_backward_weight(problem, grad_output, input, weight_shape)


def _run_backward_weight(problem: ConvProblem, grad_output: Tensor, input: Tensor, weight_shape) -> Tensor:
    args = problem.arguments
    backend = select_backend(problem, lambda b: b.conv_backward_weight(grad_output, input, weight_shape, args),
                             strategies=_strategies)
    grad_weight = backend.conv_backward_weight(grad_output, input, weight_shape, args)
    return _owned(grad_weight, torch.contiguous_format, grad_output, input)


conv_backward_weight = torch.library.custom_op("groupconv::conv_backward_weight", _conv_backward_weight,
                                               mutates_args=())


@conv_backward_weight.register_fake
def _conv_backward_weight_fake(grad_output, input, weight_shape, stride, padding, dilation, groups, shuffle_groups):
    return grad_output.new_empty(tuple(weight_shape))


class SplitGradients(Backend):
    """Each gradient by its own single-gradient op, each dispatched (and tuned) on its own: the best backend for the
    input gradient need not be the best for the weight gradient, and oneDNN computes a depthwise conv's two
    gradients faster apart than together. A tuning contender of conv_backward, not a registered backend."""

    name = "split"
    description = "the input and the weight gradient each on its own best backend"

    def conv_backward(self, grad_output, input, weight, args):
        return self.conv_backward_accumulating(grad_output, input, weight, args, None)

    def conv_backward_accumulating(self, grad_output, input, weight, args, accumulate):
        # The implementations, not the custom ops: this runs inside an op already (no autograd, no tracing here).
        problem = ConvProblem.build("conv_backward_input", input.shape, weight.shape, args, grad_output)
        return (_run_backward_input(problem, grad_output, weight, list(input.shape), input, accumulate),
                _conv_backward_weight(grad_output, input, list(weight.shape), *_unpacked(args)))


SPLIT_GRADIENTS = SplitGradients()


class ViaChannelsLast(Backend):
    """A contiguous (NCHW) 2-D conv computed in channels_last: the operands converted (the native kernels' tiled
    transpose), the channels_last problem dispatched and tuned on its own, the result converted back. It pays where
    the channels_last kernels beat every NCHW one by more than the conversions cost: ResNeXt-29's 128->128 g32 3x3
    at 32x32 runs forward+backward in ~31 ms on torch's NCHW kernels, ~8 ms on the channels_last ones, and the four
    conversions cost ~5 ms. A tuning contender of every op, not a registered backend."""

    name = "via_channels_last"
    description = "converted to channels_last, run on the best channels_last backend, converted back"

    @staticmethod
    def applies(problem: ConvProblem) -> bool:
        """Whether the converted operands would be channels_last (more than one channel and pixel, in and out), so
        that the problem they make differs from this one, and the native conversion kernel is there."""
        (_, channels, *size), weight_shape = problem.input_shape, problem.weight_shape
        if problem.layout != "contiguous" or problem.arguments.spatial_dims != 2 or problem.device_type != "cpu":
            return False
        out_size = output_size(size, weight_shape[2:], problem.arguments.stride, problem.arguments.padding,
                               problem.arguments.padding, problem.arguments.dilation)
        return (channels > 1 and weight_shape[0] > 1 and math.prod(size) > 1 and math.prod(out_size) > 1
                and problem.dtype in native.SUPPORTED_DTYPES and native.unavailable_reason() is None)

    def conv_forward(self, input, weight, bias, args):
        out = _conv_forward(_channels_last(input), weight, bias, *_unpacked(args))
        return _contiguous(out)

    def conv_backward_input(self, grad_output, weight, input_shape, args, input=None):
        return _contiguous(_conv_backward_input(_channels_last(grad_output), weight, list(input_shape),
                                                *_unpacked(args)))

    def conv_backward_weight(self, grad_output, input, weight_shape, args):
        return _conv_backward_weight(_channels_last(grad_output), _channels_last(input), list(weight_shape),
                                     *_unpacked(args))

    # One gradient after the other, each converted operand dropped as soon as its last use is done: at no time more
    # than two converted tensors the input's size, what oneDNN's NCHW path holds too (with both gradients at once,
    # a ResNeXt 3x3 conv's step held a third more than torch's, and the tuner, which weighs memory, left this out).
    def conv_backward(self, grad_output, input, weight, args):
        grad = _channels_last(grad_output)
        grad_weight = _conv_backward_weight(grad, _channels_last(input), list(weight.shape), *_unpacked(args))
        grad_input = _conv_backward_input(grad, weight, list(input.shape), *_unpacked(args))
        del grad
        return _contiguous(grad_input), grad_weight


def _channels_last(x: Tensor) -> Tensor:
    return native.to_memory_format(x, torch.channels_last)


def _contiguous(x: Tensor) -> Tensor:
    return native.to_memory_format(x, torch.contiguous_format)


VIA_CHANNELS_LAST = ViaChannelsLast()


def _strategies(problem: ConvProblem) -> list[Backend]:
    """The tuning contenders beyond the registered backends for `problem`."""
    strategies = [SPLIT_GRADIENTS] if problem.op == "conv_backward" else []
    if ViaChannelsLast.applies(problem):
        strategies.append(VIA_CHANNELS_LAST)
    return strategies


# Both gradients in one op: what a training step needs. A backend may compute them together (torch's
# convolution_backward shares its work between them: separately, a grouped 3x3 conv's two gradients cost oneDNN
# half as much again), and the tuner compares backends on the pair, as the step pays for it.
def _conv_backward_both(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    shuffle_groups: int,
) -> tuple[Tensor, Tensor]:
    args = _arguments(stride, padding, dilation, groups, shuffle_groups)
    return _run_backward_both(ConvProblem.build("conv_backward", input.shape, weight.shape, args, input), grad_output,
                              input, weight)


def _run_backward_both(problem: ConvProblem, grad_output: Tensor, input: Tensor, weight: Tensor,
                       accumulate: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """(`accumulate`: a tensor added to the input gradient, as in _run_backward_input)"""
    args = problem.arguments
    backend = select_backend(problem, lambda b: b.conv_backward(grad_output, input, weight, args),
                             strategies=_strategies)
    summed = None if accumulate is None else backend.conv_backward_accumulating(grad_output, input, weight, args,
                                                                                accumulate)
    if summed is not None:
        grad_input, grad_weight = summed
        grad_input = _owned(grad_input, memory_format_of(grad_output), grad_output, input, weight, accumulate)
    else:
        grad_input, grad_weight = backend.conv_backward(grad_output, input, weight, args)
        grad_input = _accumulated(_owned(grad_input, memory_format_of(grad_output), grad_output, input, weight),
                                  accumulate)
    return grad_input, _owned(grad_weight, torch.contiguous_format, grad_output, input, weight)


conv_backward = torch.library.custom_op("groupconv::conv_backward", _conv_backward_both, mutates_args=())


@conv_backward.register_fake
def _conv_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, shuffle_groups):
    return _empty_like_layout(input.shape, grad_output), grad_output.new_empty(tuple(weight.shape))


def _save_for_gradients(ctx, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    ctx.save_for_backward(input, weight)
    ctx.has_bias = bias is not None
    ctx.backend_scope = scoped_backend()  # a use_backend block around the forward covers its gradients too


def _conv_setup_context(ctx, inputs, output):
    input, weight, bias, *conv_arguments = inputs
    _save_for_gradients(ctx, input, weight, bias)
    ctx.gradient_ops = GradientOps(conv_arguments)


class GradientOps:
    """The ops conv_forward's backward formula computes its gradients with: here the custom ops (a backward that is
    itself differentiated needs them: they carry the double backward); EagerCall has the same three methods."""

    def __init__(self, conv_arguments: Sequence):
        self.conv_arguments = conv_arguments  # stride, padding, dilation, groups, shuffle_groups, as the ops take them

    # (`accumulate`, a shortcut's gradient, added out of place: differentiable, for a backward under create_graph)
    def both(self, grad_output: Tensor, input: Tensor, weight: Tensor,
             accumulate: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        grad_input, grad_weight = conv_backward(grad_output, input, weight, *self.conv_arguments)
        return (grad_input if accumulate is None else grad_input + accumulate), grad_weight

    def input_only(self, grad_output: Tensor, weight: Tensor, input: Tensor,
                   accumulate: Optional[Tensor] = None) -> Tensor:
        grad_input = conv_backward_input(grad_output, weight, list(input.shape), *self.conv_arguments)
        return grad_input if accumulate is None else grad_input + accumulate

    def weight_only(self, grad_output: Tensor, input: Tensor, weight_shape: list[int]) -> Tensor:
        return conv_backward_weight(grad_output, input, weight_shape, *self.conv_arguments)


def _conv_gradients(ctx, grad_output: Tensor, ops, accumulate: Optional[Tensor] = None
                    ) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """conv_forward's backward formula: the gradients of input, weight and bias, computed with `ops` (GradientOps or
    an EagerCall); `accumulate` (a shortcut's gradient, EagerConvWithShortcut) is added to the input's."""
    with backward_scope(ctx.backend_scope):
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0] and ctx.needs_input_grad[1]:
            grad_input, grad_weight = ops.both(grad_output, input, weight, accumulate)
        elif ctx.needs_input_grad[0]:
            grad_input = ops.input_only(grad_output, weight, input, accumulate)
        elif ctx.needs_input_grad[1]:
            grad_weight = ops.weight_only(grad_output, input, list(weight.shape))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(dim=[0, *range(2, grad_output.dim())])
    return grad_input, grad_weight, grad_bias


def _conv_backward(ctx, grad_output):
    return *_conv_gradients(ctx, grad_output, ctx.gradient_ops), None, None, None, None, None


conv_forward.register_autograd(_conv_backward, setup_context=_conv_setup_context)


def eager_function(name: str, implementation, setup_context, backward, doc: str) -> type[torch.autograd.Function]:
    """A torch.autograd.Function that runs a custom op's implementation, setup_context and backward formula without
    the custom op's machinery: what plain eager calls use (see the module docstring). Its backward node is named
    `name + "Backward"` in autograd graphs and profiles."""

    # forward(ctx, ...) rather than a separate setup_context: that form binds the arguments with inspect on every call.
    def forward(ctx, *inputs):
        output = implementation(*inputs)
        setup_context(ctx, inputs, output)
        return output

    return type(name, (torch.autograd.Function,), {"__doc__": doc, "forward": staticmethod(forward),
                                                   "backward": staticmethod(backward)})


class EagerCall:
    """One signature of eager conv calls (shapes, arguments, dtype, device, layout, thread count) and the dispatch
    problems its forward and gradients make, each built once and then looked up: a call pays one dict lookup where it
    built three problems (and their hashes) before. With the ops' implementations minus that work (the _run_*
    functions), this is the EagerConv path. Its gradient methods are GradientOps' for the implementations."""

    _calls: ClassVar[dict[tuple, EagerCall]] = {}

    def __init__(self, forward_problem: ConvProblem):
        self.forward_problem = forward_problem
        self.conv_arguments = [list(forward_problem.arguments.stride), list(forward_problem.arguments.padding),
                               list(forward_problem.arguments.dilation), forward_problem.arguments.groups,
                               forward_problem.arguments.shuffle_groups]
        self._gradient_problems: dict[tuple, ConvProblem] = {}
        self._on_torch: dict[tuple[bool, bool], bool] = {}  # runs_on_torch's answers, while the choices hold
        self._choices_generation = choices_generation()

    @classmethod
    def of(cls, input: Tensor, weight: Tensor, bias: Optional[Tensor], args: ConvArguments) -> "EagerCall":
        key = (input.shape, weight.shape, bias is None, args, input.dtype, input.device, layout_name(input),
               torch.get_num_threads())
        call = cls._calls.get(key)
        if call is None:
            call = cls._calls[key] = cls(ConvProblem.build("conv_forward", input.shape, weight.shape, args, input,
                                                           has_bias=bias is not None))
        return call

    def gradient_problem(self, op: str, like: Tensor) -> ConvProblem:
        """The problem of gradient op `op` (one of CONV_OPS but conv_forward) whose output follows `like`'s layout."""
        key = (op, layout_name(like), torch.get_num_threads())
        problem = self._gradient_problems.get(key)
        if problem is None:
            forward = self.forward_problem
            problem = self._gradient_problems[key] = ConvProblem.build(op, forward.input_shape, forward.weight_shape,
                                                                       forward.arguments, like)
        return problem

    def runs_on_torch(self, input: Tensor, weight: Tensor) -> bool:
        """Whether the dispatcher has chosen torch's own kernels for this call's forward and for the backward it will
        need (and no backend is forced).

        Then the aten backend's forward (F.convNd, with a fused shuffle as torch's channel_shuffle on the smaller
        side) runs with torch's own autograd, and groupconv costs only its argument checks: EagerConv's Python adds
        ~0.1 ms per forward and backward, 10-30% of a 7x7 depthwise layer's time (384 channels read through an
        8-group shuffle: 1.58 ms forward+backward through EagerConv, 1.20 ms this way, 1.07 ms for torch's own
        layer). The answer is kept until the choices are forgotten: right after a large layer's kernels have flushed
        the caches, each Python step of the question costs ~10 us."""
        if forced_backend() is not None:
            return False
        needs = (input.requires_grad, weight.requires_grad) if torch.is_grad_enabled() else (False, False)
        if self._choices_generation != choices_generation():
            self._on_torch.clear()
            self._choices_generation = choices_generation()
        answer = self._on_torch.get(needs)
        if answer is None:
            answer = self._settled_on_torch(*needs, input)
            if answer is not None:
                self._on_torch[needs] = answer
        return bool(answer)

    def _settled_on_torch(self, input_grad: bool, weight_grad: bool, input: Tensor) -> bool | None:
        """runs_on_torch's answer from the choices made so far; None while one it depends on is still to be made."""
        chosen = remembered_choice(self.forward_problem)
        if chosen != "aten":
            return None if chosen is None else False
        if not (input_grad or weight_grad):
            return True  # no backward op (a bias gradient alone is a sum, never dispatched)
        op = "conv_backward" if input_grad and weight_grad else "conv_backward_input" if input_grad else \
            "conv_backward_weight"
        chosen = remembered_choice(self.gradient_problem(op, input))
        return None if chosen is None else chosen == "aten"

    def forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        return _run_forward(self.forward_problem, input, weight, bias)

    def both(self, grad_output: Tensor, input: Tensor, weight: Tensor,
             accumulate: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return _run_backward_both(self.gradient_problem("conv_backward", input), grad_output, input, weight,
                                  accumulate)

    def input_only(self, grad_output: Tensor, weight: Tensor, input: Tensor,
                   accumulate: Optional[Tensor] = None) -> Tensor:
        return _run_backward_input(self.gradient_problem("conv_backward_input", grad_output), grad_output, weight,
                                   list(input.shape), input, accumulate)

    def weight_only(self, grad_output: Tensor, input: Tensor, weight_shape: list[int]) -> Tensor:
        return _run_backward_weight(self.gradient_problem("conv_backward_weight", input), grad_output, input,
                                    weight_shape)


def _eager_conv_setup_context(ctx, inputs, output):
    input, weight, bias, call = inputs
    _save_for_gradients(ctx, input, weight, bias)
    ctx.call = call


def _eager_conv_backward(ctx, grad_output, accumulate: Optional[Tensor] = None):
    """EagerConv's gradients (and EagerConvWithShortcut's, `accumulate` its shortcut's gradient)."""
    # A backward that must itself be differentiated (create_graph) goes through the custom ops, which carry the
    # double backward.
    if torch.is_grad_enabled():
        return *_conv_gradients(ctx, grad_output, GradientOps(ctx.call.conv_arguments), accumulate), None
    with profiled("groupconv::conv_backward"):
        return *_conv_gradients(ctx, grad_output, ctx.call, accumulate), None


EagerConv = eager_function(
    "EagerConv", lambda input, weight, bias, call: call.forward(input, weight, bias), _eager_conv_setup_context,
    _eager_conv_backward,
    """groupconv::conv_forward and its backward for plain eager calls (input, weight, bias, and the call's EagerCall).
    Why: torch.library's Python custom-op dispatch costs ~100 us per call forward and as much backward (measured on a
    32x144x7x7 depthwise layer: 260 us forward against torch's 140), which is most of a small layer's time.""")


# A Parameter is a plain tensor to torch's dispatch (it disables __torch_function__); other subclasses may not be.
_PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)


def runs_eagerly(*tensors: Tensor | None) -> bool:
    """Whether a call on these tensors may skip the custom ops: plain tensors, outside torch.compile and export,
    functorch transforms and dispatch modes (FlopCounterMode, fake tensors), which all must see the custom op."""
    return (not torch.compiler.is_compiling()
            and torch._C._functorch.peek_interpreter_stack() is None
            and _get_current_dispatch_mode() is None
            and all(type(t) in _PLAIN_TENSOR_TYPES for t in tensors if t is not None))


def profiled(name: str):
    """A profiler label for an eager call, so profiles still name the op (free when no profiler runs)."""
    return torch.profiler.record_function(name) if torch._C._autograd._profiler_enabled() else nullcontext()


def convolution(input: Tensor, weight: Tensor, bias: Optional[Tensor], args: ConvArguments) -> Tensor:
    """conv_forward, with autograd: by torch's own conv where the dispatcher settled on it, else by EagerConv where
    it may run, else by the custom op."""
    if runs_eagerly(input, weight, bias):
        call = EagerCall.of(input, weight, bias, args)
        if call.runs_on_torch(input, weight):
            out = get_backend("aten").conv_forward(input, weight, bias, args)  # torch's ops: torch's autograd
            return out.contiguous(memory_format=memory_format_of(input))  # the layout the ops promise (a no-op)
        with profiled("groupconv::conv_forward"):
            return EagerConv.apply(input, weight, bias, call)
    return conv_forward(input, weight, bias, list(args.stride), list(args.padding), list(args.dilation), args.groups,
                        args.shuffle_groups)


class EagerConvWithShortcut(torch.autograd.Function):
    """EagerConv that also returns its input, as a residual block's shortcut: (conv(input), input), one autograd node.

    Why: the block's input feeds its first conv and its shortcut, and autograd sums the two gradients in a pass of its
    own (2 reads and a write of the input's size: 2.3 ms for each 32x384x28x28 input of ShuffleNet g=8's stage 2).
    Here the node receives both, and the conv's input-gradient kernel adds the shortcut's as it writes its own
    (Backend.conv_backward_accumulating; elsewhere the sum is the same pass autograd would make)."""

    @staticmethod
    def forward(ctx, input, weight, bias, call):
        output = call.forward(input, weight, bias)
        _eager_conv_setup_context(ctx, (input, weight, bias, call), output)
        ctx.set_materialize_grads(False)  # (an unused output's gradient stays None: nothing to add)
        return output, input  # (autograd returns the input as a view whose gradient comes here)

    @staticmethod
    def backward(ctx, grad_output, grad_shortcut):
        if grad_output is None:  # the conv's output unused: the input's gradient is the shortcut's alone
            return grad_shortcut, None, None, None
        return _eager_conv_backward(ctx, grad_output, grad_shortcut)


def convolution_with_shortcut(input: Tensor, weight: Tensor, bias: Optional[Tensor],
                              args: ConvArguments) -> tuple[Tensor, Tensor]:
    """(convolution(input, ...), input): by EagerConvWithShortcut where the call runs eagerly on groupconv's
    kernels; elsewhere (torch's kernels settled on, compile and export, dispatch modes) the input itself, whose two
    gradients autograd sums."""
    if runs_eagerly(input, weight, bias):
        call = EagerCall.of(input, weight, bias, args)
        if not call.runs_on_torch(input, weight):
            with profiled("groupconv::conv_forward"):
                return EagerConvWithShortcut.apply(input, weight, bias, call)
    return convolution(input, weight, bias, args), input


# Double backward. Both backward ops are bilinear in their tensor arguments, so their own
# gradients are the other two conv ops (the adjoint identities <a, F(x, w)> = <BI(a, w), x>
# = <BW(a, x), w>); this gives gradient penalties and Hessian-vector products, as with torch's conv.
def _backward_input_setup_context(ctx, inputs, output):
    grad_output, weight, input_shape, *conv_arguments = inputs
    ctx.save_for_backward(grad_output, weight)
    ctx.conv_arguments = conv_arguments


def _backward_input_backward(ctx, grad_grad_input):
    grad_output, weight = ctx.saved_tensors
    grad_grad_output = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_grad_output = conv_forward(grad_grad_input, weight, None, *ctx.conv_arguments)
    if ctx.needs_input_grad[1]:
        grad_weight = conv_backward_weight(grad_output, grad_grad_input, list(weight.shape), *ctx.conv_arguments)
    return grad_grad_output, grad_weight, None, None, None, None, None, None


conv_backward_input.register_autograd(_backward_input_backward, setup_context=_backward_input_setup_context)


def _backward_weight_setup_context(ctx, inputs, output):
    grad_output, input, weight_shape, *conv_arguments = inputs
    ctx.save_for_backward(grad_output, input)
    ctx.conv_arguments = conv_arguments


def _backward_weight_backward(ctx, grad_grad_weight):
    grad_output, input = ctx.saved_tensors
    grad_grad_output = grad_input = None
    if ctx.needs_input_grad[0]:
        grad_grad_output = conv_forward(input, grad_grad_weight, None, *ctx.conv_arguments)
    if ctx.needs_input_grad[1]:
        grad_input = conv_backward_input(grad_output, grad_grad_weight, list(input.shape), *ctx.conv_arguments)
    return grad_grad_output, grad_input, None, None, None, None, None, None


conv_backward_weight.register_autograd(_backward_weight_backward, setup_context=_backward_weight_setup_context)


def _backward_setup_context(ctx, inputs, output):
    grad_output, input, weight, *conv_arguments = inputs
    ctx.save_for_backward(grad_output, input, weight)
    ctx.conv_arguments = conv_arguments


def _backward_backward(ctx, grad_grad_input, grad_grad_weight):
    """The sum of the two single-gradient ops' backward formulas above (either incoming gradient may be None)."""
    grad_output, input, weight = ctx.saved_tensors
    grad_grad_output = grad_input = grad_weight = None
    if ctx.needs_input_grad[0]:
        terms = []
        if grad_grad_input is not None:
            terms.append(conv_forward(grad_grad_input, weight, None, *ctx.conv_arguments))
        if grad_grad_weight is not None:
            terms.append(conv_forward(input, grad_grad_weight, None, *ctx.conv_arguments))
        grad_grad_output = sum(terms) if terms else None
    if ctx.needs_input_grad[1] and grad_grad_weight is not None:
        grad_input = conv_backward_input(grad_output, grad_grad_weight, list(input.shape), *ctx.conv_arguments)
    if ctx.needs_input_grad[2] and grad_grad_input is not None:
        grad_weight = conv_backward_weight(grad_output, grad_grad_input, list(weight.shape), *ctx.conv_arguments)
    return grad_grad_output, grad_input, grad_weight, None, None, None, None, None


conv_backward.register_autograd(_backward_backward, setup_context=_backward_setup_context)


def _channel_shuffle(x: Tensor, groups: int) -> Tensor:
    problem = ShuffleProblem.build(x, groups)
    out = select_backend(problem, lambda b: b.channel_shuffle(x, groups)).channel_shuffle(x, groups)
    return _owned(out, memory_format_of(x), x)


channel_shuffle = torch.library.custom_op("groupconv::channel_shuffle", _channel_shuffle, mutates_args=())


@channel_shuffle.register_fake
def _channel_shuffle_fake(x, groups):
    return _empty_like_layout(x.shape, x)


def _shuffle_setup_context(ctx, inputs, output):
    x, groups = inputs
    ctx.inverse_groups = x.shape[1] // groups


def _shuffle_backward(ctx, grad_output):
    # The inverse of a shuffle with g groups is a shuffle with C/g groups.
    return channel_shuffle(grad_output, ctx.inverse_groups), None


channel_shuffle.register_autograd(_shuffle_backward, setup_context=_shuffle_setup_context)


EagerShuffle = eager_function(
    "EagerShuffle", _channel_shuffle, _shuffle_setup_context,
    lambda ctx, grad_output: (shuffle(grad_output, ctx.inverse_groups), None),
    """groupconv::channel_shuffle and its backward for plain eager calls. Its backward is a shuffle too, so it is
    differentiable any number of times.""")


def shuffle(x: Tensor, groups: int) -> Tensor:
    """channel_shuffle, with autograd: by EagerShuffle where it may run, else by the custom op."""
    if runs_eagerly(x):
        with profiled("groupconv::channel_shuffle"):
            return EagerShuffle.apply(x, groups)
    return channel_shuffle(x, groups)
