"""The torch.nn twin of a groupconv model: the same model built from stock torch layers, what the
benchmarks time groupconv against.
"""

from __future__ import annotations

import copy

import torch

from .. import nn as gnn


class StockBatchNormAct2d(torch.nn.BatchNorm2d):
    """What stock models (pytorchcv, torchvision) run where groupconv fuses BN, residual and ReLU: torch's BN,
    then `+ residual`, then an in-place ReLU (then torch.cat with `concat`), each its own op."""

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None, *,
                concat: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(input)
        if residual is not None:
            out = out + residual
        out = torch.nn.functional.relu(out, inplace=True) if self.apply_act else out
        return out if concat is None else torch.cat((out, concat), 1)


def to_torch_layers(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` built from plain torch.nn layers: what the model costs in stock PyTorch.

    Every groupconv conv becomes the torch conv of its class with the same parameters; a conv that
    reads its input shuffled becomes torch.nn.ChannelShuffle followed by the conv, as a stock
    implementation (pytorchcv) builds it; a BatchNormAct2d becomes torch's BN, add and ReLU.
    """
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, gnn.BatchNormAct2d):
            module.__class__ = StockBatchNormAct2d
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            torch_class = next((base for base in (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
                                if isinstance(child, base)), None)
            if torch_class is None or type(child) is torch_class:
                continue
            shuffle_groups = getattr(child, "shuffle_groups", 1)
            child.__class__ = torch_class  # groupconv's layers add no state beyond shuffle_groups
            if shuffle_groups > 1:
                del child.shuffle_groups
                setattr(parent, child_name, torch.nn.Sequential(torch.nn.ChannelShuffle(shuffle_groups), child))
    return model
