"""Pointwise (1x1) grouped convolution as one batched matrix multiply per op (NCHW; channels_last: the weight gradient).

A 1x1 conv with G groups on a contiguous (N, C, *spatial) input is, for every sample and group,
the product of the group's (M/G, C/G) weight with its (C/G, S) slice of the input, S the number
of pixels. Viewed as (N, G, C/G, S), the input needs no copy, and one torch.matmul runs all N x G
products on the BLAS (MKL/oneDNN sgemm on CPU). torch's own grouped conv runs these shapes
several times slower in NCHW (the ShuffleNet and ResNeXt 1x1 layers).

The weight gradient accumulates sample by sample into one (G, M/G, C/G) buffer (baddbmm), so the
backward pass allocates nothing beyond its outputs.
"""

from __future__ import annotations

import math

import torch

from ..arguments import memory_format_of
from ..dispatch import CONV_OPS, Backend, Problem

# Half types would accumulate the weight gradient in their own precision across samples: left to aten.
SUPPORTED_DTYPES = (torch.float32, torch.float64)


class GemmBackend(Backend):
    name = "gemm"
    description = "1x1 grouped convs on contiguous inputs as batched matrix multiplies (BLAS)"

    SUPPORTED_OPS = CONV_OPS  # (channel shuffle is left to the other backends)
    SUPPORTED_DEVICES = ("cpu",)
    SUPPORTED_DTYPES = SUPPORTED_DTYPES

    def problem_reasons(self, problem: Problem) -> list[str]:
        reasons = []
        args = problem.arguments
        if any(k != 1 for k in problem.weight_shape[2:]):
            reasons.append(f"kernel {problem.weight_shape[2:]} is not 1x1")
        if any(s != 1 for s in args.stride) or any(p != 0 for p in args.padding):
            reasons.append(f"stride {args.stride} / padding {args.padding} are not 1 / 0")
        if args.shuffle_groups != 1:
            reasons.append(f"fused shuffle (shuffle_groups={args.shuffle_groups}) is not supported")
        channels_last_weight_gradient = (problem.op == "conv_backward_weight" and problem.layout == "channels_last"
                                         and len(problem.weight_shape) == 4)
        if problem.layout != "contiguous" and not channels_last_weight_gradient:
            reasons.append(f"layout {problem.layout} is not contiguous (NCHW; channels_last for the weight gradient "
                           f"of a 2-D conv only)")
        return reasons

    def conv_forward(self, input, weight, bias, args):
        n, c, *spatial = input.shape
        m, g = weight.shape[0], args.groups
        x = input.contiguous().view(n, g, c // g, math.prod(spatial))
        out = torch.matmul(weight.reshape(g, m // g, c // g), x)  # (N, G, M/G, S)
        if bias is not None:
            out += bias.view(1, g, m // g, 1)
        return out.view(n, m, *spatial)

    def conv_backward_input(self, grad_output, weight, input_shape, args, input=None):
        n, m, *spatial = grad_output.shape
        c, g = input_shape[1], args.groups
        grad = grad_output.contiguous().view(n, g, m // g, math.prod(spatial))
        return torch.matmul(weight.reshape(g, m // g, c // g).transpose(1, 2), grad).view(input_shape)

    def conv_backward_weight(self, grad_output, input, weight_shape, args):
        if input.dim() == 4 and memory_format_of(input) == torch.channels_last:
            return _channels_last_weight_gradient(grad_output, input, weight_shape, args.groups)
        n, m, *spatial = grad_output.shape
        c, g = input.shape[1], args.groups
        pixels = math.prod(spatial)
        grad = grad_output.contiguous().view(n, g, m // g, pixels)
        x = input.contiguous().view(n, g, c // g, pixels)
        grad_weight = torch.zeros(g, m // g, c // g, dtype=grad.dtype, device=grad.device)
        for sample in range(n):
            grad_weight.baddbmm_(grad[sample], x[sample].transpose(1, 2))
        return grad_weight.view(weight_shape)


def _channels_last_weight_gradient(grad_output, input, weight_shape, groups):
    """In channels_last the pixels of every channel group are rows of one (pixels, C) matrix, so the weight gradient
    of group g is grad[:, g]^T @ x[:, g]: one batched multiply over the groups, reading both tensors in place (oneDNN
    reorders them first). Its forward and input gradient would need a strided output, which costs a copy: they are
    the native backend's (csrc/pointwise.cpp)."""
    n, c, h, w = input.shape
    m = grad_output.shape[1]
    pixels = n * h * w
    x = input.permute(0, 2, 3, 1).reshape(pixels, groups, c // groups)  # a view: channels_last is (N, H, W, C)
    grad = grad_output.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(
        pixels, groups, m // groups)
    return torch.bmm(grad.permute(1, 2, 0), x.permute(1, 0, 2)).view(weight_shape)
