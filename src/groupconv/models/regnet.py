"""RegNetX and RegNetY (Radosavovic, Kosaraju, Girshick, He, Dollar 2020, "Designing Network Design Spaces",
arXiv 2003.13678): stages of residual bottleneck blocks whose 3x3 conv is grouped with a fixed group width; RegNetY
adds squeeze-excitation (Hu et al. 2018) after it.

Module names, order and parameter shapes are torchvision's RegNet (stem.0/stem.1, trunk_output.block{i} stages of
blocks named "block{i}-{j}", each with proj.0/proj.1 when it changes shape, f.a / f.b / f.se.fc1 / f.se.fc2 / f.c,
then fc), so torchvision's regnet_x_* / regnet_y_* state_dicts load with strict=True. The stage widths and depths
come from the paper's quantized linear rule (Sec. 3.3) computed as torchvision computes them (BlockParams.
from_init_params in float32, widths made divisible by the group width with torchvision's _make_divisible).
Registered names are timm's (regnetx_002 = RegNetX-200MF, ..., regnety_032 = RegNetY-3.2GF); the 200MF models,
which torchvision does not ship, use the paper's (pycls's) parameters with the same rules.

`width=` scales a design's w_0 and w_a (`RegNetParameters.scaled`): every block's width u_j = w_0 + w_a j scales,
the stage boundaries (which depend on w_a / w_0 only) stay, and the rounding to multiples of 8 and of the group width
is the same; width 1 is the design itself. It moves a model along its own design point's width, e.g. to match
another network's multiply-adds. Narrow enough, two neighbouring stages round to the same width and become one, as
the same rule does in the paper's designs; narrower still, w_0 rounds to no channels, which is a ValueError.

Checked (tests/test_models_modern.py): parameter counts equal timm's / pycls's for 200MF (2,684,792; 3,162,996) and
torchvision's published counts for the others; multiply-adds at 224x224 equal the model names' 0.2 / 0.4 / 0.8 /
1.6 / 3.2 G to torchvision's rounding; the state_dict keys and shapes are torchvision's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from .. import nn as gnn
from .common import check_classifier_arguments, check_width, like_strides, make_divisible, zero_init_last_blocks
from .registry import register_model

STEM_CHANNELS = 32


@dataclass(frozen=True)
class RegNetParameters:
    """The paper's design-space parameters: depth d, initial width w_0, slope w_a, multiplier w_m, group width g."""

    depth: int
    w_0: float
    w_a: float
    w_m: float
    group_width: int
    se_ratio: float | None = None

    def scaled(self, width: float) -> RegNetParameters:
        """The design with every block `width` times as wide: w_0 and w_a scaled (w_a / w_0, hence the stages, kept)."""
        width = check_width(width)
        if round(self.w_0 * width / 8) < 1:  # the first block's width, rounded to a multiple of 8 as in stages()
            raise ValueError(f"width={width} leaves RegNet no channels in its first block: w_0={self.w_0} x {width} "
                             f"rounds to 0 (widths are multiples of 8)")
        return self if width == 1.0 else replace(self, w_0=self.w_0 * width, w_a=self.w_a * width)

    def stages(self) -> list[tuple[int, int, int]]:
        """(width, depth, group width) of each stage, as torchvision's BlockParams.from_init_params."""
        # Per-block widths u_j = w_0 + w_a j, snapped to w_0 w_m^round(log(u_j / w_0) / log w_m), multiples of 8.
        # float32, as torchvision computes them: the rounding of a few borderline blocks depends on it.
        widths_cont = torch.arange(self.depth, device="cpu") * self.w_a + self.w_0  # (also under torch.device("meta"))
        block_capacity = torch.round(torch.log(widths_cont / self.w_0) / math.log(self.w_m))
        block_widths = (torch.round(torch.divide(self.w_0 * torch.pow(self.w_m, block_capacity), 8)) * 8).int()
        widths, depths = [], []
        for width in block_widths.tolist():  # consecutive blocks of one width form a stage
            if widths and widths[-1] == width:
                depths[-1] += 1
            else:
                widths.append(width)
                depths.append(1)
        # The bottleneck (multiplier 1 here) is made a multiple of the group width, which shrinks where wider.
        group_widths = [min(self.group_width, width) for width in widths]
        widths = [make_divisible(width, group) for width, group in zip(widths, group_widths)]
        return list(zip(widths, depths, group_widths))


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: x * sigmoid(fc2(relu(fc1(mean over space of x)))), fc1/fc2 1x1 convs."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = gnn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = gnn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
            relu: bool = True) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: [conv, BN(, ReLU)], the ReLU fused into the BN (keys .0 and .1)."""
    return nn.Sequential(gnn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                                    groups=groups, bias=False),
                         gnn.BatchNormAct2d(out_channels, apply_act=relu))


class BottleneckTransform(nn.Module):
    """1x1 conv -> BN/ReLU -> 3x3 grouped conv (group width g, stride here) -> BN/ReLU [-> SE] -> 1x1 conv -> BN, with
    the block's shortcut sum and ReLU fused into that last BN (so f.c's BN has its ReLU on, applied after the sum)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, group_width: int, se_ratio: float | None):
        super().__init__()
        self.a = conv_bn(in_channels, out_channels, 1)
        self.b = conv_bn(out_channels, out_channels, 3, stride, groups=out_channels // group_width)
        # The squeeze width is a fraction of the block's input width, not of the bottleneck's (pycls, torchvision).
        self.se = SqueezeExcitation(out_channels, int(round(se_ratio * in_channels))) if se_ratio else nn.Identity()
        self.c = conv_bn(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        out = self.c[0](self.se(self.b(self.a(x))))
        return self.c[1](out, like_strides(shortcut, out))


class ResBottleneckBlock(nn.Module):
    """relu(f(x) + shortcut), the shortcut a strided 1x1 conv and BN when the block changes shape."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, group_width: int, se_ratio: float | None):
        super().__init__()
        self.proj = None
        if in_channels != out_channels or stride != 1:
            self.proj = conv_bn(in_channels, out_channels, 1, stride, relu=False)
        self.f = BottleneckTransform(in_channels, out_channels, stride, group_width, se_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x, x if self.proj is None else self.proj(x))

    def zero_init_last(self) -> None:
        """Start the block as relu(shortcut): zero scale on the last BN of f (Goyal et al. 2017; timm's RegNet)."""
        nn.init.zeros_(self.f.c[1].weight)


class RegNet(nn.Module):
    """RegNet from the paper's parameters (`RegNetParameters`): a 3x3 stride-2 stem to 32 channels, four stages whose
    first block halves the resolution, global average pool, FC.

    small_input=True: for 32x32 inputs, the stem has stride 1, so the four stages take 32 -> 2 instead of 112 -> 7;
    parameters and state_dict are unchanged.
    width: scale the design's widths (see `RegNetParameters.scaled`); `design` is the scaled one.
    """

    def __init__(self, parameters: RegNetParameters, num_classes: int = 1000, in_chans: int = 3,
                 small_input: bool = False, width: float = 1.0):
        super().__init__()
        if not isinstance(parameters, RegNetParameters):
            raise TypeError(f"parameters={parameters!r} must be a RegNetParameters")
        parameters = parameters.scaled(width)
        check_classifier_arguments(num_classes, in_chans)
        self.design, self.width, self.num_classes, self.in_chans = parameters, float(width), num_classes, in_chans

        self.stem = conv_bn(in_chans, STEM_CHANNELS, 3, stride=1 if small_input else 2)
        self.trunk_output = nn.Sequential()
        in_channels = STEM_CHANNELS
        for stage_index, (width, depth, group_width) in enumerate(parameters.stages(), start=1):
            stage = nn.Sequential()
            for block_index in range(depth):
                stage.add_module(f"block{stage_index}-{block_index}", ResBottleneckBlock(
                    in_channels, width, 2 if block_index == 0 else 1, group_width, parameters.se_ratio))
                in_channels = width
            self.trunk_output.add_module(f"block{stage_index}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_channels, num_classes)
        self._init_parameters()

    def _init_parameters(self) -> None:
        # torchvision's: normal(0, sqrt(2 / fan_out)) convs, BN 1/0, FC normal(0, 0.01) with zero bias.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.zeros_(module.bias)

    def zero_init_last(self) -> None:
        """Every block starts as relu(shortcut) (see ResBottleneckBlock.zero_init_last)."""
        zero_init_last_blocks(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk_output(self.stem(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# The paper's models (pycls's configurations; torchvision's for 400MF and up): d, w_0, w_a, w_m, g.
DESIGNS = {
    "regnetx_002": RegNetParameters(13, 24, 36.44, 2.49, 8),
    "regnetx_004": RegNetParameters(22, 24, 24.48, 2.54, 16),
    "regnetx_008": RegNetParameters(16, 56, 35.73, 2.28, 16),
    "regnetx_016": RegNetParameters(18, 80, 34.01, 2.25, 24),
    "regnetx_032": RegNetParameters(25, 88, 26.31, 2.25, 48),
    "regnety_002": RegNetParameters(13, 24, 36.44, 2.49, 8, se_ratio=0.25),
    "regnety_004": RegNetParameters(16, 48, 27.89, 2.09, 8, se_ratio=0.25),
    "regnety_008": RegNetParameters(14, 56, 38.84, 2.4, 16, se_ratio=0.25),
    "regnety_016": RegNetParameters(27, 48, 20.71, 2.65, 24, se_ratio=0.25),
    "regnety_032": RegNetParameters(21, 80, 42.63, 2.66, 24, se_ratio=0.25),
}
TORCHVISION_NAMES = {"regnetx_004": "regnet_x_400mf", "regnetx_008": "regnet_x_800mf", "regnetx_016": "regnet_x_1_6gf",
                     "regnetx_032": "regnet_x_3_2gf", "regnety_004": "regnet_y_400mf", "regnety_008": "regnet_y_800mf",
                     "regnety_016": "regnet_y_1_6gf", "regnety_032": "regnet_y_3_2gf"}


def _builder(name: str):
    def builder(**kwargs) -> RegNet:
        return RegNet(DESIGNS[name], **kwargs)

    kind = "RegNetY" if DESIGNS[name].se_ratio else "RegNetX"
    flops = {"002": "200MF", "004": "400MF", "008": "800MF", "016": "1.6GF", "032": "3.2GF"}[name[-3:]]
    source = f"torchvision's {TORCHVISION_NAMES[name]}" if name in TORCHVISION_NAMES else "pycls's parameters"
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"{kind}-{flops} (Radosavovic et al. 2020), {source}; options: see RegNet."
    return builder


for _name in DESIGNS:
    register_model(_builder(_name), small_input=True)
