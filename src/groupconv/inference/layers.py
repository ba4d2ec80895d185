"""The layers an optimised model runs: a conv whose backend was chosen once per input signature, and what is left of
a folded BatchNormAct2d."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..nn.base import GroupedConvMixin
from ..ops.arguments import check_conv_call_once, memory_format_of
from ..ops.dispatch import ConvProblem, select_backend


class ConvEpilogue(torch.nn.Module):
    """relu(x + residual), then torch.cat((that, concat), 1): a BatchNormAct2d's work after its normalisation, once
    the normalisation is folded into the conv before it. In place on `x`, the conv's own output, which nothing else
    reads (folding checks that)."""

    def __init__(self, relu: bool):
        super().__init__()
        self.relu = relu

    def forward(self, x: Tensor, residual: Optional[Tensor] = None, concat: Optional[Tensor] = None) -> Tensor:
        if residual is not None:
            x = x.add_(residual)
        if self.relu:
            x = x.relu_()
        if concat is not None:
            x = torch.cat((x, concat), 1)
        return x

    def extra_repr(self) -> str:
        return f"relu={self.relu}"


class PlannedConv(torch.nn.Module):
    """A groupconv conv layer that asks the dispatcher once per input signature (shape, dtype, device, strides,
    threads) and then calls the chosen backend's kernel directly.

    A plain call pays for groupconv's argument checks, the eager path's tests (tracing, functorch, dispatch modes)
    and the dispatcher's lookups on every call; the kernel is the same. A call the direct path does not cover (an
    unbatched input, 'same' padding with an odd total, a padding mode other than zeros, autocast) runs the layer
    as it was. The choice is made when a signature is first seen: a backend forced later (ops.use_backend) does not
    change it."""

    def __init__(self, conv: GroupedConvMixin):
        super().__init__()
        self.conv = conv
        self._plans: dict[tuple, tuple] = {}

    def forward(self, input: Tensor) -> Tensor:
        key = (input.shape, input.stride(), input.dtype, input.device, torch.get_num_threads())
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(input)
        backend, arguments, memory_format = plan
        if backend is None:
            return self.conv(input)
        return backend.conv_forward(input, self.conv.weight, self.conv.bias, arguments).contiguous(
            memory_format=memory_format)

    def _plan(self, input: Tensor) -> tuple:
        conv, spatial_dims = self.conv, len(self.conv.kernel_size)
        if (conv.padding_mode != "zeros" or input.dim() != spatial_dims + 2 or input.numel() == 0
                or torch.is_autocast_enabled(input.device.type)):
            return None, None, None
        arguments, extra_after = check_conv_call_once(input, conv.weight, conv.bias, conv.stride, conv.padding,
                                                      conv.dilation, conv.groups, conv.shuffle_groups, spatial_dims)
        if any(extra_after):
            return None, None, None
        problem = ConvProblem.build("conv_forward", input.shape, conv.weight.shape, arguments, input,
                                    has_bias=conv.bias is not None)
        backend = select_backend(problem, lambda b: b.conv_forward(input, conv.weight, conv.bias, arguments))
        return backend, arguments, memory_format_of(input)

    def extra_repr(self) -> str:
        chosen = sorted({plan[0].name for plan in self._plans.values() if plan[0] is not None})
        return f"backends chosen: {', '.join(chosen) or 'none yet'}"
