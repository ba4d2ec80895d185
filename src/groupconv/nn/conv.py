"""Drop-in replacements for torch.nn.Conv1d/2d/3d (padding may also be 'full')."""

from __future__ import annotations

import torch

from .base import GroupedConvMixin


class Conv1d(GroupedConvMixin, torch.nn.Conv1d):
    """torch.nn.Conv1d computed by groupconv's ops; same arguments, parameters and state_dict."""


class Conv2d(GroupedConvMixin, torch.nn.Conv2d):
    """torch.nn.Conv2d computed by groupconv's ops; same arguments, parameters and state_dict."""


class Conv3d(GroupedConvMixin, torch.nn.Conv3d):
    """torch.nn.Conv3d computed by groupconv's ops; same arguments, parameters and state_dict."""
