"""Batch norm fused with the residual add, ReLU and concatenation that follow it, as PyTorch custom ops over the
native kernel (csrc/batch_norm.cpp): groupconv::batch_norm_forward and groupconv::batch_norm_backward, so autograd,
torch.compile and torch.export see it; plain eager calls run the same functions through EagerBatchNorm, without
torch.library's per-call cost (eager.py).

`fused_batch_norm` is what the native backend runs for groupconv.ops.batch_norm. Not supported on this path:
double backward (torch's BN has it; the aten backend runs it, `use_backend("aten")`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..arguments import memory_format_of
from ..backends.native import build
from .eager import eager_function, profiled, runs_eagerly


def _batch_norm_forward(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor],
                        running_mean: Optional[Tensor], running_var: Optional[Tensor], training: bool, eps: float,
                        relu: bool, concat: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(output, mean, invstd, biased variance), the statistics those of the batch in training, else the running ones."""
    output, mean, invstd, var = build.load().batch_norm_forward(input, weight, bias, residual, running_mean,
                                                                 running_var, training, eps, relu, concat)
    return output, mean, invstd, var


batch_norm_forward = torch.library.custom_op("groupconv::batch_norm_forward", _batch_norm_forward, mutates_args=())


@batch_norm_forward.register_fake
def _batch_norm_forward_fake(input, weight, bias, residual, running_mean, running_var, training, eps, relu, concat):
    channels = input.new_empty((input.shape[1],))
    shape = list(input.shape)
    if concat is not None:
        shape[1] += concat.shape[1]
    return (input.new_empty(shape).contiguous(memory_format=memory_format_of(input)), channels,
            torch.empty_like(channels), torch.empty_like(channels))


def _batch_norm_backward(grad_output: Tensor, input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                         residual: Optional[Tensor], mean: Tensor, invstd: Tensor, training: bool, relu: bool,
                         residual_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_input, grad_weight, grad_bias, grad_residual); grad_residual is empty unless residual_grad."""
    grad_input, grad_weight, grad_bias, grad_residual = build.load().batch_norm_backward(
        grad_output, input, weight, bias, residual, mean, invstd, training, relu, residual_grad)
    return grad_input, grad_weight, grad_bias, grad_residual


batch_norm_backward = torch.library.custom_op("groupconv::batch_norm_backward", _batch_norm_backward,
                                              mutates_args=())


@batch_norm_backward.register_fake
def _batch_norm_backward_fake(grad_output, input, weight, bias, residual, mean, invstd, training, relu,
                              residual_grad):
    channels = input.new_empty((input.shape[1],))
    grad_residual = torch.empty_like(input, memory_format=memory_format_of(input)) if residual_grad else \
        input.new_empty((0,))
    return (torch.empty_like(input, memory_format=memory_format_of(input)), channels, torch.empty_like(channels),
            grad_residual)


def _setup_context(ctx, inputs, output):
    input, weight, bias, residual, running_mean, running_var, training, eps, relu, concat = inputs
    _, mean, invstd, _ = output
    ctx.save_for_backward(input, weight, bias, residual, mean, invstd)
    ctx.training, ctx.relu, ctx.concatenated = training, relu, concat is not None
    ctx.mark_non_differentiable(*output[1:])


def _gradients(ctx, grad_output, backward_op):
    input, weight, bias, residual, mean, invstd = ctx.saved_tensors
    needs_input, needs_weight, needs_bias, needs_residual = ctx.needs_input_grad[:4]
    grad_concat = None
    if ctx.concatenated:  # the concatenation's gradient: the normalised channels', then concat's (views)
        channels = input.shape[1]
        grad_concat = grad_output.narrow(1, channels, grad_output.shape[1] - channels)
        grad_output = grad_output.narrow(1, 0, channels)
    # Without a ReLU the residual's gradient is grad_output itself: no pass needed for it.
    masked_residual_grad = needs_residual and ctx.relu
    # (grad_output as autograd hands it over: the kernel reads a view in place, such as a channel slice of a
    # concatenation's gradient or a global pool's gradient expanded over the pixels, and copies other strides)
    grad_input, grad_weight, grad_bias, grad_residual = backward_op(
        grad_output, input, weight, bias, residual, mean, invstd, ctx.training, ctx.relu, masked_residual_grad)
    if needs_residual and not ctx.relu:
        grad_residual = grad_output
    return (grad_input if needs_input else None, grad_weight if needs_weight else None,
            grad_bias if needs_bias else None, grad_residual if needs_residual else None,
            None, None, None, None, None, grad_concat if ctx.needs_input_grad[9] else None)


def _backward(ctx, grad_output, _grad_mean, _grad_invstd, _grad_var):
    return _gradients(ctx, grad_output, batch_norm_backward)


batch_norm_forward.register_autograd(_backward, setup_context=_setup_context)


def _eager_backward(ctx, grad_output, _grad_mean, _grad_invstd, _grad_var):
    # The backward op has no derivative of its own: the custom op (which says so) under create_graph.
    if torch.is_grad_enabled():
        return _gradients(ctx, grad_output, batch_norm_backward)
    with profiled("groupconv::batch_norm_backward"):
        return _gradients(ctx, grad_output, _batch_norm_backward)


EagerBatchNorm = eager_function(
    "EagerBatchNorm", _batch_norm_forward, _setup_context, _eager_backward,
    """groupconv::batch_norm_forward and its backward for plain eager calls, without the custom op's machinery
    (~100 us a call forward and backward), as eager_conv.EagerConv does for the convolution.""")


def fused_batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                     weight: Optional[Tensor], bias: Optional[Tensor], training: bool, momentum: float, eps: float,
                     residual: Optional[Tensor], relu: bool, concat: Optional[Tensor]) -> Tensor:
    """groupconv.ops.batch_norm on the native kernel (by the eager Function or the custom op), the running statistics
    updated as torch's batch norm updates them."""
    if residual is not None:
        residual = residual.contiguous(memory_format=memory_format_of(input))
    inputs = (input, weight, bias, residual, running_mean, running_var, training, eps, relu, concat)
    if runs_eagerly(input, weight, bias, residual, running_mean, running_var, concat):
        with profiled("groupconv::batch_norm_forward"):
            output, mean, _, var = EagerBatchNorm.apply(*inputs)
    else:
        output, mean, _, var = batch_norm_forward(*inputs)
    if training and running_mean is not None and running_var is not None:
        # torch's update: the running variance takes the batch's unbiased variance.
        count = input.numel() // input.shape[1]
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var, alpha=momentum * count / (count - 1))
    return output
