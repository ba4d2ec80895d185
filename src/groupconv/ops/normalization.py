"""Batch normalisation fused with the residual add and ReLU that follow it in a conv block.

`batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, residual=None,
relu=False, concat=None)` is torch.nn.functional.batch_norm (same arguments, same running-statistics
update), followed by `+ residual` and a ReLU when asked: y = relu(bn(input) + residual); with
`concat`, torch.cat((y, concat), 1), y written into the concatenation directly (ShuffleNet's
downsampling units concatenate their branch with the pooled shortcut: one pass over the output less).

Why: those are memory-bound passes, and in training torch makes each separately, forward and
backward. In a ShuffleNet g=8 step they cost as much as all its convolutions, and its activations,
2.7x g=1's at equal multiply-adds, are what makes g=8 slow. The native kernel
(csrc/batch_norm.cpp) makes two passes forward and two backward, and measured 1.8-3.3x faster than
torch's BN + ReLU on the zoo's activation shapes (benchmarks/bench_batch_norm.py).

The kernel runs CPU float32/float64 tensors, contiguous or channels_last, with a residual of the
input's shape; anything else (CUDA, half precision, other strides, a broadcast residual), or a
build without the native kernels, runs torch's own ops, with the same results. Two custom ops
(groupconv::batch_norm_forward and groupconv::batch_norm_backward) carry the kernel, so autograd,
torch.compile and torch.export see it; plain eager calls run the same functions through
EagerBatchNorm, without torch.library's per-call cost (library.eager_function). Not supported on the native path: double backward (torch's
BN has it; use `relu=False` on a composite graph if a gradient penalty needs it).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import native
from .arguments import memory_format_of
from .library import eager_function, profiled, runs_eagerly

NATIVE_DTYPES = (torch.float32, torch.float64)
# Below this many values torch's ops win: the fused op's fixed cost (~80 us forward, ~130 us forward and backward
# in eager mode, against torch's ~50 / ~100 for its BN and ReLU) outweighs the passes it saves. Measured with
# benchmarks/bench_batch_norm.py --min-values 0 and on smaller shapes alike: at 32K values (8x64x8x8) the fused op
# is 0.9x torch forward+backward, at 128K (32x64x8x8) 1.0-1.2x, at 256K 1.1-1.4x, at 1M and up 1.2-2.7x.
NATIVE_MIN_VALUES = 1 << 17


def _batch_norm_forward(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor],
                        running_mean: Optional[Tensor], running_var: Optional[Tensor], training: bool, eps: float,
                        relu: bool, concat: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(output, mean, invstd, biased variance), the statistics those of the batch in training, else the running ones."""
    output, mean, invstd, var = native.load().batch_norm_forward(input, weight, bias, residual, running_mean,
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
    grad_input, grad_weight, grad_bias, grad_residual = native.load().batch_norm_backward(
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
    (~100 us a call forward and backward), as library.EagerConv does for the convolution.""")


def native_unsupported_reasons(input: Tensor, residual: Optional[Tensor] = None, relu: bool = False,
                               concat: Optional[Tensor] = None) -> list[str]:
    """Why the native kernel does not run this call (empty: it does), as the conv backends say it."""
    reasons = []
    if residual is None and not relu and concat is None and memory_format_of(input) != torch.contiguous_format:
        # Nothing to fuse, and torch's channels_last BN is as fast as the kernel (0.86-0.98x, bench_batch_norm.py);
        # in NCHW the kernel is 1.3-1.4x faster than torch's BN alone.
        reasons.append("channels_last with no ReLU, residual or concatenation to fuse: torch's batch norm is as fast")
    if input.numel() < NATIVE_MIN_VALUES:
        reasons.append(f"{input.numel()} values, fewer than {NATIVE_MIN_VALUES}: torch's ops are faster there")
    if input.device.type != "cpu":
        reasons.append(f"device {input.device.type} is not cpu")
    if input.dtype not in NATIVE_DTYPES:
        reasons.append(f"dtype {input.dtype} is not one of {NATIVE_DTYPES}")
    if not (input.is_contiguous() or input.is_contiguous(memory_format=memory_format_of(input))):
        reasons.append(f"input strides {input.stride()} are neither contiguous nor channels_last")
    if residual is not None and (residual.shape != input.shape or residual.dtype != input.dtype
                                 or residual.device != input.device):
        reasons.append(f"residual {tuple(residual.shape)} {residual.dtype} is not of the input's shape and dtype")
    if concat is not None and concat.dtype != input.dtype:
        reasons.append(f"concat's dtype {concat.dtype} is not the input's {input.dtype}")
    if not reasons and native.unavailable_reason():
        reasons.append(native.unavailable_reason())
    return reasons


def _check_arguments(input, running_mean, running_var, weight, bias, training, residual, concat):
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(f"batch_norm expects input of shape (N, C, ...), got input.dim()={input.dim()}")
    channels = input.shape[1]
    for name, value in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                        ("bias", bias)):
        if value is not None and tuple(value.shape) != (channels,):
            raise ValueError(f"{name} must have shape ({channels},) for input of {channels} channels, "
                             f"got {tuple(value.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("training=False needs running_mean and running_var, got "
                         f"running_mean={'None' if running_mean is None else 'a tensor'}, "
                         f"running_var={'None' if running_var is None else 'a tensor'}")
    if training and input.numel() // channels <= 1:
        raise ValueError(f"training needs more than one value per channel, got input of shape {tuple(input.shape)}")
    if residual is not None and not isinstance(residual, Tensor):
        raise TypeError(f"residual must be a torch.Tensor or None, got {type(residual).__name__}")
    if concat is not None:
        if not isinstance(concat, Tensor):
            raise TypeError(f"concat must be a torch.Tensor or None, got {type(concat).__name__}")
        if (concat.dim() != input.dim() or concat.shape[0] != input.shape[0] or concat.shape[2:] != input.shape[2:]
                or concat.device != input.device):
            raise ValueError(f"concat must have the input's batch and spatial size (and device) to be concatenated "
                             f"along its channels: got concat of shape {tuple(concat.shape)} on {concat.device} for "
                             f"input of shape {tuple(input.shape)} on {input.device}")


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, residual: Optional[Tensor] = None,
               relu: bool = False, concat: Optional[Tensor] = None) -> Tensor:
    """torch.nn.functional.batch_norm, then `+ residual` (if given), then ReLU (if `relu`), fused on CPU; with
    `concat`, torch.cat((that, concat), 1), written into the concatenation directly."""
    _check_arguments(input, running_mean, running_var, weight, bias, training, residual, concat)
    if native_unsupported_reasons(input, residual, relu, concat):
        out = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        if residual is not None:
            out = out + residual
        # In place, as stock models do it: `out` is this function's own fresh tensor.
        out = F.relu(out, inplace=True) if relu else out
        if concat is None:
            return out
        return torch.cat((out, concat), 1).contiguous(memory_format=memory_format_of(input))  # (as the kernel's)
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
