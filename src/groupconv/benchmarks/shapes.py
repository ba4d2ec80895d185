"""The model zoo's grouped, depthwise and pointwise-grouped conv shapes, taken from the models by a forward
pass on the meta device (not typed by hand): what the layer benchmarks time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import models
from .. import nn as gnn
from ..analysis.roofline import MachineCeilings


# The networks whose layer shapes the benchmarks time.
ZOO_MODELS = ("shufflenet_g1_w1", "shufflenet_g3_w1", "shufflenet_g8_w1", "resnext29_32x4d", "mobilenet_w1",
              "resnext50_32x4d")
BYTES_PER_ELEMENT = 4  # float32


@dataclass(frozen=True)
class LayerShape:
    """One grouped conv of a model, as the benchmark times it (batch chosen at run time)."""

    model: str
    layer: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    shuffle_groups: int
    height: int
    width: int

    @property
    def kind(self) -> str:
        if self.groups == self.in_channels:
            return "depthwise"
        return "pointwise-grouped" if self.kernel_size == (1, 1) else "grouped"

    def label(self) -> str:
        k = "x".join(map(str, self.kernel_size))
        shuffle = f" shuffle{self.shuffle_groups}" if self.shuffle_groups > 1 else ""
        stride = f" s{self.stride[0]}" if self.stride != (1, 1) else ""
        return (f"{self.kind} {k} {self.in_channels}->{self.out_channels} g{self.groups}{shuffle}{stride} "
                f"{self.height}x{self.width}")

    def key(self) -> tuple:
        return (self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.groups,
                self.shuffle_groups, self.height, self.width)

    def output_size(self) -> tuple[int, int]:
        return tuple((size + 2 * p - k) // s + 1 for size, p, k, s in
                     zip((self.height, self.width), self.padding, self.kernel_size, self.stride))

    def multiply_adds(self, batch: int) -> int:
        out_h, out_w = self.output_size()
        return batch * out_h * out_w * self.out_channels * (self.in_channels // self.groups) * math.prod(
            self.kernel_size)

    def traffic_bytes(self, batch: int) -> int:
        """Forward memory traffic (ShuffleNet V2's MAC): input + output + weights, read or written once."""
        out_h, out_w = self.output_size()
        elements = (batch * self.in_channels * self.height * self.width + batch * self.out_channels * out_h * out_w
                    + self.out_channels * (self.in_channels // self.groups) * math.prod(self.kernel_size))
        return elements * BYTES_PER_ELEMENT

    def floor_seconds(self, batch: int, ceilings: MachineCeilings, backward: bool) -> float:
        # Backward = backward-input + backward-weight, each as costly as the forward in FLOPs and traffic.
        passes = 3 if backward else 1
        return passes * ceilings.seconds(2 * self.multiply_adds(batch), self.traffic_bytes(batch))

    def groupconv_layer(self) -> torch.nn.Module:
        return gnn.ShuffledGroupedConv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                                         self.padding, groups=self.groups, bias=False,
                                         shuffle_groups=self.shuffle_groups)

    def torch_layer(self, like: torch.nn.Module) -> torch.nn.Module:
        """The same layer from torch.nn (a ChannelShuffle module first where the layer reads shuffled), same weight."""
        conv = torch.nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                               groups=self.groups, bias=False)
        conv.weight.data.copy_(like.weight.data)
        if self.shuffle_groups == 1:
            return conv
        return torch.nn.Sequential(torch.nn.ChannelShuffle(self.shuffle_groups), conv)


def zoo_layer_shapes(model_names=ZOO_MODELS, kinds=("grouped", "depthwise", "pointwise-grouped")) -> list[LayerShape]:
    """The distinct grouped convs (groups > 1) of the models, in order of first appearance, at their input size."""
    shapes: dict[tuple, LayerShape] = {}
    for name in model_names:
        with torch.device("meta"):
            model = models.create_model(name).eval()
            x = torch.empty(1, *models.model_entry(name).input_size)
        hooks = []
        for layer_name, module in model.named_modules():
            if isinstance(module, gnn.Conv2d) and module.groups > 1:
                def record(module, inputs, output, layer_name=layer_name):
                    shape = LayerShape(name, layer_name, module.in_channels, module.out_channels,
                                       tuple(module.kernel_size), tuple(module.stride), tuple(module.padding),
                                       module.groups, getattr(module, "shuffle_groups", 1), *inputs[0].shape[2:])
                    if shape.kind in kinds:
                        shapes.setdefault(shape.key(), shape)
                hooks.append(module.register_forward_hook(record))
        with torch.no_grad():
            model(x)
        for hook in hooks:
            hook.remove()
    return list(shapes.values())
