"""Swap torch's convolutions and BatchNorm2d in any model for groupconv's, in place, keeping every parameter."""

from __future__ import annotations

import torch

from ..ops.allocator import keep_freed_memory as keep_freed_memory_in_process
from .conv import Conv1d, Conv2d, Conv3d
from .normalization import BatchNormAct2d, LocalResponseNorm
from .shuffle import ChannelShuffle

_REPLACEMENTS = {torch.nn.Conv1d: Conv1d, torch.nn.Conv2d: Conv2d, torch.nn.Conv3d: Conv3d,
                 torch.nn.BatchNorm2d: BatchNormAct2d, torch.nn.ChannelShuffle: ChannelShuffle,
                 torch.nn.LocalResponseNorm: LocalResponseNorm}


def accelerate(model: torch.nn.Module, *, channels_last: bool = False,
               keep_freed_memory: bool = True) -> torch.nn.Module:
    """Make every torch.nn.Conv1d/2d/3d, BatchNorm2d, ChannelShuffle and LocalResponseNorm in `model` run on
    groupconv's ops; returns `model`.

    channels_last=True also moves the model to channels_last (model.to(memory_format=torch.channels_last), the
    faster layout of groupconv's CPU kernels): as with torch's own layers, a contiguous input is then converted once,
    by the first conv, and every later layer runs channels_last without converting back and forth.

    keep_freed_memory=True (the default) keeps freed memory in the process for the next allocations
    (groupconv.ops.allocator): a model's large tensors, allocated again at every step, then cost no page
    faults after the first, as torch's CUDA tensors do not. The process's resident memory stays at its peak; False,
    or GROUPCONV_KEEP_FREED_MEMORY=0, leaves malloc as it was.

    groupconv's layers subclass torch's and add no state, so the swap changes only the class of
    each layer object: its parameters (and any optimizer holding them), buffers, hooks and
    state_dict stay exactly as they were, and so do the outputs (up to float rounding). A BatchNorm2d
    becomes a BatchNormAct2d without activation (a ReLU module after it stays: which ReLU follows which
    BN is the model's code, not its modules). Subclasses of torch's layers (which may override forward)
    are left alone. What the model could do before it still can: it exports to ONNX (with both of torch's
    exporters; a ChannelShuffle now does, which torch's own does not, and a LocalResponseNorm exports with the
    TorchScript-based one, which torch's loses the sizes after), traces and scripts with torch.jit (a
    scripted layer compiles torch's ops on the same parameters) and exports with torch.export.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, value in (("channels_last", channels_last), ("keep_freed_memory", keep_freed_memory)):
        if not isinstance(value, bool):
            raise TypeError(f"{name}={value!r} must be a bool")
    if keep_freed_memory:
        keep_freed_memory_in_process()
    for module in model.modules():
        replacement = _REPLACEMENTS.get(type(module))
        if replacement is not None:
            module.__class__ = replacement
            if replacement is BatchNormAct2d:
                module.apply_act = False
    return model.to(memory_format=torch.channels_last) if channels_last else model
