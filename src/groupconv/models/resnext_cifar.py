"""ResNeXt-29 for CIFAR (Xie et al. 2017, "Aggregated Residual Transformations for Deep Neural Networks",
arXiv 1611.05431, Sec. 5.3), in any of the paper's three equivalent block forms (its Fig. 3):

  (a) aggregated transformations: C separate paths, each 1x1 -> 3x3 -> 1x1, their outputs summed;
  (b) early concatenation: C paths of 1x1 -> 3x3, concatenated, then one 1x1;
  (c) grouped convolution: one 1x1, one 3x3 conv with C groups, one 1x1.

The architecture is prlz77/ResNeXt.pytorch's (the CIFAR code this family reproduces): a 3x3 stem to 64 channels, three stages
of depth // 9 blocks with outputs [64, 64 wf, 128 wf, 256 wf] (widen factor wf = 4), block width
D = C * int(base_width * out / (wf * 64)), a 1x1 projection shortcut + BN where a block changes
the channel count (stride 2 on it, and on the 3x3 conv, at stages 2 and 3), global average pool
(prlz77's 8x8 pool at 32x32), FC. Form (c) has prlz77's module names, so its checkpoints load
with strict=True.

Every BN is per channel, so a BN after concatenated paths is the per-path BNs side by side, and in
form (a) the BN that follows the 1x1 expand in (c) follows the sum of the paths. With that, the
three forms compute the same function of the same weights: `load_grouped_state_dict` loads
form-(c) weights into a model of any form (splitting the grouped 3x3 conv into per-path convs, and
in form (a) the expand conv into per-path column blocks), and `grouped_state_dict` goes back.

Checked (tests/test_models.py): parameter counts equal models.md (34,426,698 / 68,155,210 /
4,775,754); forms (a), (b), (c) give the same outputs and gradients for shared weights.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .. import nn as gnn
from .common import check_classifier_arguments, check_positive_int, zero_init_last_blocks
from .registry import Recipe, register_model

# Xie et al. 2017, Sec. 5.3 (CIFAR, following Zagoruyko and Komodakis 2016): SGD, lr 0.1 (batch 128), momentum 0.9,
# weight decay 5e-4, the library's defaults. What makes it train: groupconv train starts every block as its shortcut
# (zero_init_last, Goyal et al. 2017); from prlz77's start alone the loss on one batch of digits diverges (3.8 -> 5.3
# in 30 steps, and one epoch of groupconv train ended at a test loss of 22,809).
RECIPE = Recipe({"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
                "Xie et al. 2017, Sec. 5.3: SGD, lr 0.1, momentum 0.9, weight decay 5e-4; the residual branches start "
                "at zero (Goyal et al. 2017)")

BLOCK_FORMS = ("a", "b", "c")


class ResNeXtPath(nn.Module):
    """One of the C paths of forms (a) and (b): 1x1 reduce -> BN/ReLU -> 3x3 -> BN/ReLU [-> 1x1 expand in (a)]."""

    def __init__(self, in_channels: int, path_width: int, out_channels: int | None, stride: int):
        super().__init__()
        self.conv_reduce = gnn.Conv2d(in_channels, path_width, 1, bias=False)
        self.bn_reduce = gnn.BatchNormAct2d(path_width)
        self.conv_conv = gnn.Conv2d(path_width, path_width, 3, stride=stride, padding=1, bias=False)
        self.bn = gnn.BatchNormAct2d(path_width)
        self.conv_expand = None if out_channels is None else gnn.Conv2d(path_width, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv_conv(self.bn_reduce(self.conv_reduce(x))))
        return x if self.conv_expand is None else self.conv_expand(x)


class ResNeXtBlock(nn.Module):
    """What the three block forms share: the shortcut, the last BN with the residual sum and ReLU fused into it
    (bn_expand, a groupconv.nn.BatchNormAct2d), and conversion from/to form (c)'s weights.

    Subclasses build the residual branch up to that BN (`transform`) and name the layers they split into paths.
    """

    block_form: str
    # Layers of form (c) that this form holds once per path, and the weight axis their paths are cut along.
    path_layers: dict[str, int] = {}

    def __init__(self, in_channels: int, out_channels: int, stride: int, cardinality: int, width: int):
        super().__init__()
        self.cardinality = cardinality
        self.shortcut = nn.Sequential()
        if in_channels != out_channels:
            self.shortcut.add_module("shortcut_conv", gnn.Conv2d(in_channels, out_channels, 1, stride=stride,
                                                                 bias=False))
            self.shortcut.add_module("shortcut_bn", nn.BatchNorm2d(out_channels))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch before its last BN."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_expand(self.transform(x), self.shortcut(x))

    def zero_init_last(self) -> None:
        """Start the residual branch at zero (Goyal et al. 2017): zero scale on bn_expand, the same in every block
        form, so the block begins as its (projected) shortcut."""
        nn.init.zeros_(self.bn_expand.weight)

    def grouped_state_dict(self) -> dict[str, torch.Tensor]:
        """This block's weights and buffers as form (c) names and shapes them: per-path tensors concatenated."""
        state = OrderedDict((key, value) for key, value in self.state_dict().items() if not key.startswith("paths."))
        for layer, axis in self.path_layers.items():
            path_states = [getattr(path, layer).state_dict() for path in self.paths]
            for key in path_states[0]:
                parts = [path_state[key] for path_state in path_states]
                # num_batches_tracked is one counter per BN, equal in every path.
                state[f"{layer}.{key}"] = parts[0] if parts[0].dim() == 0 else torch.cat(parts, dim=axis)
        return state

    def load_grouped_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load form (c)'s weights and buffers (strict): path i gets the i-th of C equal slices of each split layer."""
        own_state = OrderedDict()
        for key, value in state.items():
            layer, _, name = key.partition(".")
            if layer not in self.path_layers:
                own_state[key] = value
                continue
            parts = [value] * self.cardinality if value.dim() == 0 else value.chunk(self.cardinality,
                                                                                     dim=self.path_layers[layer])
            for path_index, part in enumerate(parts):
                own_state[f"paths.{path_index}.{layer}.{name}"] = part
        self.load_state_dict(own_state, strict=True)


class GroupedConvBlock(ResNeXtBlock):
    """Form (c), prlz77's ResNeXtBottleneck: the C paths are one grouped 3x3 conv."""

    block_form = "c"
    path_layers = {}

    def __init__(self, in_channels, out_channels, stride, cardinality, width):
        super().__init__(in_channels, out_channels, stride, cardinality, width)
        self.conv_reduce = gnn.Conv2d(in_channels, width, 1, bias=False)
        self.bn_reduce = gnn.BatchNormAct2d(width)
        self.conv_conv = gnn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn = gnn.BatchNormAct2d(width)
        self.conv_expand = gnn.Conv2d(width, out_channels, 1, bias=False)
        self.bn_expand = gnn.BatchNormAct2d(out_channels)

    def transform(self, x):
        return self.conv_expand(self.bn(self.conv_conv(self.bn_reduce(self.conv_reduce(x)))))


class EarlyConcatenationBlock(ResNeXtBlock):
    """Form (b): C paths of 1x1 -> 3x3, concatenated, then one 1x1 expand over all of them."""

    block_form = "b"
    path_layers = {"conv_reduce": 0, "bn_reduce": 0, "conv_conv": 0, "bn": 0}

    def __init__(self, in_channels, out_channels, stride, cardinality, width):
        super().__init__(in_channels, out_channels, stride, cardinality, width)
        path_width = width // cardinality
        self.paths = nn.ModuleList(ResNeXtPath(in_channels, path_width, None, stride) for _ in range(cardinality))
        self.conv_expand = gnn.Conv2d(width, out_channels, 1, bias=False)
        self.bn_expand = gnn.BatchNormAct2d(out_channels)

    def transform(self, x):
        return self.conv_expand(torch.cat([path(x) for path in self.paths], dim=1))


class AggregatedTransformBlock(ResNeXtBlock):
    """Form (a): C paths of 1x1 -> 3x3 -> 1x1, summed; the BN of (c)'s expand conv follows the sum."""

    block_form = "a"
    # The expand conv of path i holds the columns of (c)'s expand weight that read path i's channels.
    path_layers = {"conv_reduce": 0, "bn_reduce": 0, "conv_conv": 0, "bn": 0, "conv_expand": 1}

    def __init__(self, in_channels, out_channels, stride, cardinality, width):
        super().__init__(in_channels, out_channels, stride, cardinality, width)
        path_width = width // cardinality
        self.paths = nn.ModuleList(ResNeXtPath(in_channels, path_width, out_channels, stride)
                                   for _ in range(cardinality))
        self.bn_expand = gnn.BatchNormAct2d(out_channels)

    def transform(self, x):
        total = self.paths[0](x)
        for path in self.paths[1:]:
            total = total + path(x)
        return total


BLOCK_CLASSES = {cls.block_form: cls for cls in (AggregatedTransformBlock, EarlyConcatenationBlock,
                                                  GroupedConvBlock)}


class CifarResNeXt(nn.Module):
    """ResNeXt-`depth` for 32x32 inputs with `cardinality` paths of `base_width` channels at the first stage.

    `block_form` in ("a", "b", "c") picks the block form; all three have the same parameter count and,
    for weights converted with load_grouped_state_dict, the same outputs.
    """

    def __init__(self, cardinality: int, base_width: int, depth: int = 29, widen_factor: int = 4,
                 block_form: str = "c", num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        check_classifier_arguments(num_classes, in_chans)
        for name, value in (("cardinality", cardinality), ("base_width", base_width), ("depth", depth),
                            ("widen_factor", widen_factor)):
            check_positive_int(value, name)
        if (depth - 2) % 9 != 0:
            raise ValueError(f"depth={depth} must be 9 n + 2 (three stages of n blocks of 3 layers, stem and FC)")
        if block_form not in BLOCK_CLASSES:
            raise ValueError(f"block_form={block_form!r} is not one of ResNeXt's block forms {BLOCK_FORMS}")
        self.cardinality, self.base_width, self.depth = cardinality, base_width, depth
        self.widen_factor, self.block_form = widen_factor, block_form
        self.num_classes, self.in_chans = num_classes, in_chans
        stages = (64, 64 * widen_factor, 128 * widen_factor, 256 * widen_factor)

        self.conv_1_3x3 = gnn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        self.bn_1 = gnn.BatchNormAct2d(64)
        for index, stride in enumerate((1, 2, 2)):
            name = f"stage_{index + 1}"
            self.add_module(name, self._make_stage(name, stages[index], stages[index + 1], stride))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(stages[3], num_classes)
        self._init_parameters()

    def _make_stage(self, name: str, in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        block_class = BLOCK_CLASSES[self.block_form]
        width = self.cardinality * int(self.base_width * out_channels / (self.widen_factor * 64))
        stage = nn.Sequential()
        for index in range((self.depth - 2) // 9):
            first = index == 0
            stage.add_module(f"{name}_bottleneck_{index}",
                             block_class(in_channels if first else out_channels, out_channels, stride if first else 1,
                                         self.cardinality, width))
        return stage

    def _init_parameters(self) -> None:
        # prlz77's initialisation: Kaiming-normal fan_out convs, BN 1/0, Kaiming-normal FC with zero bias.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def zero_init_last(self) -> None:
        """Every block starts as its shortcut (see ResNeXtBlock.zero_init_last)."""
        zero_init_last_blocks(self)

    def blocks(self) -> list[tuple[str, ResNeXtBlock]]:
        return [(name, module) for name, module in self.named_modules() if isinstance(module, ResNeXtBlock)]

    def grouped_state_dict(self) -> dict[str, torch.Tensor]:
        """The state_dict this model would have in form (c) (prlz77's names): loadable by any form."""
        state = OrderedDict()
        block_prefixes = tuple(f"{name}." for name, _ in self.blocks())
        for key, value in self.state_dict().items():
            if not key.startswith(block_prefixes):
                state[key] = value
        for name, block in self.blocks():
            state.update((f"{name}.{key}", value) for key, value in block.grouped_state_dict().items())
        return state

    def load_grouped_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a form-(c) state_dict (strict) into this model, whatever its block form."""
        remaining = OrderedDict(state)
        for name, block in self.blocks():
            prefix = f"{name}."
            block_state = OrderedDict((key[len(prefix):], remaining.pop(key)) for key in list(remaining)
                                      if key.startswith(prefix))
            block.load_grouped_state_dict(block_state)
        block_prefixes = tuple(f"{name}." for name, _ in self.blocks())
        missing, unexpected = self.load_state_dict(remaining, strict=False)
        missing = [key for key in missing if not key.startswith(block_prefixes)]
        if missing or unexpected:
            raise RuntimeError(f"load_grouped_state_dict: missing keys {missing}, unexpected keys {unexpected}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_1(self.conv_1_3x3(x))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def convert_block_form(model: CifarResNeXt, block_form: str) -> CifarResNeXt:
    """A copy of `model` in another block form, with the same weights, buffers and training mode."""
    if not isinstance(model, CifarResNeXt):
        raise TypeError(f"model must be a CifarResNeXt, got {type(model).__name__}")
    parameter = next(model.parameters())
    with torch.device(parameter.device):
        converted = CifarResNeXt(model.cardinality, model.base_width, model.depth, model.widen_factor, block_form,
                                 model.num_classes, model.in_chans).to(parameter.dtype)
    converted.load_grouped_state_dict(model.grouped_state_dict())
    return converted.train(model.training)


@register_model(input_size=(3, 32, 32), recipe=RECIPE)
def resnext29_8x64d(**kwargs) -> CifarResNeXt:
    """ResNeXt-29 (8x64d), CIFAR (paper Table 7)."""
    return CifarResNeXt(cardinality=8, base_width=64, **kwargs)


@register_model(input_size=(3, 32, 32), recipe=RECIPE)
def resnext29_16x64d(**kwargs) -> CifarResNeXt:
    """ResNeXt-29 (16x64d), CIFAR (paper Table 7)."""
    return CifarResNeXt(cardinality=16, base_width=64, **kwargs)


@register_model(input_size=(3, 32, 32), recipe=RECIPE)
def resnext29_32x4d(**kwargs) -> CifarResNeXt:
    """ResNeXt-29 (32x4d), CIFAR: the small member of the family."""
    return CifarResNeXt(cardinality=32, base_width=4, **kwargs)
