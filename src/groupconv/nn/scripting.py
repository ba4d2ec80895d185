"""What torch.jit.script compiles in place of groupconv's layers: equivalent torch.nn modules sharing their parameters.

groupconv's layers run Python that TorchScript cannot compile (the dispatcher, the fused shortcut's bookkeeping),
so each layer's `__prepare_scriptable__`, which torch.jit.script calls on every module before compiling it, returns
one of these: the same computation in torch's own ops, on the same Parameter and buffer objects (training the
scripted module trains the original). torch.jit.trace needs none of this: traced calls record groupconv's custom ops.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_TORCH_CONVS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _sharing_state(module: torch.nn.Module, torch_class: type) -> torch.nn.Module:
    """A `torch_class` module whose attributes are `module`'s own objects (parameters, buffers, hooks): groupconv's
    layers add no state to the torch layer they subclass, so the torch class reads them as its own."""
    twin = torch_class.__new__(torch_class)
    twin.__dict__.update(module.__dict__)
    twin.__dict__.pop("shuffle_groups", None)
    return twin


def scriptable_conv(layer: torch.nn.Module) -> torch.nn.Module:
    """A groupconv conv layer as torch's ConvNd (after torch.nn.ChannelShuffle where it reads its input shuffled)."""
    torch_class = next(base for base in _TORCH_CONVS if isinstance(layer, base))
    conv = _sharing_state(layer, torch_class)
    if layer.padding == "full":  # torch pads 'full' as explicit, symmetric padding: every partial overlap
        conv.padding = tuple(d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size))
    if layer.shuffle_groups > 1:
        return torch.nn.Sequential(torch.nn.ChannelShuffle(layer.shuffle_groups), conv)
    return conv


class ScriptableBatchNormAct2d(torch.nn.Module):
    """BatchNormAct2d in torch's ops: torch's BatchNorm2d (sharing the layer's parameters and running statistics),
    then `+ residual`, then ReLU, then torch.cat with `concat`."""

    def __init__(self, layer: torch.nn.BatchNorm2d, apply_act: bool):
        super().__init__()
        self.norm = _sharing_state(layer, torch.nn.BatchNorm2d)
        self.norm.__dict__.pop("apply_act", None)
        self.apply_act = apply_act

    def forward(self, input: Tensor, residual: Optional[Tensor] = None, concat: Optional[Tensor] = None) -> Tensor:
        out = self.norm(input)
        if residual is not None:
            out = out + residual
        if self.apply_act:
            out = torch.relu(out)
        if concat is not None:
            out = torch.cat((out, concat), 1)
        return out
