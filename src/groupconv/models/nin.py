"""Network in Network for CIFAR-10 (Lin, Chen, Yan 2014, arXiv 1312.4400) and its root-filter-group variants
(Ioannou, Robertson, Cipolla, Criminisi 2017, "Deep Roots: Improving CNN Efficiency with Hierarchical
Filter Groups", arXiv 1605.06489).

The network is the Caffe model-zoo NiN for CIFAR-10 that both papers use: three mlpconv blocks
(a spatial conv followed by two 1x1 "cccp" convs, each with bias and ReLU; no BN), 3x3 stride-2
max-pool then dropout after the first, 3x3 stride-2 average pool then dropout after the second,
and a global average pool over the ten maps of the last one:

  conv1 5x5 192 (pad 2), cccp1 160, cccp2 96, max-pool, dropout,
  conv2 5x5 192 (pad 2), cccp3 192, cccp4 192, avg-pool, dropout,
  conv3 3x3 192 (pad 1), cccp5 192, cccp6 10, global average pool.

Caffe's pooling rounds the output size up (32 -> 16 -> 8); torch's ceil_mode=True does the same,
and for these sizes its average pool divides by the same window counts as Caffe's. As in the
Caffe model the last cccp layer is followed by a ReLU before the global pool. Deep Roots' root-N
model gives conv2 N filter groups and conv3 N/2; nothing else changes (the 1x1 layers stay dense
and mix the groups, which is what makes the "root" hierarchy).

Checked (tests/test_models.py): parameter counts equal models.md (966,986 for NiN, 455,498 for
root-4; with biases, no BN). Padding does not change these counts; the paddings above are the
Caffe model's, which keep 32x32 through every conv.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .. import nn as gnn
from .common import check_classifier_arguments, check_positive_int
from .registry import Recipe, register_model

INITS = ("caffe", "kaiming")  # see NiN._init_parameters

# The solver published with the Caffe model (Lin et al. 2014) is SGD at lr 0.1, momentum 0.9, weight decay 1e-4, from
# the Gaussian std-0.05 start. On digits it stays at chance (measured in docs/training.md): the final ReLU, on the
# class maps, goes dead with both the Caffe and He starts at lr 0.1 and 0.01. What the recipe changes: He
# initialisation with the class maps starting at bias 1 (inside the ReLU's linear range, as AlexNet's biases of 1),
# and AdamW at lr 4e-3 with the gradient norm clipped to 1 in place of SGD. Kept: weight decay 1e-4, no label
# smoothing, the architecture. Measured on digits: at AdamW's usual lr 1e-3 the network sits near chance for its
# first dozen steps (with its two dropouts) and root-8 reached 90.56% in 10 epochs; at 3e-3 without clipping the loss
# on one batch jumps back up after its first fall (2.06 -> 2.52); at 4e-3 with clipping root-8 reaches 98.89% in 10
# epochs.
RECIPE = Recipe({"optimizer": "adamw", "lr": 4e-3, "weight_decay": 1e-4, "label_smoothing": 0.0, "clip_grad": 1.0,
                 "model_kwargs": {"init": "kaiming"}},
                "Lin et al. 2014's weight decay 1e-4; unlike the paper's SGD at lr 0.1 from a Gaussian start (at "
                "chance on digits: the class maps' ReLU goes dead), AdamW at lr 4e-3 with the gradient norm clipped "
                "to 1 (measured on digits) from He initialisation, the class maps starting at bias 1")


class NiN(nn.Module):
    """NiN for 32x32 inputs; `conv2_groups` and `conv3_groups` are Deep Roots' root filter groups (1, 1 = NiN)."""

    def __init__(self, conv2_groups: int = 1, conv3_groups: int = 1, num_classes: int = 10, in_chans: int = 3,
                 dropout: float = 0.5, init: str = "caffe"):
        super().__init__()
        check_classifier_arguments(num_classes, in_chans)
        if init not in INITS:
            raise ValueError(f"init={init!r}: choose from {INITS}")
        for name, groups, channels in (("conv2_groups", conv2_groups, (96, 192)),
                                       ("conv3_groups", conv3_groups, (192, 192))):
            check_positive_int(groups, name)
            if any(c % groups for c in channels):
                raise ValueError(f"{name}={groups} must divide the layer's {channels[0]} input and "
                                 f"{channels[1]} output channels")
        self.conv2_groups, self.conv3_groups = conv2_groups, conv3_groups
        self.num_classes, self.in_chans = num_classes, in_chans

        def conv_relu(name, in_channels, out_channels, kernel_size=1, groups=1):
            padding = kernel_size // 2
            return [(name, gnn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, groups=groups)),
                    (f"relu_{name}", nn.ReLU(inplace=True))]

        self.features = nn.Sequential(OrderedDict([
            *conv_relu("conv1", in_chans, 192, 5),
            *conv_relu("cccp1", 192, 160),
            *conv_relu("cccp2", 160, 96),
            ("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
            ("drop1", nn.Dropout(dropout)),
            *conv_relu("conv2", 96, 192, 5, conv2_groups),
            *conv_relu("cccp3", 192, 192),
            *conv_relu("cccp4", 192, 192),
            ("pool2", nn.AvgPool2d(3, stride=2, ceil_mode=True)),
            ("drop2", nn.Dropout(dropout)),
            *conv_relu("conv3", 192, 192, 3, conv3_groups),
            *conv_relu("cccp5", 192, 192),
            *conv_relu("cccp6", 192, num_classes),
            ("pool3", nn.AdaptiveAvgPool2d(1)),
        ]))
        self._init_parameters(init)

    def _init_parameters(self, init: str) -> None:
        # "caffe": the initialisation of the widely used PyTorch port of the Caffe model (jiecaoyu/pytorch-nin-cifar10):
        # Gaussian weights with std 0.05, zero biases (the schedule published with it assumes this start).
        # "kaiming": He et al. 2015's normal start for ReLU layers (std sqrt(2/fan_in)), zero biases; the last cccp
        # layer (the class maps) at std 0.01 with bias 1, so that the first logits are nearly equal and sit inside
        # the final ReLU's linear range (a class map below zero there never gets a gradient again).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if init == "caffe":
                    nn.init.normal_(module.weight, std=0.05)
                    nn.init.zeros_(module.bias)
                elif module is self.features.cccp6:
                    nn.init.normal_(module.weight, std=0.01)
                    nn.init.ones_(module.bias)
                else:
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)


def _root(filter_groups: int):
    def builder(**kwargs) -> NiN:
        return NiN(conv2_groups=filter_groups, conv3_groups=filter_groups // 2, **kwargs)

    builder.__name__ = builder.__qualname__ = f"nin_root{filter_groups}"
    builder.__doc__ = (f"Deep Roots' root-{filter_groups} NiN for CIFAR-10: conv2 in {filter_groups} filter groups, "
                       f"conv3 in {filter_groups // 2}.")
    return builder


@register_model(input_size=(3, 32, 32), recipe=RECIPE)
def nin_cifar(**kwargs) -> NiN:
    """The original NiN for CIFAR-10."""
    return NiN(**kwargs)


for _filter_groups in (2, 4, 8, 16):
    register_model(_root(_filter_groups), input_size=(3, 32, 32), recipe=RECIPE)
