"""MobileNet V2 (Sandler, Howard, Zhu, Zhmoginov, Chen 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", arXiv 1801.04381), at width multipliers 1.0, 0.75 and 0.5.

Module names, order and parameter shapes are torchvision's MobileNetV2 (features.0 the stem conv/BN/ReLU6,
features.1..17 InvertedResidual blocks whose `conv` Sequential holds [1x1 expand conv/BN/ReLU6,] 3x3 depthwise
conv/BN/ReLU6, 1x1 linear projection conv, BN; features.18 the 1x1 conv to 1280; classifier.1 the FC), so
torchvision's mobilenet_v2 state_dict loads with strict=True. Channels are scaled as torchvision scales them:
_make_divisible(c * width, 8), the last conv keeps 1280 below width 1. Registered names: torchvision's model name
with timm's width suffix (mobilenet_v2_100, mobilenet_v2_075, mobilenet_v2_050).

ReLU6 is not fused into BatchNormAct2d (whose activation is ReLU): each BN has apply_act=False and a ReLU6 module
follows, as in torchvision; a block's residual sum is fused into its projection BN (BatchNormAct2d(x, residual)).

Checked (tests/test_models_modern.py): 3,504,872 parameters at width 1 (torchvision's published count) and 300.8 M
multiply-adds at 224x224 (torchvision's 0.30 GFLOPS, the paper's 300 M); 209.1 M and 97.1 M multiply-adds at widths
0.75 and 0.5 (the paper's published 209 M and 97 M; their parameters, 2,636,424 and 1,968,680, follow torchvision's
rounding, not the TensorFlow models' 2.61 M and 1.95 M); torchvision's state_dict keys and shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import nn as gnn
from .common import check_classifier_arguments, check_width, like_strides, make_divisible, zero_init_last_blocks
from .registry import Recipe, register_model

# Sandler et al. 2018, Sec. 6.1: lr 0.045, weight decay 4e-5 (momentum 0.9); the paper's optimizer is RMSProp,
# torchvision's reference recipe for its MobileNetV2 the same values with SGD. At the library's lr 0.1 the loss on one
# batch of 16 digits climbed from 2.4 to 10 in its first steps (docs/training.md).
RECIPE = Recipe({"lr": 0.045, "weight_decay": 4e-5},
                "Sandler et al. 2018, Sec. 6.1: lr 0.045, weight decay 4e-5, momentum 0.9 (with SGD, as torchvision's "
                "reference recipe; the paper's optimizer is RMSProp)")

# Table 2 of the paper: expansion t, output channels c, repeats n, first stride s of each bottleneck sequence.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS, LAST_CHANNELS, ROUND_TO = 32, 1280, 8


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation with ReLU6: [conv, BN, ReLU6] (keys .0 and .1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(gnn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                                    groups=groups, bias=False),
                         gnn.BatchNormAct2d(out_channels, apply_act=False), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """Expand (1x1, unless t = 1) -> 3x3 depthwise (stride here) -> linear 1x1 projection -> BN, plus the input when
    the block keeps stride 1 and its channel count (paper Fig. 4 (d))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers = [ConvBNReLU6(in_channels, hidden, 1)] if expand_ratio != 1 else []
        layers += [ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
                   gnn.Conv2d(hidden, out_channels, 1, bias=False),
                   gnn.BatchNormAct2d(out_channels, apply_act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = x
        for layer in self.conv[:-1]:
            branch = layer(branch)
        return self.conv[-1](branch, like_strides(x, branch) if self.use_res_connect else None)

    def zero_init_last(self) -> None:
        """Start a residual block as the identity: zero scale on its projection BN (Goyal et al. 2017)."""
        if self.use_res_connect:
            nn.init.zeros_(self.conv[-1].weight)


class MobileNetV2(nn.Module):
    """MobileNet V2 with width multiplier `width`.

    small_input=True: for 32x32 inputs, the stem conv has stride 1 (as MobileNet v1's small-input variant), so the
    four stride-2 blocks take 32 -> 2; parameters and state_dict are unchanged.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                 dropout: float = 0.2):
        super().__init__()
        width = check_width(width)
        check_classifier_arguments(num_classes, in_chans)
        self.width, self.num_classes, self.in_chans = width, num_classes, in_chans

        in_channels = make_divisible(STEM_CHANNELS * width, ROUND_TO)
        self.last_channels = make_divisible(LAST_CHANNELS * max(1.0, width), ROUND_TO)
        layers: list[nn.Module] = [ConvBNReLU6(in_chans, in_channels, 3, stride=1 if small_input else 2)]
        for expand_ratio, channels, repeats, first_stride in INVERTED_RESIDUAL_SETTING:
            out_channels = make_divisible(channels * width, ROUND_TO)
            for index in range(repeats):
                layers.append(InvertedResidual(in_channels, out_channels, first_stride if index == 0 else 1,
                                               expand_ratio))
                in_channels = out_channels
        layers.append(ConvBNReLU6(in_channels, self.last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channels, num_classes))
        self._init_parameters()

    def _init_parameters(self) -> None:
        # torchvision's: Kaiming-normal fan_out convs, BN 1/0, FC normal(0, 0.01) with zero bias.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def zero_init_last(self) -> None:
        """Every residual block starts as the identity (see InvertedResidual.zero_init_last)."""
        zero_init_last_blocks(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


@register_model(small_input=True, recipe=RECIPE)
def mobilenet_v2_100(**kwargs) -> MobileNetV2:
    """MobileNet V2 1.0 (torchvision's mobilenet_v2)."""
    return MobileNetV2(width=1.0, **kwargs)


@register_model(small_input=True, recipe=RECIPE)
def mobilenet_v2_075(**kwargs) -> MobileNetV2:
    """MobileNet V2 0.75 (torchvision's mobilenet_v2(width_mult=0.75))."""
    return MobileNetV2(width=0.75, **kwargs)


@register_model(small_input=True, recipe=RECIPE)
def mobilenet_v2_050(**kwargs) -> MobileNetV2:
    """MobileNet V2 0.5 (torchvision's mobilenet_v2(width_mult=0.5))."""
    return MobileNetV2(width=0.5, **kwargs)
