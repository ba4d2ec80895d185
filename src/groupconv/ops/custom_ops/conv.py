"""The convolution as PyTorch custom ops (torch.library), so autograd, torch.compile and torch.export see them.

Four ops, each with a fake (meta) implementation that only computes shapes: groupconv::conv_forward,
groupconv::conv_backward_input, groupconv::conv_backward_weight and groupconv::conv_backward (both gradients).
Forward and the backward halves are separate ops so that a fast backend can serve each one separately. The
backend is chosen at run time inside the op, so a compiled graph still honours `use_backend` and later tuning.

Each op's implementation is the problem it makes of its arguments, then a run_* function: the dispatch and the
output's ownership. The eager path (eager_conv.py) builds its problems once per call signature and calls the run_*
functions directly. The backward ops' own derivatives are in double_backward.py.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..arguments import ConvArguments, memory_format_of, output_size
from ..dispatch import ConvProblem, backward_scope, scoped_backend, select_backend
from .outputs import empty_like_layout, owned


def _arguments(stride, padding, dilation, groups, shuffle_groups) -> ConvArguments:
    return ConvArguments(tuple(stride), tuple(padding), tuple(dilation), groups, shuffle_groups)


def unpacked(args: ConvArguments) -> tuple:
    """The arguments as the ops take them, after the tensors and shapes (the inverse of `_arguments`)."""
    return args.stride, args.padding, args.dilation, args.groups, args.shuffle_groups


def conv_forward_implementation(
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
    return run_forward(problem, input, weight, bias)


def run_forward(problem: ConvProblem, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    args = problem.arguments
    backend = select_backend(problem, lambda b: b.conv_forward(input, weight, bias, args))
    out = backend.conv_forward(input, weight, bias, args)
    return owned(out, memory_format_of(input), input, weight, bias)


conv_forward = torch.library.custom_op("groupconv::conv_forward", conv_forward_implementation, mutates_args=())


@conv_forward.register_fake
def _conv_forward_fake(input, weight, bias, stride, padding, dilation, groups, shuffle_groups):
    spatial = output_size(input.shape[2:], weight.shape[2:], stride, padding, padding, dilation)
    return empty_like_layout((input.shape[0], weight.shape[0], *spatial), input)


def conv_backward_input_implementation(
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
    return run_backward_input(problem, grad_output, weight, input_shape)


def run_backward_input(problem: ConvProblem, grad_output: Tensor, weight: Tensor, input_shape,
                        input: Optional[Tensor] = None, accumulate: Optional[Tensor] = None) -> Tensor:
    """(`input`: the forward's input where the caller has it, for its shape and layout; Backend.conv_backward_input.
    `accumulate`: a tensor added to the gradient, by the backend's kernel where it can: Backend.*_accumulating)"""
    args = problem.arguments
    backend = select_backend(problem, lambda b: b.conv_backward_input(grad_output, weight, input_shape, args, input))
    if accumulate is not None:
        summed = backend.conv_backward_input_accumulating(grad_output, weight, input_shape, args, input, accumulate)
        if summed is not None:
            return owned(summed, memory_format_of(grad_output), grad_output, weight, accumulate)
    grad_input = backend.conv_backward_input(grad_output, weight, input_shape, args, input)
    return _accumulated(owned(grad_input, memory_format_of(grad_output), grad_output, weight), accumulate)


def _accumulated(grad_input: Tensor, accumulate: Optional[Tensor]) -> Tensor:
    """grad_input (the op's own tensor) plus `accumulate`, in place: the pass autograd would make to sum them."""
    return grad_input if accumulate is None else grad_input.add_(accumulate)


conv_backward_input = torch.library.custom_op("groupconv::conv_backward_input", conv_backward_input_implementation,
                                              mutates_args=())


@conv_backward_input.register_fake
def _conv_backward_input_fake(grad_output, weight, input_shape, stride, padding, dilation, groups, shuffle_groups):
    return empty_like_layout(input_shape, grad_output)


def conv_backward_weight_implementation(
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
    return run_backward_weight(problem, grad_output, input, weight_shape)


def run_backward_weight(problem: ConvProblem, grad_output: Tensor, input: Tensor, weight_shape) -> Tensor:
    args = problem.arguments
    backend = select_backend(problem, lambda b: b.conv_backward_weight(grad_output, input, weight_shape, args))
    grad_weight = backend.conv_backward_weight(grad_output, input, weight_shape, args)
    return owned(grad_weight, torch.contiguous_format, grad_output, input)


conv_backward_weight = torch.library.custom_op("groupconv::conv_backward_weight", conv_backward_weight_implementation,
                                               mutates_args=())


@conv_backward_weight.register_fake
def _conv_backward_weight_fake(grad_output, input, weight_shape, stride, padding, dilation, groups, shuffle_groups):
    return grad_output.new_empty(tuple(weight_shape))


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
    return run_backward_both(ConvProblem.build("conv_backward", input.shape, weight.shape, args, input), grad_output,
                              input, weight)


def run_backward_both(problem: ConvProblem, grad_output: Tensor, input: Tensor, weight: Tensor,
                       accumulate: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """(`accumulate`: a tensor added to the input gradient, as in run_backward_input)"""
    args = problem.arguments
    backend = select_backend(problem, lambda b: b.conv_backward(grad_output, input, weight, args))
    summed = None if accumulate is None else backend.conv_backward_accumulating(grad_output, input, weight, args,
                                                                                accumulate)
    if summed is not None:
        grad_input, grad_weight = summed
        grad_input = owned(grad_input, memory_format_of(grad_output), grad_output, input, weight, accumulate)
    else:
        grad_input, grad_weight = backend.conv_backward(grad_output, input, weight, args)
        grad_input = _accumulated(owned(grad_input, memory_format_of(grad_output), grad_output, input, weight),
                                  accumulate)
    return grad_input, owned(grad_weight, torch.contiguous_format, grad_output, input, weight)


conv_backward = torch.library.custom_op("groupconv::conv_backward", _conv_backward_both, mutates_args=())


@conv_backward.register_fake
def _conv_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, shuffle_groups):
    return empty_like_layout(input.shape, grad_output), grad_output.new_empty(tuple(weight.shape))


def save_for_gradients(ctx, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    ctx.save_for_backward(input, weight)
    ctx.has_bias = bias is not None
    ctx.backend_scope = scoped_backend()  # a use_backend block around the forward covers its gradients too


def _conv_setup_context(ctx, inputs, output):
    input, weight, bias, *conv_arguments = inputs
    save_for_gradients(ctx, input, weight, bias)
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


def conv_gradients(ctx, grad_output: Tensor, ops, accumulate: Optional[Tensor] = None
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
    return *conv_gradients(ctx, grad_output, ctx.gradient_ops), None, None, None, None, None


conv_forward.register_autograd(_conv_backward, setup_context=_conv_setup_context)
