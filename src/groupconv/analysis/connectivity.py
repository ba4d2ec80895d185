"""Which input channels each output channel of a conv reads: the papers' "lines between channels" figure.

Derived from the layer's configuration (groups, and the channel shuffle it reads through), not
from its weights, so it shows the structure the layer is constrained to.
"""

from __future__ import annotations

import torch

from ..ops.functional import channel_shuffle


def channel_connectivity(in_channels: int, out_channels: int, groups: int = 1, shuffle_groups: int = 1) -> torch.Tensor:
    """Boolean (out_channels, in_channels) matrix: True where output channel o reads input channel i."""
    # Output group g reads the contiguous slice g of the (shuffled) input; the shuffle maps
    # position j of the shuffled input back to the original channel it came from.
    source = channel_shuffle(torch.arange(in_channels, dtype=torch.float64).view(1, in_channels, 1),
                             shuffle_groups).flatten().long()
    group_of_output = torch.arange(out_channels) // (out_channels // groups)
    group_of_position = torch.arange(in_channels) // (in_channels // groups)
    reads = group_of_output[:, None] == group_of_position[None, :]  # indexed by shuffled position
    connectivity = torch.zeros(out_channels, in_channels, dtype=torch.bool)
    connectivity[:, source] = reads
    return connectivity


def layer_connectivity(layer: torch.nn.Module) -> torch.Tensor:
    """channel_connectivity of a conv layer (any torch.nn.ConvNd, groupconv's included)."""
    return channel_connectivity(layer.in_channels, layer.out_channels, layer.groups,
                                getattr(layer, "shuffle_groups", 1))


def render_connectivity(connectivity: torch.Tensor) -> str:
    """Text picture: one row per output channel, '#' where it reads an input channel, '.' where not."""
    return "\n".join("".join("#" if c else "." for c in row) for row in connectivity.tolist())
