"""torch's own kernels (oneDNN / cuDNN) as a backend: the baseline every faster backend must beat.

A fused shuffle is materialised here (an extra pass over the input), which is exactly the cost
the fast backends exist to remove.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import Backend
from .reference import channel_shuffle, channel_unshuffle

_FORWARD = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_BACKWARD_INPUT = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}
_BACKWARD_WEIGHT = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight, 3: torch.nn.grad.conv3d_weight}


def _shuffled(x: torch.Tensor, shuffle_groups: int) -> torch.Tensor:
    return channel_shuffle(x, shuffle_groups) if shuffle_groups > 1 else x


class AtenBackend(Backend):
    name = "aten"
    description = "torch's built-in convolution (oneDNN on CPU, cuDNN on GPU); materialises a fused shuffle"

    def conv_forward(self, input, weight, bias, args):
        x = _shuffled(input, args.shuffle_groups)
        return _FORWARD[args.spatial_dims](x, weight, bias, args.stride, args.padding, args.dilation, args.groups)

    def conv_backward_input(self, grad_output, weight, input_shape, args):
        grad = _BACKWARD_INPUT[args.spatial_dims](
            list(input_shape), weight, grad_output, args.stride, args.padding, args.dilation, args.groups
        )
        return channel_unshuffle(grad, args.shuffle_groups) if args.shuffle_groups > 1 else grad

    def conv_backward_weight(self, grad_output, input, weight_shape, args):
        x = _shuffled(input, args.shuffle_groups)
        return _BACKWARD_WEIGHT[args.spatial_dims](
            x, list(weight_shape), grad_output, args.stride, args.padding, args.dilation, args.groups
        )

    def channel_shuffle(self, x, groups):
        return torch.channel_shuffle(x, groups)
