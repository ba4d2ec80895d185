"""A contiguous (NCHW) 2-D conv computed in channels_last, by the faster channels_last kernels.

A strategy: a tuning contender that combines the registered backends (dispatch.register_strategy).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..arguments import output_size
from ..custom_ops.conv import (conv_backward_input_implementation, conv_backward_weight_implementation,
                               conv_forward_implementation, unpacked)
from ..dispatch import CONV_OPS, Backend, ConvProblem
from .native import backend as native_backend
from .native import build as native_build
from .native.backend import to_memory_format


class ViaChannelsLast(Backend):
    """A contiguous (NCHW) 2-D conv computed in channels_last: the operands converted (the native kernels' tiled
    transpose), the channels_last problem dispatched and tuned on its own, the result converted back. It pays where
    the channels_last kernels beat every NCHW one by more than the conversions cost: ResNeXt-29's 128->128 g32 3x3
    at 32x32 runs forward+backward in ~31 ms on torch's NCHW kernels, ~8 ms on the channels_last ones, and the four
    conversions cost ~5 ms. A tuning contender of every conv op (a registered strategy), never forced."""

    name = "via_channels_last"
    description = "converted to channels_last, run on the best channels_last backend, converted back"

    SUPPORTED_OPS = CONV_OPS
    SUPPORTED_DEVICES = ("cpu",)  # (the native conversion kernel)
    SUPPORTED_DTYPES = native_backend.FLOAT_DTYPES
    SUPPORTED_LAYOUTS = ("contiguous",)

    def problem_reasons(self, problem: ConvProblem) -> list[str]:
        """Whether the converted operands would be channels_last (more than one channel and pixel, in and out), so
        that the problem they make differs from this one."""
        (_, channels, *size), weight_shape = problem.input_shape, problem.weight_shape
        args = problem.arguments
        if args.spatial_dims != 2:
            return [f"{args.spatial_dims}-D convolution (2-D only)"]
        out_size = output_size(size, weight_shape[2:], args.stride, args.padding, args.padding, args.dilation)
        if not (channels > 1 and weight_shape[0] > 1 and math.prod(size) > 1 and math.prod(out_size) > 1):
            return ["one channel or one pixel, in or out: channels_last would be the same layout"]
        return []

    def unavailable_reason(self) -> str | None:
        return native_build.unavailable_reason()

    @classmethod
    def applies(cls, problem: ConvProblem) -> bool:
        return not VIA_CHANNELS_LAST.not_supported_reasons(problem)

    def conv_forward(self, input, weight, bias, args):
        out = conv_forward_implementation(_channels_last(input), weight, bias, *unpacked(args))
        return _contiguous(out)

    def conv_backward_input(self, grad_output, weight, input_shape, args, input=None):
        grad_input = conv_backward_input_implementation(_channels_last(grad_output), weight, list(input_shape),
                                                        *unpacked(args))
        return _contiguous(grad_input)

    def conv_backward_weight(self, grad_output, input, weight_shape, args):
        return conv_backward_weight_implementation(_channels_last(grad_output), _channels_last(input),
                                                   list(weight_shape), *unpacked(args))

    # One gradient after the other, each converted operand dropped as soon as its last use is done: at no time more
    # than two converted tensors the input's size, what oneDNN's NCHW path holds too (with both gradients at once,
    # a ResNeXt 3x3 conv's step held a third more than torch's, and the tuner, which weighs memory, left this out).
    def conv_backward(self, grad_output, input, weight, args):
        grad = _channels_last(grad_output)
        grad_weight = conv_backward_weight_implementation(grad, _channels_last(input), list(weight.shape),
                                                          *unpacked(args))
        grad_input = conv_backward_input_implementation(grad, weight, list(input.shape), *unpacked(args))
        del grad
        return _contiguous(grad_input), grad_weight


def _channels_last(x: Tensor) -> Tensor:
    return to_memory_format(x, torch.channels_last)


def _contiguous(x: Tensor) -> Tensor:
    return to_memory_format(x, torch.contiguous_format)


VIA_CHANNELS_LAST = ViaChannelsLast()
