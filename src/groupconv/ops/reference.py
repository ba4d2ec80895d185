"""The reference semantics of groupconv's ops: the specification every fast path is tested against.

Written to be read, not to be fast. A grouped convolution is G independent convolutions, each
mapping C/G input channels to M/G output channels. We keep the group as an explicit tensor axis
and sum over kernel taps: for each tap k, the strided window of the padded input that tap reads
is contracted with that tap's weights, group by group (einsum over 'g'). Backward is the same
loop read the other way round. Nothing here calls torch's convolution, so the oracle tests
(reference vs torch.nn.functional.convNd) compare two independent implementations.

Low-precision inputs (bfloat16, float16) are accumulated in float32 and rounded once at the end,
which is what a careful kernel does and what the per-dtype test tolerances assume.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch

from .arguments import ConvArguments, memory_format_of, output_size

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: view (N, g, C/g, ...), swap the two channel axes, flatten.

    Output channel j*g + i holds input channel i*(C/g) + j. The inverse is a shuffle with C/g groups.
    """
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def channel_unshuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Inverse of channel_shuffle(x, groups)."""
    return channel_shuffle(x, x.shape[1] // groups)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _pad(x: torch.Tensor, padding: Sequence[int]) -> torch.Tensor:
    """Zero-pad every spatial dimension of x by padding[d] on both sides."""
    spatial = x.shape[2:]
    padded = x.new_zeros((*x.shape[:2], *(s + 2 * p for s, p in zip(spatial, padding))))
    padded[(..., *(slice(p, p + s) for s, p in zip(spatial, padding)))] = x
    return padded


def _tap_window(kernel_tap: Sequence[int], args: ConvArguments, out_spatial: Sequence[int]) -> tuple:
    """Index of the padded-input elements that kernel tap `kernel_tap` reads for every output position."""
    return (
        ...,
        *(
            slice(t * d, t * d + s * (o - 1) + 1, s)
            for t, d, s, o in zip(kernel_tap, args.dilation, args.stride, out_spatial)
        ),
    )


def _kernel_taps(kernel_size: Sequence[int]):
    return itertools.product(*(range(k) for k in kernel_size))


def _output_spatial(input_spatial: Sequence[int], kernel_size: Sequence[int], args: ConvArguments):
    return output_size(input_spatial, kernel_size, args.stride, args.padding, args.padding, args.dilation)


def conv_forward(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, args: ConvArguments
) -> torch.Tensor:
    dtype = input.dtype
    compute = _compute_dtype(dtype)
    x = input.to(compute)
    if args.shuffle_groups > 1:
        x = channel_shuffle(x, args.shuffle_groups)
    x = _pad(x, args.padding)
    n, c = x.shape[:2]
    g = args.groups
    m, kernel_size = weight.shape[0], weight.shape[2:]
    out_spatial = _output_spatial(input.shape[2:], kernel_size, args)

    x_groups = x.reshape(n, g, c // g, *x.shape[2:])
    w_groups = weight.to(compute).reshape(g, m // g, c // g, *kernel_size)
    out = x.new_zeros((n, g, m // g, *out_spatial))
    for tap in _kernel_taps(kernel_size):
        window = x_groups[_tap_window(tap, args, out_spatial)]  # (n, g, c/g, *out_spatial)
        out += torch.einsum("ngc...,gmc->ngm...", window, w_groups[(..., *tap)])
    out = out.reshape(n, m, *out_spatial)
    if bias is not None:
        out += bias.to(compute).reshape(1, m, *([1] * len(out_spatial)))
    return out.to(dtype)


def conv_backward_input(
    grad_output: torch.Tensor, weight: torch.Tensor, input_shape: Sequence[int], args: ConvArguments
) -> torch.Tensor:
    dtype = grad_output.dtype
    compute = _compute_dtype(dtype)
    n, c, *input_spatial = input_shape
    g = args.groups
    m, kernel_size = weight.shape[0], weight.shape[2:]
    out_spatial = grad_output.shape[2:]

    grad_out_groups = grad_output.to(compute).reshape(n, g, m // g, *out_spatial)
    w_groups = weight.to(compute).reshape(g, m // g, c // g, *kernel_size)
    padded_spatial = [s + 2 * p for s, p in zip(input_spatial, args.padding)]
    grad_padded = grad_output.new_zeros((n, g, c // g, *padded_spatial), dtype=compute)
    for tap in _kernel_taps(kernel_size):
        grad_padded[_tap_window(tap, args, out_spatial)] += torch.einsum(
            "ngm...,gmc->ngc...", grad_out_groups, w_groups[(..., *tap)]
        )
    unpad = (..., *(slice(p, p + s) for s, p in zip(input_spatial, args.padding)))
    grad_input = grad_padded.reshape(n, c, *padded_spatial)[unpad]
    if args.shuffle_groups > 1:
        grad_input = channel_unshuffle(grad_input, args.shuffle_groups)
    return grad_input.to(dtype)


def conv_backward_weight(
    grad_output: torch.Tensor, input: torch.Tensor, weight_shape: Sequence[int], args: ConvArguments
) -> torch.Tensor:
    dtype = input.dtype
    compute = _compute_dtype(dtype)
    x = input.to(compute)
    if args.shuffle_groups > 1:
        x = channel_shuffle(x, args.shuffle_groups)
    x = _pad(x, args.padding)
    n, c = x.shape[:2]
    g = args.groups
    m, kernel_size = weight_shape[0], weight_shape[2:]
    out_spatial = grad_output.shape[2:]

    x_groups = x.reshape(n, g, c // g, *x.shape[2:])
    grad_out_groups = grad_output.to(compute).reshape(n, g, m // g, *out_spatial)
    grad_weight = x.new_zeros((g, m // g, c // g, *kernel_size))
    for tap in _kernel_taps(kernel_size):
        window = x_groups[_tap_window(tap, args, out_spatial)]
        grad_weight[(..., *tap)] = torch.einsum("ngc...,ngm...->gmc", window, grad_out_groups)
    return grad_weight.reshape(weight_shape).to(dtype)


def batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None, bias: torch.Tensor | None, training: bool, momentum: float, eps: float,
               residual: torch.Tensor | None = None, relu: bool = False,
               concat: torch.Tensor | None = None) -> torch.Tensor:
    """groupconv.ops.batch_norm written out: normalise each channel by the batch's statistics (training) or the
    running ones, scale and shift, add the residual, ReLU, concatenate. In training the running statistics take
    the batch's mean and unbiased variance with weight `momentum`, as torch's batch norm does."""
    dtype = input.dtype
    x = input.to(_compute_dtype(dtype))
    channels = x.shape[1]
    per_channel = (1, channels, *([1] * (x.dim() - 2)))
    dims = [0, *range(2, x.dim())]
    if training:
        mean = x.mean(dims)
        var = (x - mean.view(per_channel)).square().mean(dims)
        if running_mean is not None and running_var is not None:
            count = x.numel() // channels
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.detach().to(running_mean.dtype), alpha=momentum)
                unbiased = var.detach().to(running_var.dtype) * (count / (count - 1))
                running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
    else:
        mean, var = running_mean.to(x.dtype), running_var.to(x.dtype)
    out = (x - mean.view(per_channel)) / torch.sqrt(var.view(per_channel) + eps)
    if weight is not None:
        out = out * weight.to(x.dtype).view(per_channel)
    if bias is not None:
        out = out + bias.to(x.dtype).view(per_channel)
    if residual is not None:
        out = out + residual.to(x.dtype)
    if relu:
        out = out.clamp_min(0)
    out = out.to(dtype).contiguous(memory_format=memory_format_of(input))
    if concat is None:
        return out
    return torch.cat((out, concat), 1).contiguous(memory_format=memory_format_of(input))
