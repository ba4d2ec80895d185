"""Layers: drop-ins for torch.nn.ConvNd, the grouped-convolution family, BatchNormAct2d (BN + residual + ReLU) and
LocalResponseNorm (AlexNet's, exportable)."""

from .accelerate import accelerate
from .base import with_shortcut
from .conv import Conv1d, Conv2d, Conv3d
from .separable import (
    DepthwiseConv2d,
    DepthwiseSeparableConv2d,
    FlattenedConv2d,
    PointwiseGroupedConv2d,
    SpatialSeparableConv2d,
)
from .normalization import BatchNormAct2d, LocalResponseNorm
from .shuffle import ChannelShuffle, ShuffledGroupedConv2d

__all__ = [
    "BatchNormAct2d", "ChannelShuffle", "Conv1d", "Conv2d", "Conv3d", "DepthwiseConv2d", "DepthwiseSeparableConv2d",
    "FlattenedConv2d", "LocalResponseNorm", "PointwiseGroupedConv2d", "ShuffledGroupedConv2d", "SpatialSeparableConv2d", "accelerate",
    "with_shortcut",
]
