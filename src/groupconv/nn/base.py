"""What every groupconv layer shares: cost reporting, and the conv forward routed through groupconv.ops."""

from __future__ import annotations

import contextvars
from typing import Optional, Sequence

import torch

from ..ops.cost import conv_multiply_adds, count_parameters
from ..ops import functional
from ..ops.arguments import (check_divisible, check_groups, check_kernel_fits, expand_tuple, output_size,
                             resolve_padding)

_FUNCTIONAL = {1: functional.conv1d, 2: functional.conv2d, 3: functional.conv3d}


class CostReporting:
    """Parameter count and multiply-adds (per sample) of a layer, for a given input spatial size."""

    def parameter_count(self) -> int:
        return count_parameters(self)

    def output_size(self, input_size: int | Sequence[int]) -> tuple[int, ...]:
        raise NotImplementedError

    def multiply_adds(self, input_size: int | Sequence[int]) -> int:
        raise NotImplementedError


class SequentialCost(CostReporting):
    """Cost of a chain of layers: sizes flow through the children, multiply-adds add up."""

    def output_size(self, input_size):
        for child in self.children():
            input_size = child.output_size(input_size)
        return tuple(input_size)

    def multiply_adds(self, input_size):
        total = 0
        for child in self.children():
            total += child.multiply_adds(input_size)
            input_size = child.output_size(input_size)
        return total


def check_conv_module_arguments(in_channels: int, out_channels: int, groups: int) -> None:
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}={value!r} must be an int")
        if value <= 0:
            raise ValueError(f"{name}={value} must be a positive integer")
    check_groups(groups)
    check_divisible(in_channels, "in_channels", groups)
    check_divisible(out_channels, "out_channels", groups)


class _ShortcutRequest:
    """with_shortcut's question to the conv layer it calls: the input whose shortcut it wants, and the answer."""

    def __init__(self, input: torch.Tensor):
        self.input = input
        self.shortcut: torch.Tensor | None = None


_shortcut_request: contextvars.ContextVar[_ShortcutRequest | None] = contextvars.ContextVar(
    "groupconv_shortcut_request", default=None)


def with_shortcut(conv: torch.nn.Module, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(conv(input), input): a residual block's first conv and its shortcut, for `y, shortcut = with_shortcut(
    self.conv1, x)` ... `bn3(z, residual=shortcut)`.

    With a groupconv conv layer the two come from one autograd node (ops.conv_with_shortcut), which adds the
    shortcut's gradient into the conv's input gradient as its kernel writes it, instead of autograd summing the two in
    a pass of its own (2.3 ms for each 32x384x28x28 input of ShuffleNet g=8's stage 2). The layer is called as a
    module (its hooks run, it returns its output alone); any other module: conv(input) and input itself.
    """
    if torch.compiler.is_compiling():  # (traced graphs see the plain ops; ContextVar is not traceable)
        return conv(input), input
    request = _ShortcutRequest(input)
    token = _shortcut_request.set(request)
    try:
        output = conv(input)
    finally:
        _shortcut_request.reset(token)
    return output, input if request.shortcut is None else request.shortcut


class GroupedConvMixin(CostReporting):
    """Routes torch.nn.ConvNd's forward through groupconv's ops, keeping everything else of torch's module.

    Mixed in before torch.nn.Conv1d/2d/3d, so the constructor, parameters, state_dict keys,
    initialisation and padding_mode handling are torch's own: the layer is a drop-in, and
    isinstance(layer, torch.nn.Conv2d) stays true for code that looks for convolutions.
    `shuffle_groups` > 1 makes the layer read its input through a channel shuffle.
    """

    shuffle_groups: int = 1
    # Settings torch.jit.script compiles in as constants: torch's conv settings (the same for every dimension).
    __constants__ = [*torch.nn.Conv2d.__constants__, "shuffle_groups"]

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None):
        check_conv_module_arguments(in_channels, out_channels, groups)
        full_padding = isinstance(padding, str) and padding == "full"
        super().__init__(in_channels, out_channels, kernel_size, stride, 0 if full_padding else padding, dilation,
                         groups, bias, padding_mode, device=device, dtype=dtype)
        if full_padding:
            # torch.nn.ConvNd knows only 'same' and 'valid'; 'full' pads every partial overlap.
            self.padding = "full"
            spans = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            self._reversed_padding_repeated_twice = [p for span in reversed(spans) for p in (span, span)]

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._torch_conv_forward(input, weight, bias)
        return self._groupconv_conv_forward(input, weight, bias)

    @torch.jit.unused
    def _groupconv_conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                                bias: Optional[torch.Tensor]) -> torch.Tensor:
        conv = _FUNCTIONAL[len(self.kernel_size)]
        request = None if torch.compiler.is_compiling() else _shortcut_request.get()
        if request is not None and request.input is input and self.padding_mode == "zeros":
            _shortcut_request.set(None)  # (answered: a conv nested inside this one is not asked)
            out, request.shortcut = functional.conv_with_shortcut(input, weight, bias, self.stride, self.padding,
                                                                  self.dilation, self.groups,
                                                                  shuffle_groups=self.shuffle_groups)
            return out
        if self.padding_mode != "zeros":
            padded = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv(padded, weight, bias, self.stride, 0, self.dilation, self.groups,
                        shuffle_groups=self.shuffle_groups)
        return conv(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                    shuffle_groups=self.shuffle_groups)

    def _torch_conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                            bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The same conv in torch's ops, which torch.jit.script compiles: groupconv's dispatcher is Python, and a
        scripted model is meant to run without it (in C++, or another process)."""
        if self.shuffle_groups > 1:
            input = torch.channel_shuffle(input, self.shuffle_groups)
        zeros = [0] * len(self.kernel_size)
        padding = self.padding
        full_padding = False
        if isinstance(padding, str):  # (nested: TorchScript compiles this test away on a tuple of sizes)
            full_padding = padding == "full"
        if self.padding_mode != "zeros" or full_padding:
            # Explicit padding first ('full' is zero padding torch's convs do not take by name).
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            input = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=mode)
            return torch.convolution(input, weight, bias, self.stride, zeros, self.dilation, False, zeros,
                                     self.groups)
        if len(self.kernel_size) == 1:
            return torch.nn.functional.conv1d(input, weight, bias, self.stride, self.padding, self.dilation,
                                              self.groups)
        if len(self.kernel_size) == 2:
            return torch.nn.functional.conv2d(input, weight, bias, self.stride, self.padding, self.dilation,
                                              self.groups)
        return torch.nn.functional.conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def output_size(self, input_size):
        ndim = len(self.kernel_size)
        input_size = expand_tuple(input_size, ndim, "input_size")
        if any(size < 0 for size in input_size):
            raise ValueError(f"input_size={input_size} must be non-negative in every dimension")
        before, after = resolve_padding(self.padding, self.kernel_size, self.stride, self.dilation)
        # The rule the conv applies to a call: a kernel larger than the padded input has no output at all.
        check_kernel_fits(input_size, self.kernel_size, before, after, self.dilation)
        return output_size(input_size, self.kernel_size, self.stride, before, after, self.dilation)

    def multiply_adds(self, input_size):
        return conv_multiply_adds(self.in_channels, self.out_channels, self.kernel_size, self.groups,
                                  self.output_size(input_size))

    def extra_repr(self):
        text = super().extra_repr()
        if self.groups == 1:  # torch hides groups=1; we always show it
            text += ", groups=1"
        if self.shuffle_groups > 1:
            text += f", shuffle_groups={self.shuffle_groups}"
        return text
