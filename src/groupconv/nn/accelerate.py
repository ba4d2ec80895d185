"""Swap torch's convolutions in any model for groupconv's, in place, keeping every parameter."""

from __future__ import annotations

import torch

from .conv import Conv1d, Conv2d, Conv3d

_REPLACEMENTS = {torch.nn.Conv1d: Conv1d, torch.nn.Conv2d: Conv2d, torch.nn.Conv3d: Conv3d}


def accelerate(model: torch.nn.Module) -> torch.nn.Module:
    """Make every torch.nn.Conv1d/2d/3d in `model` run on groupconv's ops; returns `model`.

    groupconv's layers subclass torch's and add no state, so the swap changes only the class of
    each layer object: its parameters (and any optimizer holding them), buffers, hooks and
    state_dict stay exactly as they were, and so do the outputs. Subclasses of torch's convs
    (which may override forward) are left alone.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        replacement = _REPLACEMENTS.get(type(module))
        if replacement is not None:
            module.__class__ = replacement
    return model
