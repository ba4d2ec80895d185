"""A compact ShuffleNet for training studies: the ShuffleNet unit (Zhang et al. 2018) in a short stack.

Three stages of 1, 2, 1 units with the stage channels given directly, so that every group count
G = 1..8 can share one width (and a wider net can match a narrower one's multiply-adds); small
enough that it trains on the embedded digits in seconds. `groupconv experiment` compares its
variants (groups, equal multiply-adds, with and without the channel shuffle).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import nn as gnn
from .common import check_classifier_arguments, zero_init_last_blocks
from .registry import register_model
from .shufflenet import ShuffleUnit

STEM_CHANNELS = 24
UNITS = (1, 2, 1)
EQUAL_WIDTH_CHANNELS = (96, 192, 384)  # divisible as every G in 1..8 needs: bottleneck C/4 by 3 and 8


class CompactShuffleNet(nn.Module):
    """Stem (3x3 conv, stride 1), three stages of ShuffleNet units (the first of each downsamples), pool, FC."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, groups: int = 3,
                 channels: tuple[int, ...] = EQUAL_WIDTH_CHANNELS, units: tuple[int, ...] = UNITS,
                 shuffle: bool = True):
        super().__init__()
        check_classifier_arguments(num_classes, in_chans)
        if len(channels) != len(units) or channels[0] <= STEM_CHANNELS:
            raise ValueError(f"channels={list(channels)} needs one entry per stage of units={list(units)}, the first "
                             f"above the stem's {STEM_CHANNELS}")
        self.stem = nn.Sequential(gnn.Conv2d(in_chans, STEM_CHANNELS, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(STEM_CHANNELS), nn.ReLU(inplace=True))
        stages, in_channels = [], STEM_CHANNELS
        for stage_index, (out_channels, count) in enumerate(zip(channels, units)):
            for unit_index in range(count):
                first = unit_index == 0
                stages.append(ShuffleUnit(in_channels, out_channels, groups, downsample=first,
                                          ignore_group=first and stage_index == 0, shuffle=shuffle))
                in_channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.output = nn.Linear(in_channels, num_classes)

    def zero_init_last(self) -> None:
        """Every residual unit starts as the identity (see ShuffleUnit.zero_init_last)."""
        zero_init_last_blocks(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.stages(self.stem(x)).mean(dim=(2, 3)))


@register_model(input_size=(3, 32, 32), tags=("study",))
def shufflenet_compact(groups: int = 3, channels=EQUAL_WIDTH_CHANNELS, units=UNITS, shuffle: bool = True,
                       **kwargs) -> CompactShuffleNet:
    """A short ShuffleNet with the stage channels given directly (see CompactShuffleNet)."""
    return CompactShuffleNet(groups=groups, channels=tuple(channels), units=tuple(units), shuffle=shuffle, **kwargs)
