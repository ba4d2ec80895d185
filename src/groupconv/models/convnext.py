"""ConvNeXt (Liu, Mao, Wu, Feichtenhofer, Darrell, Xie 2022, "A ConvNet for the 2020s", arXiv 2201.03545): a 4x4
stride-4 patch stem, four stages of blocks (7x7 depthwise conv -> LayerNorm -> 1x1 to 4C -> GELU -> 1x1 to C ->
layer scale, plus the input), a LayerNorm and 2x2 stride-2 conv between stages, pooled LayerNorm head.

Module names, order and parameter shapes are timm's ConvNeXt (stem.0/stem.1, stages.{i}.downsample.0/.1,
stages.{i}.blocks.{j}.{gamma, conv_dw, norm, mlp.fc1, mlp.fc2}, head.norm, head.fc), so timm's convnext_* weights
(also the authors' checkpoints, which timm renames to these keys) load with strict=True. LayerNorm works as in the
authors' code: a block permutes to channels-last (N, H, W, C), normalises over C with torch.nn.LayerNorm and runs its
MLP as Linear layers there; elsewhere (stem, downsampling, head) LayerNorm2d does the same permute, normalise,
permute back. ConvNeXt-Atto and -Nano (timm's smaller models, not in the paper) run the MLP as 1x1 convs in
(N, C, H, W) with LayerNorm2d, as timm builds them (conv_mlp=True: 4-D fc weights), so that their weights load too.

Checked (tests/test_models_modern.py): 28,589,128 parameters for ConvNeXt-T (the paper's 28M, timm's count) and 4.5 G
multiply-adds at 224x224 (the paper's 4.5 GFLOPs, timm's 4.47 GMACs); Atto 3.7 M / 0.55 G and Nano 15.6 M / 2.46 G
as timm publishes them; timm's state_dict keys and shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import nn as gnn
from .common import check_classifier_arguments, zero_init_last_blocks
from .registry import Recipe, register_model

# Liu et al. 2022 (Sec. 2, appendix A.1): AdamW, weight decay 0.05, label smoothing 0.1 (the library's default too),
# warm-up then cosine. The paper's peak lr 4e-3 is for batches of 4,096; at groupconv train's batch 64 the recipe takes
# AdamW's usual 1e-3 (measured on digits: both halve the loss on one batch in 30 steps; SGD at the library's lr 0.1
# diverges, 2.2 -> 3.7 for ConvNeXt-Nano).
RECIPE = Recipe({"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05},
                "Liu et al. 2022, appendix A.1: AdamW, weight decay 0.05; lr 1e-3 in place of the paper's 4e-3 for "
                "batches of 4,096 (measured on digits at batch 64)")

LAYER_NORM_EPS = 1e-6  # the authors' and timm's


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor, computed channels-last (timm's LayerNorm2d)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (timm's Mlp): Linear layers on channels-last tensors, or 1x1 convs with `conv_mlp`."""

    def __init__(self, channels: int, hidden: int, conv_mlp: bool):
        super().__init__()
        if conv_mlp:
            self.fc1, self.fc2 = gnn.Conv2d(channels, hidden, 1), gnn.Conv2d(hidden, channels, 1)
        else:
            self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """x + gamma * mlp(norm(dwconv7x7(x))), the norm and MLP channels-last unless `conv_mlp` (paper Fig. 4)."""

    def __init__(self, channels: int, conv_mlp: bool, layer_scale_init: float = 1e-6, mlp_ratio: int = 4):
        super().__init__()
        self.conv_mlp = conv_mlp
        self.gamma = nn.Parameter(torch.full((channels,), layer_scale_init))
        self.conv_dw = gnn.DepthwiseConv2d(channels, 7, padding=3)
        self.norm = LayerNorm2d(channels) if conv_mlp else nn.LayerNorm(channels, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(channels, mlp_ratio * channels, conv_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv_dw(x)
        if self.conv_mlp:
            branch = self.mlp(self.norm(branch))
        else:
            branch = self.mlp(self.norm(branch.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x + branch * self.gamma.reshape(1, -1, 1, 1)

    def zero_init_last(self) -> None:
        """Start the block as the identity: zero layer scale (the authors start it near zero, at 1e-6)."""
        nn.init.zeros_(self.gamma)


class ConvNeXtStage(nn.Module):
    """[LayerNorm2d -> 2x2 stride-2 conv, unless first] then `depth` blocks (timm's ConvNeXtStage)."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, conv_mlp: bool, downsample: bool):
        super().__init__()
        self.downsample = (nn.Sequential(LayerNorm2d(in_channels), gnn.Conv2d(in_channels, out_channels, 2, stride=2))
                           if downsample else nn.Identity())
        self.blocks = nn.Sequential(*[ConvNeXtBlock(out_channels, conv_mlp) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ClassifierHead(nn.Module):
    """Global average pool -> LayerNorm2d -> FC (timm's NormMlpClassifierHead without a hidden layer)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm = LayerNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.norm(x.mean((2, 3), keepdim=True)), 1))


class ConvNeXt(nn.Module):
    """ConvNeXt with `depths` blocks and `dims` channels per stage; `conv_mlp` as timm's (see the module docstring).

    small_input=True: for 32x32 inputs, the 4x4 stem conv has stride 2 and padding 1 instead of stride 4 (its weight
    keeps its shape), so the stages see 16, 8, 4, 2 instead of 56, 28, 14, 7; parameters and state_dict unchanged.
    """

    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...], conv_mlp: bool = False,
                 num_classes: int = 1000, in_chans: int = 3, small_input: bool = False):
        super().__init__()
        check_classifier_arguments(num_classes, in_chans)
        if len(depths) != len(dims):
            raise ValueError(f"depths={depths} and dims={dims} must give one depth per stage width")
        self.num_classes, self.in_chans = num_classes, in_chans
        stem_conv = (gnn.Conv2d(in_chans, dims[0], 4, stride=2, padding=1) if small_input
                     else gnn.Conv2d(in_chans, dims[0], 4, stride=4))
        self.stem = nn.Sequential(stem_conv, LayerNorm2d(dims[0]))
        self.stages = nn.Sequential(*[
            ConvNeXtStage(dims[max(index - 1, 0)], dims[index], depth, conv_mlp, downsample=index > 0)
            for index, depth in enumerate(depths)])
        self.head = ClassifierHead(dims[-1], num_classes)
        self._init_parameters()

    def _init_parameters(self) -> None:
        # The authors' (and timm's): truncated normal std 0.02 for convs and linear layers, zero biases.
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def zero_init_last(self) -> None:
        """Every block starts as the identity (see ConvNeXtBlock.zero_init_last)."""
        zero_init_last_blocks(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@register_model(small_input=True, recipe=RECIPE)
def convnext_atto(**kwargs) -> ConvNeXt:
    """ConvNeXt-Atto (timm's convnext_atto: depths 2-2-6-2, widths 40-320, 1x1-conv MLP)."""
    return ConvNeXt((2, 2, 6, 2), (40, 80, 160, 320), conv_mlp=True, **kwargs)


@register_model(small_input=True, recipe=RECIPE)
def convnext_nano(**kwargs) -> ConvNeXt:
    """ConvNeXt-Nano (timm's convnext_nano: depths 2-2-8-2, widths 80-640, 1x1-conv MLP)."""
    return ConvNeXt((2, 2, 8, 2), (80, 160, 320, 640), conv_mlp=True, **kwargs)


@register_model(small_input=True, recipe=RECIPE)
def convnext_tiny(**kwargs) -> ConvNeXt:
    """ConvNeXt-T, the paper's Sec. 2 / Table 9 model (depths 3-3-9-3, widths 96-768)."""
    return ConvNeXt((3, 3, 9, 3), (96, 192, 384, 768), **kwargs)
