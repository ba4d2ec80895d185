"""Parameter and multiply-add counts: the single place where the cost formulas live, and their registration
with torch.utils.flop_counter, so that FlopCounterMode counts models built from groupconv's ops.

Units: one multiply-add (MAC) = one multiply followed by one add; FLOPs = 2 x MACs. Bias
additions are not counted, as in the papers' complexity figures (ShuffleNet, Zhang et al. 2018:
H*W*N*K^2*M/G for a grouped conv).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.utils.flop_counter import register_flop_formula

from . import custom_ops  # noqa: F401  (registers the ops with torch: torch.ops.groupconv below)


def conv_multiply_adds(
    in_channels: int, out_channels: int, kernel_size: Sequence[int], groups: int, output_size: Sequence[int]
) -> int:
    """MACs of one sample through a grouped conv: each output element sums (C/G) * prod(K) products."""
    return math.prod(output_size) * out_channels * (in_channels // groups) * math.prod(kernel_size)


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of a module (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@register_flop_formula(torch.ops.groupconv.conv_forward)
def _conv_forward_flops(input_shape, weight_shape, bias_shape, stride, padding, dilation, groups, shuffle_groups,
                        out_shape=None, **kwargs) -> int:
    # weight_shape[1] is already C/G, so the dense formula over the weight counts the grouped cost.
    return 2 * out_shape[0] * conv_multiply_adds(weight_shape[1], weight_shape[0], weight_shape[2:], 1, out_shape[2:])


@register_flop_formula(torch.ops.groupconv.conv_backward_input)
def _conv_backward_input_flops(grad_output_shape, weight_shape, input_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * grad_output_shape[0] * conv_multiply_adds(weight_shape[1], weight_shape[0], weight_shape[2:], 1,
                                                         grad_output_shape[2:])


@register_flop_formula(torch.ops.groupconv.conv_backward_weight)
def _conv_backward_weight_flops(grad_output_shape, input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * grad_output_shape[0] * conv_multiply_adds(weight_shape[1], weight_shape[0], weight_shape[2:], 1,
                                                         grad_output_shape[2:])
