"""Parameter and multiply-add counts: the single place where the cost formulas live.

Units: one multiply-add (MAC) = one multiply followed by one add; FLOPs = 2 x MACs. Bias
additions are not counted, as in the papers' complexity figures (seed 000: H*W*N*K^2*M/G).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def conv_multiply_adds(
    in_channels: int, out_channels: int, kernel_size: Sequence[int], groups: int, output_size: Sequence[int]
) -> int:
    """MACs of one sample through a grouped conv: each output element sums (C/G) * prod(K) products."""
    return math.prod(output_size) * out_channels * (in_channels // groups) * math.prod(kernel_size)


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of a module (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _conv_forward_flops(input_shape, weight_shape, bias_shape, stride, padding, dilation, groups, shuffle_groups,
                        out_shape=None, **kwargs) -> int:
    # weight_shape[1] is already C/G, so the dense formula over the weight counts the grouped cost.
    return 2 * out_shape[0] * conv_multiply_adds(weight_shape[1], weight_shape[0], weight_shape[2:], 1, out_shape[2:])


def _conv_backward_input_flops(grad_output_shape, weight_shape, input_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * grad_output_shape[0] * conv_multiply_adds(weight_shape[1], weight_shape[0], weight_shape[2:], 1,
                                                         grad_output_shape[2:])


def _conv_backward_weight_flops(grad_output_shape, input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * grad_output_shape[0] * conv_multiply_adds(weight_shape[1], weight_shape[0], weight_shape[2:], 1,
                                                         grad_output_shape[2:])


def _register_flop_formulas() -> None:
    """Teach torch.utils.flop_counter our ops, so FlopCounterMode counts models built from groupconv."""
    from torch.utils.flop_counter import register_flop_formula

    ops = torch.ops.groupconv
    register_flop_formula(ops.conv_forward)(_conv_forward_flops)
    register_flop_formula(ops.conv_backward_input)(_conv_backward_input_flops)
    register_flop_formula(ops.conv_backward_weight)(_conv_backward_weight_flops)


def count_multiply_adds(model: torch.nn.Module, input: torch.Tensor) -> int:
    """Multiply-adds of one forward pass of `model` on `input`, all samples together.

    Counts what torch.utils.flop_counter counts (convolutions, groupconv's ops included, and
    matrix multiplies, so linear layers); normalisation, pooling and activations are free, as in
    the papers' complexity figures. Works on the meta device: build the model under
    `with torch.device("meta"):` and pass a meta input to count a large model without computing.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input)
    return counter.get_total_flops() // 2
