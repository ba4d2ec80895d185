"""1-D models for MNIST-1D (Greydanus 2020): the published CNN baseline and a shuffled grouped CNN with fewer
parameters. Both take (channels, length) signals, so they carry the registry's "1d" tag.

    groupconv train --model grouped_cnn1d_mnist1d --dataset mnist1d
"""

from __future__ import annotations

import torch
from torch import nn

from .. import nn as gnn
from .common import check_classifier_arguments
from .registry import register_model

MNIST1D_INPUT = (1, 40)


class BaselineCNN1d(nn.Module):
    """Greydanus 2020's CNN: Conv1d(1->25,k5,s2,p1), Conv1d(25->25,k3,s2,p1) x2, Linear(125->10); 5,210 parameters."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, channels: int = 25, length: int = 40):
        super().__init__()
        check_classifier_arguments(num_classes, in_chans)
        self.features = nn.Sequential(
            gnn.Conv1d(in_chans, channels, 5, stride=2, padding=1), nn.ReLU(),
            gnn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            gnn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_chans, length)).numel()
        self.output = nn.Linear(flat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.flatten(self.features(x), 1))


class ShuffledGroupedBlock1d(nn.Module):
    """Grouped 3-tap conv -> BN -> ReLU, reading its input channel-shuffled so that groups mix (ShuffleNet)."""

    def __init__(self, channels: int, groups: int, stride: int, shuffle: bool):
        super().__init__()
        self.shuffle = gnn.ChannelShuffle(groups) if shuffle and groups > 1 else nn.Identity()
        self.conv = gnn.Conv1d(channels, channels, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn = nn.BatchNorm1d(channels)
        self.residual = stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.conv(self.shuffle(x))))
        return out + x if self.residual else out


class GroupedCNN1d(nn.Module):
    """Stem conv (k5), then shuffled grouped 3-tap blocks, global average pool, linear classifier.

    The grouped blocks cost channels^2 * 3 / groups parameters each, so `groups` buys depth and
    width within the baseline's parameter budget; the shuffle lets every group see every other.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, channels: int = 32, groups: int = 4,
                 strides: tuple[int, ...] = (1, 2, 1, 2, 1), shuffle: bool = True):
        super().__init__()
        check_classifier_arguments(num_classes, in_chans)
        if channels % groups:
            raise ValueError(f"channels={channels} is not divisible by groups={groups}")
        self.stem = nn.Sequential(gnn.Conv1d(in_chans, channels, 5, padding=2, bias=False),
                                  nn.BatchNorm1d(channels), nn.ReLU())
        self.blocks = nn.Sequential(*(ShuffledGroupedBlock1d(channels, groups, s, shuffle) for s in strides))
        self.output = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.blocks(self.stem(x)).mean(dim=-1))


@register_model(input_size=MNIST1D_INPUT, tags=("1d",))
def cnn1d_mnist1d(**kwargs) -> BaselineCNN1d:
    """The published MNIST-1D CNN baseline (94% test accuracy, 5,210 parameters)."""
    return BaselineCNN1d(**kwargs)


@register_model(input_size=MNIST1D_INPUT, tags=("1d", "study"))
def grouped_cnn1d_mnist1d(**kwargs) -> GroupedCNN1d:
    """Shuffled grouped 1-D CNN for MNIST-1D, fewer parameters than the CNN baseline."""
    return GroupedCNN1d(**kwargs)
