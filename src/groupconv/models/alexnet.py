"""AlexNet (Krizhevsky, Sutskever, Hinton 2012, "ImageNet Classification with Deep Convolutional Neural
Networks"), with the paper's filter groups: the origin of grouped convolution.

Section 3.5 and Fig. 2 of the paper: 96 (11x11, stride 4) - 256 (5x5) - 384 (3x3) - 384 (3x3) -
256 (3x3) conv layers, each followed by a ReLU; local response normalisation (k=2, n=5, alpha=1e-4,
beta=0.75) after conv1 and conv2; 3x3 stride-2 max-pooling after both normalisations and after
conv5; FC 4096 - 4096 - 1000 with dropout 0.5 on the two hidden layers. The two GPUs of the paper
are two filter groups on conv2, conv4 and conv5 (their kernels see only the maps on their own GPU);
conv1 sees the whole image and conv3 and the FC layers read both GPUs, so they are dense. Input
227x227 (the paper's "224" does not give its 55x55 maps). Biases everywhere, no BN.

`alexnet_g1` and `alexnet_g4` are the filter-group ablation of the paper's Sec. 3.5 / Ioannou's
tutorial: the same network with 1 or 4 groups on those three layers.

init="paper" (the default) follows Sec. 5: weights N(0, 0.01); biases 1 on conv2, conv4, conv5 and
the two hidden FC layers (so their ReLUs start with positive inputs), 0 elsewhere. That start was
made for raw-pixel inputs (standard deviation about 60); on standardised inputs the image barely
reaches fc6 next to the biases of 1 and, with the paper's lr 0.01, training diverges on digits
(measured: loss 2.9 -> 32 in six steps on one batch). init="kaiming" is the start the default
training recipe uses: He et al. 2015's normal initialisation for the ReLU layers (std sqrt(2/fan_in)),
biases 0, and fc8 kept at the paper's N(0, 0.01) so that the first logits are near zero.

Checked (tests/test_models.py): parameter counts equal models.md (60,965,224 grouped, 62,378,344
ungrouped).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .. import nn as gnn
from .common import check_classifier_arguments, check_positive_int
from .registry import Recipe, register_model

# The channels each grouped layer reads and writes: the groups must divide all of them.
GROUPED_LAYER_CHANNELS = (96, 256, 384)

INITS = ("paper", "kaiming")  # see the module's docstring

# Sec. 5 of the paper: SGD with momentum 0.9, weight decay 5e-4, lr 0.01, no label smoothing. What differs, and why
# (docs/training.md has the measurements): He initialisation instead of N(0, 0.01), since the paper's start
# diverges on standardised inputs.
RECIPE = Recipe({"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "label_smoothing": 0.0,
                 "model_kwargs": {"init": "kaiming"}},
                "Krizhevsky et al. 2012, Sec. 5: SGD, lr 0.01, momentum 0.9, weight decay 5e-4; unlike the paper, "
                "He initialisation (the paper's N(0, 0.01) start diverges on standardised digits)")


class AlexNet(nn.Module):
    """AlexNet with `groups` filter groups on conv2, conv4 and conv5 (2 in the paper).

    small_input=True: for 32x32 inputs, conv1 has stride 1 and padding 5 (kernel kept, 32 -> 32), so
    the three max-pools give 15 -> 7 -> 3. The adaptive average pool before the classifier (as in
    torchvision, an identity on the 6x6 maps of a 227 input) brings 3x3 back to 6x6, so the
    classifier and the parameter count are those of the 227 model.
    """

    def __init__(self, groups: int = 2, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5,
                 small_input: bool = False, init: str = "paper"):
        super().__init__()
        check_classifier_arguments(num_classes, in_chans)
        if init not in INITS:
            raise ValueError(f"init={init!r}: choose from {INITS}")
        check_positive_int(groups, "groups")
        if any(channels % groups for channels in GROUPED_LAYER_CHANNELS):
            raise ValueError(f"groups={groups} must divide AlexNet's channel counts {GROUPED_LAYER_CHANNELS}")
        self.groups, self.num_classes, self.in_chans = groups, num_classes, in_chans

        def lrn():
            return gnn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)

        self.features = nn.Sequential(OrderedDict([
            ("conv1", gnn.Conv2d(in_chans, 96, 11, stride=1 if small_input else 4, padding=5 if small_input else 0)),
            ("relu1", nn.ReLU(inplace=True)), ("norm1", lrn()), ("pool1", nn.MaxPool2d(3, stride=2)),
            ("conv2", gnn.Conv2d(96, 256, 5, padding=2, groups=groups)),
            ("relu2", nn.ReLU(inplace=True)), ("norm2", lrn()), ("pool2", nn.MaxPool2d(3, stride=2)),
            ("conv3", gnn.Conv2d(256, 384, 3, padding=1)), ("relu3", nn.ReLU(inplace=True)),
            ("conv4", gnn.Conv2d(384, 384, 3, padding=1, groups=groups)), ("relu4", nn.ReLU(inplace=True)),
            ("conv5", gnn.Conv2d(384, 256, 3, padding=1, groups=groups)), ("relu5", nn.ReLU(inplace=True)),
            ("pool5", nn.MaxPool2d(3, stride=2)),
        ]))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc6", nn.Linear(256 * 6 * 6, 4096)), ("relu6", nn.ReLU(inplace=True)), ("drop6", nn.Dropout(dropout)),
            ("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU(inplace=True)), ("drop7", nn.Dropout(dropout)),
            ("fc8", nn.Linear(4096, num_classes)),
        ]))
        self._init_parameters(init)

    def _init_parameters(self, init: str) -> None:
        biases_one = {self.features.conv2, self.features.conv4, self.features.conv5, self.classifier.fc6,
                      self.classifier.fc7}
        for module in self.modules():
            if not isinstance(module, nn.Conv2d | nn.Linear):
                continue
            if init == "kaiming" and module is not self.classifier.fc8:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
            else:
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 1.0 if init == "paper" and module in biases_one else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model(input_size=(3, 227, 227), small_input=True, recipe=RECIPE)
def alexnet(**kwargs) -> AlexNet:
    """AlexNet as in the paper: two filter groups on conv2, conv4, conv5."""
    return AlexNet(groups=2, **kwargs)


@register_model(input_size=(3, 227, 227), small_input=True, recipe=RECIPE)
def alexnet_g1(**kwargs) -> AlexNet:
    """AlexNet without filter groups (ablation)."""
    return AlexNet(groups=1, **kwargs)


@register_model(input_size=(3, 227, 227), small_input=True, recipe=RECIPE)
def alexnet_g4(**kwargs) -> AlexNet:
    """AlexNet with four filter groups on conv2, conv4, conv5 (ablation)."""
    return AlexNet(groups=4, **kwargs)
