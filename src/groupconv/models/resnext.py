"""ResNeXt for ImageNet (Xie, Girshick, Dollar, Tu, He 2017, "Aggregated Residual Transformations for Deep
Neural Networks", arXiv 1611.05431), block form (c): the C paths of a block as one grouped 3x3 conv.

Module names, order and parameter shapes are those of torchvision's ResNet class (conv1, bn1, relu,
maxpool, layer1..layer4 of Bottleneck blocks with conv1/bn1/conv2/bn2/conv3/bn3/downsample.0/
downsample.1, avgpool, fc), so a torchvision resnext state_dict loads with strict=True. As in
torchvision (ResNet v1.5), the stride of a downsampling block sits on its 3x3 conv, and the block
width is int(planes * base_width / 64) * cardinality. Initialisation is torchvision's default
(Kaiming-normal fan_out convs, BN 1/0, no zero-init of the last BN); `zero_init_last()` starts every block as
its shortcut (Goyal et al. 2017), as `groupconv train` does by default (--zero-init-residual).

Checked (tests/test_models.py): parameter counts equal models.md / torchvision's published counts
(25,028,904; 44,177,704; 88,791,336; 83,455,272), multiply-adds at 224x224 equal torchvision's
4.23 / 16.41 / 15.46 G (convolutions and FC; torchvision's "GFLOPS" column counts multiply-adds),
and the state_dict keys follow torchvision's naming pattern.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import nn as gnn
from .common import check_classifier_arguments, check_positive_int, zero_init_last_blocks
from .registry import Recipe, register_model

# Xie et al. 2017, Sec. 4 (ImageNet): SGD, lr 0.1 (batch 256), momentum 0.9, weight decay 1e-4. groupconv train starts
# every block as its shortcut (zero_init_last, Goyal et al. 2017); without it the loss on one batch of digits diverges
# at lr 0.1 (2.4 -> 10 for ResNeXt-50).
RECIPE = Recipe({"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
                "Xie et al. 2017, Sec. 4: SGD, lr 0.1, momentum 0.9, weight decay 1e-4; the residual branches start at "
                "zero (Goyal et al. 2017)")


class Bottleneck(nn.Module):
    """1x1 reduce -> BN/ReLU -> 3x3 grouped (cardinality groups, stride here) -> BN/ReLU -> 1x1 expand -> BN,
    plus the (projected) shortcut, then ReLU."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, cardinality: int, base_width: int,
                 downsample: nn.Module | None = None):
        super().__init__()
        width = int(planes * base_width / 64) * cardinality
        out_channels = planes * self.expansion
        self.conv1 = gnn.Conv2d(in_channels, width, 1, bias=False)
        # Each BN takes its ReLU (and bn3 the shortcut sum) fused: groupconv.nn.BatchNormAct2d.
        self.bn1 = gnn.BatchNormAct2d(width)
        self.conv2 = gnn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = gnn.BatchNormAct2d(width)
        self.conv3 = gnn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = gnn.BatchNormAct2d(out_channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.bn3(self.conv3(out), shortcut)

    def zero_init_last(self) -> None:
        """Start the residual branch at zero (Goyal et al. 2017; torchvision's zero_init_residual): zero scale on
        bn3, so the block begins as the (projected) shortcut."""
        nn.init.zeros_(self.bn3.weight)


class ResNeXt(nn.Module):
    """ResNeXt-{50,101} with `cardinality` paths of `base_width` channels (at the first stage) per block.

    small_input=True: for 32x32 inputs, conv1 has stride 1 (its 7x7 kernel is kept, so weights keep
    their shapes) and the max-pool is an identity; layer4 then sees 4x4 instead of 7x7. The
    state_dict and the parameter count are unchanged.
    """

    def __init__(self, layers: tuple[int, int, int, int], cardinality: int, base_width: int,
                 num_classes: int = 1000, in_chans: int = 3, small_input: bool = False):
        super().__init__()
        check_classifier_arguments(num_classes, in_chans)
        check_positive_int(cardinality, "cardinality")
        check_positive_int(base_width, "base_width")
        self.cardinality, self.base_width = cardinality, base_width
        self.num_classes, self.in_chans = num_classes, in_chans
        self.in_channels = 64

        self.conv1 = gnn.Conv2d(in_chans, 64, 7, stride=1 if small_input else 2, padding=3, bias=False)
        self.bn1 = gnn.BatchNormAct2d(64)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], stride=1)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        self._init_parameters()

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = nn.Sequential(gnn.Conv2d(self.in_channels, out_channels, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out_channels))
        layer = [Bottleneck(self.in_channels, planes, stride, self.cardinality, self.base_width, downsample)]
        self.in_channels = out_channels
        layer += [Bottleneck(out_channels, planes, 1, self.cardinality, self.base_width) for _ in range(1, blocks)]
        return nn.Sequential(*layer)

    def _init_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def zero_init_last(self) -> None:
        """Every block starts as its shortcut (see Bottleneck.zero_init_last)."""
        zero_init_last_blocks(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(small_input=True, recipe=RECIPE)
def resnext50_32x4d(**kwargs) -> ResNeXt:
    """ResNeXt-50 (32x4d), the paper's Table 1."""
    return ResNeXt((3, 4, 6, 3), cardinality=32, base_width=4, **kwargs)


@register_model(small_input=True, recipe=RECIPE)
def resnext101_32x4d(**kwargs) -> ResNeXt:
    """ResNeXt-101 (32x4d)."""
    return ResNeXt((3, 4, 23, 3), cardinality=32, base_width=4, **kwargs)


@register_model(small_input=True, recipe=RECIPE)
def resnext101_32x8d(**kwargs) -> ResNeXt:
    """ResNeXt-101 (32x8d)."""
    return ResNeXt((3, 4, 23, 3), cardinality=32, base_width=8, **kwargs)


@register_model(small_input=True, recipe=RECIPE)
def resnext101_64x4d(**kwargs) -> ResNeXt:
    """ResNeXt-101 (64x4d), the paper's Table 5."""
    return ResNeXt((3, 4, 23, 3), cardinality=64, base_width=4, **kwargs)
