"""Multiply-adds of a whole model, counted by torch.utils.flop_counter; the per-layer formulas and parameter counts
come from groupconv.ops.cost (re-exported here).

Units: one multiply-add (MAC) = one multiply followed by one add; FLOPs = 2 x MACs.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

# The formulas live with the ops (their flop-counter registration needs them there); this module re-exports them.
from ..ops.cost import conv_multiply_adds, count_parameters

__all__ = ["conv_multiply_adds", "count_multiply_adds", "count_parameters"]


def count_multiply_adds(model: torch.nn.Module, input: torch.Tensor) -> int:
    """Multiply-adds of one forward pass of `model` on `input`, all samples together.

    Counts what torch.utils.flop_counter counts (convolutions, groupconv's ops included, and
    matrix multiplies, so linear layers); normalisation, pooling and activations are free, as in
    the papers' complexity figures. Works on the meta device: build the model under
    `with torch.device("meta"):` and pass a meta input to count a large model without computing.
    """
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input)
    return counter.get_total_flops() // 2
