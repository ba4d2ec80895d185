"""ShuffleNet v1 (Zhang, Zhou, Lin, Sun 2017, "ShuffleNet: An Extremely Efficient Convolutional Neural
Network for Mobile Devices", arXiv 1707.01083), for every group count of the paper's Table 1.

Layout and names follow pytorchcv / imgclsmob, so a pytorchcv state_dict loads
with strict=True: features.init_block (3x3 s2 conv, BN, ReLU, 3x3 s2 max-pool), features.stage1..3
(the paper's stages 2..4, 4/8/4 units), features.final_pool, output (FC with bias). Channels are
scaled by `width` with pytorchcv's truncation int(c * width), init block included.

One deliberate difference in structure, none in function: pytorchcv's unit runs a ChannelShuffle
module and then the depthwise conv. A depthwise conv reading a channel-shuffled tensor is one
groupconv.nn.ShuffledGroupedConv2d(groups=channels, shuffle_groups=g): the same weight (shape
and meaning: weight[j] filters channel j of the shuffled tensor), the same output, and fast
backends can read through the permutation instead of materialising it. `shuffle=False` (the
paper's Table 3 ablation) sets shuffle_groups=1 and changes nothing else.

Checked (tests/test_models.py): parameter counts equal models.md and pytorchcv's published counts
(convs without bias, BN counted, FC with bias); conv multiply-adds at 224x224 (FC excluded, as in
the paper's complexity column) round to the paper's 143/140/137/133/137 M for g = 1/2/3/4/8 at 1x.

Widths that pytorchcv's truncation cannot build (e.g. g=8 at 0.5x: the first unit's main branch
would output 192 - 12 = 180 channels, not divisible by 8; 12 of the 30 (g, width) pairs) are not
given by the paper either. For those, and only those, every stage's output is rounded to the
nearest multiple of 4g (so the bottleneck, a quarter of it, splits into g groups) and the stem to
the nearest multiple of g; `channel_plan` says which rule a pair uses. Own channel counts (for
example wider stages at equal multiply-adds) go in `stage_channels=`; counts that cannot be
grouped are a ValueError naming that option.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import nn as gnn
from .common import check_classifier_arguments, check_width, scale_channels, width_suffix, zero_init_last_blocks
from .registry import register_model

# Table 1 of the paper: output channels of stages 2, 3, 4 at 1x, for each group count.
STAGE_CHANNELS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088),
                  8: (384, 768, 1536)}
UNITS_PER_STAGE = (4, 8, 4)
INIT_BLOCK_CHANNELS = 24
WIDTHS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def check_unit_channels(in_channels: int, out_channels: int, groups: int, downsample: bool,
                        ignore_group: bool) -> None:
    """ValueError unless every grouped layer of a unit gets a channel count divisible by `groups`."""
    mid_channels = out_channels // 4
    branch_channels = out_channels - in_channels if downsample else out_channels
    # The first unit of stage 2 reads only 24 channels: the paper does not group its first 1x1 conv.
    compress_groups = 1 if ignore_group else groups
    for layer, channels, layer_groups in (("compress_conv1 input", in_channels, compress_groups),
                                          ("compress_conv1 output", mid_channels, compress_groups),
                                          ("channel shuffle", mid_channels, groups),
                                          ("expand_conv3 output", branch_channels, groups)):
        if channels % layer_groups:
            raise ValueError(f"groups={groups} does not divide the {channels} channels of {layer} "
                             f"(unit {in_channels} -> {out_channels})")


def round_to_multiple(value: float, divisor: int) -> int:
    """The multiple of `divisor` nearest to `value` (halves up), at least `divisor`."""
    return max(divisor, int(value / divisor + 0.5) * divisor)


def unit_plan(stem_channels: int, stage_channels: tuple[int, ...]) -> list[list[dict]]:
    """Per stage, the constructor arguments of each unit: in/out channels, downsample, ignore_group."""
    in_channels = stem_channels
    plan = []
    for stage_index, (out_channels, units) in enumerate(zip(stage_channels, UNITS_PER_STAGE)):
        stage = []
        for unit_index in range(units):
            first = unit_index == 0
            stage.append(dict(in_channels=in_channels, out_channels=out_channels, downsample=first,
                              ignore_group=first and stage_index == 0))
            in_channels = out_channels
        plan.append(stage)
    return plan


def check_plan(groups: int, stem_channels: int, stage_channels: tuple[int, ...]) -> None:
    """ValueError unless every grouped layer of every unit gets channels divisible by `groups`."""
    for stage in unit_plan(stem_channels, stage_channels):
        for unit in stage:
            check_unit_channels(groups=groups, **unit)


def channel_plan(groups: int, width: float) -> tuple[int, tuple[int, ...], str]:
    """(stem channels, stage output channels, rule) of ShuffleNet `width`x with `groups` groups.

    The rule is "pytorchcv" (int(c * width), which reproduces pytorchcv's models and parameter
    counts) where that can be built, else "divisible" (see the module docstring).
    """
    stem = scale_channels(INIT_BLOCK_CHANNELS, width)
    stages = tuple(scale_channels(c, width) for c in STAGE_CHANNELS[groups])
    try:
        check_plan(groups, stem, stages)
        return stem, stages, "pytorchcv"
    except ValueError:
        stem = round_to_multiple(INIT_BLOCK_CHANNELS * width, groups)
        stages = tuple(round_to_multiple(c * width, 4 * groups) for c in STAGE_CHANNELS[groups])
        return stem, stages, "divisible"


def check_shufflenet_arguments(groups, width, stage_channels=None) -> tuple[float, int, tuple[int, ...]]:
    """ValueError naming the option unless ShuffleNet can be built; returns (width, stem, stage channels)."""
    if isinstance(groups, bool) or groups not in STAGE_CHANNELS:
        raise ValueError(f"groups={groups!r} is not one of ShuffleNet's {tuple(STAGE_CHANNELS)}")
    width = check_width(width)
    if stage_channels is None:
        stem, stages, _ = channel_plan(groups, width)
        return width, stem, stages
    stem = scale_channels(INIT_BLOCK_CHANNELS, width)
    if (not isinstance(stage_channels, tuple | list) or len(stage_channels) != len(UNITS_PER_STAGE)
            or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in stage_channels)):
        raise ValueError(f"stage_channels={stage_channels!r} must be three positive ints (stages 2, 3, 4)")
    try:
        check_plan(groups, stem, tuple(stage_channels))
    except ValueError as error:
        raise ValueError(f"stage_channels={tuple(stage_channels)} cannot be built with groups={groups}: "
                         f"{error}") from None
    return width, stem, tuple(stage_channels)


class ShuffleUnit(nn.Module):
    """1x1 group conv -> BN -> ReLU -> [channel shuffle + 3x3 depthwise, fused] -> BN -> 1x1 group conv -> BN,
    plus the shortcut, then ReLU. Each BN takes what follows it fused (groupconv.nn.BatchNormAct2d): its ReLU,
    and in a stride-1 unit the shortcut sum.

    A downsampling unit (stride 2) average-pools the shortcut (3x3, stride 2, pad 1) and concatenates
    it, so its main branch outputs out_channels - in_channels. The bottleneck width is out_channels // 4
    of the unit's full output, as in pytorchcv.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, downsample: bool, ignore_group: bool,
                 shuffle: bool = True):
        super().__init__()
        self.downsample = downsample
        check_unit_channels(in_channels, out_channels, groups, downsample, ignore_group)
        mid_channels = out_channels // 4
        branch_channels = out_channels - in_channels if downsample else out_channels
        compress_groups = 1 if ignore_group else groups

        self.compress_conv1 = gnn.PointwiseGroupedConv2d(in_channels, mid_channels, compress_groups, bias=False)
        self.compress_bn1 = gnn.BatchNormAct2d(mid_channels)
        self.dw_conv2 = gnn.ShuffledGroupedConv2d(mid_channels, mid_channels, 3, stride=2 if downsample else 1,
                                                  padding=1, groups=mid_channels, bias=False,
                                                  shuffle_groups=groups if shuffle else 1)
        self.dw_bn2 = gnn.BatchNormAct2d(mid_channels, apply_act=False)  # no ReLU here (paper, Sec. 3.2)
        self.expand_conv3 = gnn.PointwiseGroupedConv2d(mid_channels, branch_channels, groups, bias=False)
        self.expand_bn3 = gnn.BatchNormAct2d(branch_channels)
        if downsample:
            self.avgpool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
            self.activ = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x feeds the first conv and the shortcut: one autograd node for both sums their gradients in the conv's kernel.
        compressed, shortcut = gnn.with_shortcut(self.compress_conv1, x)
        branch = self.dw_bn2(self.dw_conv2(self.compress_bn1(compressed)))
        if self.downsample:
            # relu(cat(a, b)) = cat(relu(a), relu(b)): the branch's ReLU is fused into its BN, which writes its
            # output into the concatenation directly.
            return self.expand_bn3(self.expand_conv3(branch), concat=self.activ(self.avgpool(_poolable(shortcut))))
        return self.expand_bn3(self.expand_conv3(branch), shortcut)

    def zero_init_last(self) -> None:
        """Start a residual unit as the identity: zero scale on its last BatchNorm (Goyal et al. 2017).

        A downsampling unit concatenates its branch instead of adding it, so it keeps its initialisation.
        """
        if not self.downsample:
            nn.init.zeros_(self.expand_bn3.weight)


def _poolable(x: torch.Tensor) -> torch.Tensor:
    """x, or on CUDA in channels_last its NCHW copy: there torch's avg_pool2d backward returns wrong input gradients
    for channels_last inputs with padding (pytorch/pytorch#188344, fixed in later releases; measured on an H200 with
    torch 2.11: 0.9 relative error, float32 and float64), which silently corrupted a downsampling unit's gradients."""
    if x.is_cuda and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous()
    return x


class ShuffleInitBlock(nn.Module):
    """3x3 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool (224 -> 56); small_input: stride-1 conv, no pool."""

    def __init__(self, in_channels: int, out_channels: int, small_input: bool = False):
        super().__init__()
        self.conv = gnn.Conv2d(in_channels, out_channels, 3, stride=1 if small_input else 2, padding=1, bias=False)
        self.bn = gnn.BatchNormAct2d(out_channels)  # BN and ReLU, fused
        self.pool = nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.bn(self.conv(x)))


class ShuffleNet(nn.Module):
    """ShuffleNet v1 with `groups` in (1, 2, 3, 4, 8) and width multiplier `width` ("ShuffleNet s x").

    shuffle=False: the paper's no-shuffle ablation (same parameters, every shuffle removed).
    stage_channels: output channels of stages 2, 3, 4 instead of Table 1's (scaled by `width`); the
    stem keeps int(24 * width).
    small_input=True: for 32x32 inputs; the init block's conv has stride 1 and its max-pool is
    removed (otherwise stage 4 would see a 1x1 map); the three stages still downsample 32 -> 16 -> 8 -> 4.
    Parameters are the same as at 224. The final pool is a global average pool in both cases
    (pytorchcv's 7x7 average pool is the same thing at 224).
    """

    def __init__(self, groups: int = 3, width: float = 1.0, shuffle: bool = True, num_classes: int = 1000,
                 in_chans: int = 3, small_input: bool = False, stage_channels: tuple[int, int, int] | None = None):
        super().__init__()
        width, init_channels, stage_channels = check_shufflenet_arguments(groups, width, stage_channels)
        check_classifier_arguments(num_classes, in_chans)
        self.groups, self.width, self.shuffle = groups, width, shuffle
        self.num_classes, self.in_chans = num_classes, in_chans

        self.stage_channels = stage_channels
        self.features = nn.Sequential()
        self.features.add_module("init_block", ShuffleInitBlock(in_chans, init_channels, small_input))
        plan = unit_plan(init_channels, stage_channels)
        for stage_index, stage_plan in enumerate(plan):
            stage = nn.Sequential()
            for unit_index, unit in enumerate(stage_plan):
                stage.add_module(f"unit{unit_index + 1}", ShuffleUnit(groups=groups, shuffle=shuffle, **unit))
            self.features.add_module(f"stage{stage_index + 1}", stage)
        self.features.add_module("final_pool", nn.AdaptiveAvgPool2d(1))
        self.output = nn.Linear(plan[-1][-1]["out_channels"], num_classes)
        self._init_parameters()

    def _init_parameters(self) -> None:
        # pytorchcv's initialisation: Kaiming-uniform convs; BN and the FC keep torch's defaults.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def zero_init_last(self) -> None:
        """Every residual unit starts as the identity (see ShuffleUnit.zero_init_last)."""
        zero_init_last_blocks(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.flatten(self.features(x), 1))


def shufflenet(groups: int = 3, width: float = 1.0, **kwargs) -> ShuffleNet:
    """ShuffleNet v1 for any (groups, width); the registered names are the combinations that can be built."""
    return ShuffleNet(groups=groups, width=width, **kwargs)


def _shufflenet_builder(groups: int, width: float):
    def builder(**kwargs) -> ShuffleNet:
        return ShuffleNet(groups=groups, width=width, **kwargs)

    builder.__name__ = builder.__qualname__ = f"shufflenet_g{groups}_{width_suffix(width)}"
    builder.__doc__ = f"ShuffleNet {width:g}x (g={groups}), arXiv 1707.01083; options: see ShuffleNet."
    return builder


# Every (groups, width) of the paper's Tables 1 and 2; see channel_plan for the channel counts.
for _groups in STAGE_CHANNELS:
    for _width in WIDTHS:
        register_model(_shufflenet_builder(_groups, _width), small_input=True)
