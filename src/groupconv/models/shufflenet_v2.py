"""ShuffleNet V2 (Ma, Zhang, Zheng, Sun 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", arXiv 1807.11164), at the paper's four widths (Table 5: 0.5x, 1x, 1.5x, 2x) and any other width.

Module names, order and parameter shapes are torchvision's ShuffleNetV2 (conv1.0/conv1.1, maxpool, stage2..4 of
InvertedResidual units with branch1.{0..3} and branch2.{0..7} as Sequentials, conv5.0/conv5.1, fc), so a torchvision
shufflenet_v2_x*_* state_dict loads with strict=True. A unit splits its input channels in two: a stride-1 unit
passes one half through and runs the other through 1x1 conv -> BN/ReLU -> 3x3 depthwise -> BN -> 1x1 conv -> BN/ReLU;
a stride-2 unit runs the whole input through two branches (the second as above, the first 3x3 depthwise -> BN -> 1x1
conv -> BN/ReLU). The two halves are concatenated and channel-shuffled with 2 groups.

Fusion: in a stride-2 unit, branch1's last BatchNormAct2d writes its output straight into the concatenation with
branch2's (concat=), which torch.cat would otherwise copy again; a stride-1 unit's concatenation puts the untouched
half first, which that fused write cannot do, so there torch.cat builds it. The shuffle is groupconv.nn.ChannelShuffle.

Checked (tests/test_models_modern.py): parameter counts equal torchvision's published 1,366,792 / 2,278,604 /
3,503,624 / 7,393,996; multiply-adds at 224x224 equal the paper's 41 / 146 / 299 / 591 M (Table 5, FC included) and
torchvision's 0.04 / 0.14 / 0.30 / 0.58 GFLOPS; the state_dict keys and shapes are torchvision's.

Other widths (`width=` any positive number, e.g. to match another network's multiply-adds): the paper gives no rule
(its four widths are not proportional: 0.5x has 48 stage-2 channels, not 58), so `stage_out_channels` scales 1x's
and rounds stage 2 to a multiple of 4, as every published width is (each unit splits a stage's channels into two
halves, which stay even), then doubles it per stage as all four do; conv1 keeps its 24 channels and conv5 its 1024
(2048 from 2x up, as the paper's 2x). The module names and layout are the same at every width.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import nn as gnn
from .common import check_classifier_arguments, check_width
from .registry import register_model

STAGE_REPEATS = (4, 8, 4)
# Table 5 of the paper (torchvision's stages_out_channels): conv1, stage2, stage3, stage4, conv5 output channels.
STAGE_OUT_CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
STAGE2_CHANNELS_1X = 116
SPLIT_MULTIPLE = 4  # stage channels are multiples of 4: a unit's two halves stay even


def stage_out_channels(width: float) -> tuple[int, int, int, int, int]:
    """conv1, stage2, stage3, stage4 and conv5 output channels at `width` (see the module docstring)."""
    width = check_width(width)
    if width in STAGE_OUT_CHANNELS:
        return STAGE_OUT_CHANNELS[width]
    stage2 = max(SPLIT_MULTIPLE, round(STAGE2_CHANNELS_1X * width / SPLIT_MULTIPLE) * SPLIT_MULTIPLE)
    return (STAGE_OUT_CHANNELS[1.0][0], stage2, 2 * stage2, 4 * stage2, 2048 if width >= 2.0 else 1024)


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
            relu: bool = True) -> list[nn.Module]:
    """[conv, BN] with the BN's ReLU fused when `relu`: the two entries torchvision puts in its Sequentials."""
    conv = gnn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                      groups=groups, bias=False)
    return [conv, gnn.BatchNormAct2d(out_channels, apply_act=relu)]


class InvertedResidual(nn.Module):
    """A ShuffleNet V2 unit (paper Fig. 3 (c) for stride 1, (d) for stride 2), torchvision's layout."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride={stride!r} must be 1 or 2")
        branch_channels = out_channels // 2
        if stride == 1 and in_channels != 2 * branch_channels:
            raise ValueError(f"a stride-1 unit needs in_channels={in_channels} == out_channels={out_channels}, even")
        self.stride = stride
        if stride > 1:
            # torchvision: [dw conv, BN, 1x1 conv, BN, ReLU]; the ReLU is fused into the BN at index 3.
            self.branch1 = nn.Sequential(*conv_bn(in_channels, in_channels, 3, stride, groups=in_channels, relu=False),
                                         *conv_bn(in_channels, branch_channels, 1))
        else:
            self.branch1 = nn.Sequential()
        # torchvision: [1x1 conv, BN, ReLU, dw conv, BN, 1x1 conv, BN, ReLU]; each ReLU fused into the BN before it,
        # the middle one's place kept by an Identity so that the later indices (3..6) stay torchvision's.
        self.branch2 = nn.Sequential(
            *conv_bn(in_channels if stride > 1 else branch_channels, branch_channels, 1), nn.Identity(),
            *conv_bn(branch_channels, branch_channels, 3, stride, groups=branch_channels, relu=False),
            *conv_bn(branch_channels, branch_channels, 1))
        self.shuffle = gnn.ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            passed, branch_input = x.chunk(2, dim=1)
            return self.shuffle(torch.cat((passed, self.branch2(branch_input)), dim=1))
        second = self.branch2(x)
        first = self.branch1[2](self.branch1[1](self.branch1[0](x)))
        return self.shuffle(self.branch1[3](first, concat=second))


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2 at `width`: the paper's channels at 0.5, 1.0, 1.5 and 2.0, `stage_out_channels`' at any other.

    small_input=True: for 32x32 inputs, conv1 has stride 1 and the max-pool is an identity (as ShuffleNet v1's
    small-input variant), so stage4 sees 4x4 instead of 7x7; parameters and state_dict are unchanged.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 1000, in_chans: int = 3, small_input: bool = False):
        super().__init__()
        channels = stage_out_channels(width)
        check_classifier_arguments(num_classes, in_chans)
        self.width, self.num_classes, self.in_chans = float(width), num_classes, in_chans

        self.conv1 = nn.Sequential(*conv_bn(in_chans, channels[0], 3, stride=1 if small_input else 2))
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = channels[0]
        for stage_index, (repeats, out_channels) in enumerate(zip(STAGE_REPEATS, channels[1:4])):
            units = [InvertedResidual(in_channels, out_channels, 2)]
            units += [InvertedResidual(out_channels, out_channels, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{stage_index + 2}", nn.Sequential(*units))
            in_channels = out_channels
        self.conv5 = nn.Sequential(*conv_bn(in_channels, channels[-1], 1))
        self.fc = nn.Linear(channels[-1], num_classes)
        # torchvision keeps torch's default initialisation for every layer. No zero_init_last: a unit concatenates
        # its branch with the other half instead of adding it, so there is no residual sum to start at zero.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean((2, 3)))


def _builder(default_width: float, name: str):
    def builder(width: float = default_width, **kwargs) -> ShuffleNetV2:
        return ShuffleNetV2(width=width, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = (f"ShuffleNet V2 {default_width:g}x (Ma et al. 2018), torchvision's {name}; width= builds "
                       f"another width; options: see ShuffleNetV2.")
    return builder


for _width, _suffix in ((0.5, "x0_5"), (1.0, "x1_0"), (1.5, "x1_5"), (2.0, "x2_0")):
    register_model(_builder(_width, f"shufflenet_v2_{_suffix}"), small_input=True)
