"""MobileNet v1 (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", arXiv 1704.04861): the depthwise-separable reference of the zoo.

Table 1 of the paper: a 3x3 stride-2 conv to 32 channels, then 13 depthwise-separable blocks
(3x3 depthwise -> BN -> ReLU -> 1x1 pointwise -> BN -> ReLU), global average pool, FC. Layout and
names follow pytorchcv (features.init_block, features.stage1..5.unitN.{dw_conv,pw_conv}.{conv,bn},
output), so its state_dicts load with strict=True; the width multiplier alpha scales every channel
count with pytorchcv's truncation int(c * alpha).

Checked (tests/test_models.py): parameter counts equal models.md (4,231,976 for 1.0 MobileNet-224:
convs without bias, BN counted, FC with bias) and pytorchcv's for the other widths; multiply-adds
at 224x224 equal the paper's 569 M (568.7 M for the convolutions, +1.0 M for the FC, which the
paper's count leaves out).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import nn as gnn
from .common import check_classifier_arguments, check_width, scale_channels
from .registry import register_model

# Output channels of each block, grouped in pytorchcv's stages; the first stage is the stem conv.
STAGE_CHANNELS = ((32,), (64,), (128, 128), (256, 256), (512,) * 6, (1024, 1024))


class ConvBlock(nn.Module):
    """conv -> BN -> ReLU, the BN and ReLU fused (groupconv.nn.BatchNormAct2d); `conv` is any groupconv layer."""

    def __init__(self, conv: nn.Module, out_channels: int):
        super().__init__()
        self.conv = conv
        self.bn = gnn.BatchNormAct2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DepthwiseSeparableBlock(nn.Module):
    """3x3 depthwise conv block then 1x1 pointwise conv block, each with its own BN and ReLU (paper, Fig. 3).

    The BN and ReLU between the two convs are why this is not one groupconv.nn.DepthwiseSeparableConv2d.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.dw_conv = ConvBlock(gnn.DepthwiseConv2d(in_channels, 3, stride=stride, padding=1, bias=False),
                                 in_channels)
        self.pw_conv = ConvBlock(gnn.PointwiseGroupedConv2d(in_channels, out_channels, bias=False), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw_conv(self.dw_conv(x))


class MobileNet(nn.Module):
    """MobileNet v1 with width multiplier `width` (the paper's alpha).

    small_input=True: for 32x32 inputs, the stem conv has stride 1, so the four stride-2 blocks
    take 32 -> 2 instead of 224 -> 7 with the stem's stride (parameters unchanged).
    """

    def __init__(self, width: float = 1.0, num_classes: int = 1000, in_chans: int = 3, small_input: bool = False):
        super().__init__()
        width = check_width(width)
        check_classifier_arguments(num_classes, in_chans)
        self.width, self.num_classes, self.in_chans = width, num_classes, in_chans
        channels = [[scale_channels(c, width) for c in stage] for stage in STAGE_CHANNELS]

        self.features = nn.Sequential()
        stem_channels = channels[0][0]
        stem = gnn.Conv2d(in_chans, stem_channels, 3, stride=1 if small_input else 2, padding=1, bias=False)
        self.features.add_module("init_block", ConvBlock(stem, stem_channels))
        in_channels = stem_channels
        for stage_index, stage_channels in enumerate(channels[1:]):
            stage = nn.Sequential()
            for unit_index, out_channels in enumerate(stage_channels):
                # The first block of every stage but the first (64 channels, 112x112) halves the resolution.
                stride = 2 if unit_index == 0 and stage_index > 0 else 1
                stage.add_module(f"unit{unit_index + 1}", DepthwiseSeparableBlock(in_channels, out_channels, stride))
                in_channels = out_channels
            self.features.add_module(f"stage{stage_index + 1}", stage)
        self.features.add_module("final_pool", nn.AdaptiveAvgPool2d(1))
        self.output = nn.Linear(in_channels, num_classes)
        self._init_parameters()

    def _init_parameters(self) -> None:
        # pytorchcv's initialisation: Kaiming-normal, fan_in for depthwise, fan_out for the rest; BN 1/0.
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                mode = "fan_in" if module.groups == module.in_channels > 1 else "fan_out"
                nn.init.kaiming_normal_(module.weight, mode=mode)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.flatten(self.features(x), 1))


@register_model(small_input=True)
def mobilenet_w1(**kwargs) -> MobileNet:
    """1.0 MobileNet-224."""
    return MobileNet(width=1.0, **kwargs)


@register_model(small_input=True)
def mobilenet_w3d4(**kwargs) -> MobileNet:
    """0.75 MobileNet-224."""
    return MobileNet(width=0.75, **kwargs)


@register_model(small_input=True)
def mobilenet_wd2(**kwargs) -> MobileNet:
    """0.5 MobileNet-224."""
    return MobileNet(width=0.5, **kwargs)


@register_model(small_input=True)
def mobilenet_wd4(**kwargs) -> MobileNet:
    """0.25 MobileNet-224."""
    return MobileNet(width=0.25, **kwargs)
