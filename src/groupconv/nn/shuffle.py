"""ShuffleNet's channel shuffle, alone and fused into the grouped conv that reads it."""

from __future__ import annotations

import torch

from ..ops import functional
from ..ops.arguments import check_divisible, check_groups, expand_tuple
from .base import CostReporting
from .conv import Conv2d


class ChannelShuffle(CostReporting, torch.nn.ChannelShuffle):
    """torch.nn.ChannelShuffle computed by groupconv's ops (inputs of rank 3 to 5), which also export to ONNX.

    A subclass adding no state, so `accelerate()` swaps torch's layer for it; torch.jit.script compiles torch's op.
    """

    def __init__(self, groups: int):
        check_groups(groups)
        super().__init__(groups)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # (a scripted model runs torch's op: it is meant to run without Python)
            return torch.channel_shuffle(input, self.groups)
        return self._groupconv_forward(input)

    @torch.jit.unused
    def _groupconv_forward(self, input: torch.Tensor) -> torch.Tensor:
        return functional.channel_shuffle(input, self.groups)

    def output_size(self, input_size):
        return tuple(expand_tuple(input_size, len(input_size) if not isinstance(input_size, int) else 1,
                                  "input_size"))

    def multiply_adds(self, input_size):
        return 0

    def extra_repr(self):
        return f"groups={self.groups}"


class ShuffledGroupedConv2d(Conv2d):
    """Channel shuffle with `shuffle_groups` groups, then a grouped Conv2d, as one fused layer.

    Computes conv2d(channel_shuffle(x, shuffle_groups), ...) without materialising the shuffled
    tensor where the backend can read through the permutation. `shuffle_groups` defaults to
    `groups`, as in ShuffleNet. Parameters and state_dict are those of the Conv2d alone.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, shuffle_groups: int | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        shuffle_groups = groups if shuffle_groups is None else shuffle_groups
        check_groups(shuffle_groups, "shuffle_groups")
        check_divisible(in_channels, "in_channels", shuffle_groups, "shuffle_groups")
        self.shuffle_groups = shuffle_groups
