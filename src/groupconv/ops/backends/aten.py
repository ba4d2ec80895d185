"""torch's own kernels (oneDNN / cuDNN; its batch norm, add and ReLU) as a backend: the baseline every faster
backend must beat.

A fused shuffle is materialised here (an extra pass over the input, or for a depthwise conv over
the output), which is exactly the cost the fast backends exist to remove.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..arguments import memory_format_of
from ..dispatch import Backend

_FORWARD = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _convolution_backward(grad_output, input, weight, args, output_mask):
    zeros = [0] * args.spatial_dims  # output_padding: none for a forward convolution
    return torch.ops.aten.convolution_backward(grad_output, input, weight, None, list(args.stride), list(args.padding),
                                               list(args.dilation), False, zeros, args.groups, output_mask)


# torch's own shuffle keeps a channels_last tensor channels_last; the reference's reshape-transpose would turn it into
# NCHW and send every conv after it down oneDNN's NCHW path (three times slower on ShuffleNet's depthwise layers).
def shuffled(x: torch.Tensor, shuffle_groups: int) -> torch.Tensor:
    return torch.channel_shuffle(x, shuffle_groups) if shuffle_groups > 1 else x


def unshuffled(x: torch.Tensor, shuffle_groups: int) -> torch.Tensor:
    return torch.channel_shuffle(x, x.shape[1] // shuffle_groups) if shuffle_groups > 1 else x


# A depthwise conv commutes with the shuffle: reading channel perm(k) with filter k is reading channel j with filter
# perm^-1(j) and then moving output j to position perm^-1(j), i.e.
#     conv(shuffle(x), w) = shuffle(conv(x, unshuffle(w)))   (w and the bias permuted along their channels).
# So the shuffle can be paid on the output instead: a quarter of the pass at stride 2, and the backward needs no
# shuffled copy of x at all (torch's graph and the plain formulation above shuffle x again for the weight gradient):
# one unshuffle of grad_output serves both gradients. At stride 1 the forward shuffles the input as torch's layer does:
# a pass of the same size, and no permuted copy of the weight (nor its gradient's copy back, where autograd runs the
# forward's graph: the settled path in custom_ops/eager.py).
def _shuffles_output(weight: torch.Tensor, args) -> bool:
    return args.shuffle_groups > 1 and weight.shape[1] == 1 and args.groups == weight.shape[0]


def along_channels(tensor: torch.Tensor, shuffle: bool, groups: int) -> torch.Tensor:
    """A weight or bias permuted along its first dimension as channel_shuffle permutes channels (or the inverse)."""
    channels = tensor.shape[0]
    groups = groups if shuffle else channels // groups
    return tensor.view(groups, channels // groups, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)


def bound_conv(args) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None:
    """torch's conv function bound to `args` (a call's whole forward on torch's kernels), for a call without a fused
    shuffle; None for one with (AtenBackend.conv_forward materialises the shuffle)."""
    if args.shuffle_groups > 1:
        return None
    conv, stride, padding, dilation, groups = (_FORWARD[args.spatial_dims], args.stride, args.padding,
                                               args.dilation, args.groups)
    return lambda input, weight, bias: conv(input, weight, bias, stride, padding, dilation, groups)


class AtenBackend(Backend):
    name = "aten"
    description = "torch's built-in convolution (oneDNN on CPU, cuDNN on GPU); materialises a fused shuffle"
    baseline = True

    def conv_forward(self, input, weight, bias, args):
        conv = _FORWARD[args.spatial_dims]
        if _shuffles_output(weight, args) and any(s > 1 for s in args.stride):
            s = args.shuffle_groups
            out = conv(input, along_channels(weight, False, s),
                       None if bias is None else along_channels(bias, False, s),
                       args.stride, args.padding, args.dilation, args.groups)
            return shuffled(out, s)
        x = shuffled(input, args.shuffle_groups)
        return conv(x, weight, bias, args.stride, args.padding, args.dilation, args.groups)

    # Each gradient alone needs the other operand only for its shape and memory format. The input's stand-in is the
    # input itself where the caller has it in the gradient's layout, else an empty tensor in that layout (one of
    # the input's size: more memory than torch's own backward holds). torch.nn.grad's expanded placeholders have no
    # layout, which sends oneDNN down its NCHW path with a conversion of every channels_last operand (3x slower).
    def conv_backward_input(self, grad_output, weight, input_shape, args, input=None):
        layout = memory_format_of(grad_output)
        placeholder = input if input is not None and input.is_contiguous(memory_format=layout) else torch.empty(
            input_shape, dtype=grad_output.dtype, device=grad_output.device, memory_format=layout)
        if _shuffles_output(weight, args):
            s = args.shuffle_groups
            return _convolution_backward(unshuffled(grad_output, s), placeholder, along_channels(weight, False, s),
                                         args, [True, False, False])[0]
        grad = _convolution_backward(grad_output, placeholder, weight, args, [True, False, False])[0]
        return unshuffled(grad, args.shuffle_groups)

    def conv_backward_weight(self, grad_output, input, weight_shape, args):
        placeholder = input.new_empty(weight_shape)
        if _shuffles_output(placeholder, args):
            s = args.shuffle_groups
            grad = _convolution_backward(unshuffled(grad_output, s), input, placeholder, args, [False, True, False])[1]
            return along_channels(grad, True, s)
        x = shuffled(input, args.shuffle_groups)
        return _convolution_backward(grad_output, x, placeholder, args, [False, True, False])[1]

    def conv_backward(self, grad_output, input, weight, args):
        if _shuffles_output(weight, args):
            s = args.shuffle_groups
            grad_input, grad_weight, _ = _convolution_backward(
                unshuffled(grad_output, s), input, along_channels(weight, False, s), args, [True, True, False])
            return grad_input, along_channels(grad_weight, True, s)
        x = shuffled(input, args.shuffle_groups)
        grad_input, grad_weight, _ = _convolution_backward(grad_output, x, weight, args, [True, True, False])
        return unshuffled(grad_input, args.shuffle_groups), grad_weight

    def channel_shuffle(self, x, groups):
        return torch.channel_shuffle(x, groups)

    def batch_norm(self, input, running_mean, running_var, weight, bias, training, momentum, eps, residual, relu,
                   concat):
        out = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        if residual is not None:
            out = out + residual
        # In place, as stock models do it: `out` is this function's own fresh tensor.
        out = F.relu(out, inplace=True) if relu else out
        if concat is None:
            return out
        return torch.cat((out, concat), 1).contiguous(memory_format=memory_format_of(input))  # (as the kernel's)
