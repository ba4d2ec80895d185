"""A channel shuffle moved from a depthwise conv's input to the 1x1 conv after it, where it costs nothing.

ShuffleNet's unit (Zhang et al. 2018) shuffles the channels between its first grouped 1x1 conv and the depthwise
conv; in groupconv's layers the depthwise conv reads its input through the shuffle. A depthwise conv treats every
channel alone, so it commutes with any permutation of them: dw(shuffle(x)) = shuffle(dw'(x)), dw' holding the same
filters in the unshuffled order. The shuffle then falls on the 1x1 conv that reads dw's output, and groupconv's 1x1
kernel reads its input one value at a time anyway, in any order: the shuffle becomes the order of those reads, and
the pass over memory that made it is gone.
"""

from __future__ import annotations

import torch
from torch import fx

from ..nn.base import GroupedConvMixin
from .tracing import module_call_counts


def _is_depthwise_with_shuffle(module: torch.nn.Module) -> bool:
    return (isinstance(module, GroupedConvMixin) and module.shuffle_groups > 1
            and module.groups == module.in_channels == module.out_channels)


def _is_plain_pointwise(module: torch.nn.Module) -> bool:
    """A 1x1 conv, stride 1, no padding, reading its input as it is."""
    return (isinstance(module, GroupedConvMixin) and module.shuffle_groups == 1 and not module.transposed
            and all(k == 1 for k in module.kernel_size) and all(s == 1 for s in module.stride)
            and (module.padding == "valid" or module.padding == "same"
                 or (not isinstance(module.padding, str) and all(p == 0 for p in module.padding))))


@torch.no_grad()
def _unshuffle_filters(depthwise: torch.nn.Module) -> None:
    """depthwise's filters (and bias) in the order of its unshuffled input: filter c moves to the channel that the
    shuffle brought to position c."""
    source = torch.channel_shuffle(torch.arange(depthwise.in_channels).view(1, -1, 1, 1), depthwise.shuffle_groups)
    source = source.flatten()
    for name in ("weight", "bias"):
        parameter = getattr(depthwise, name)
        if parameter is not None:
            moved = torch.empty_like(parameter)
            moved[source] = parameter
            setattr(depthwise, name, torch.nn.Parameter(moved, requires_grad=False))


def move_shuffles_to_pointwise_reads(graph_module: fx.GraphModule) -> int:
    """Wherever a depthwise conv with an input shuffle feeds, alone, a plain 1x1 conv: the shuffle moved to the 1x1
    conv's input (in place); returns how many were moved."""
    calls = module_call_counts(graph_module)
    moved = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1 or len(node.users) != 1:
            continue
        depthwise = graph_module.get_submodule(node.target)
        (user,) = node.users
        if (not _is_depthwise_with_shuffle(depthwise) or user.op != "call_module" or calls[user.target] != 1
                or user.args != (node,) or user.kwargs):
            continue
        pointwise = graph_module.get_submodule(user.target)
        if not _is_plain_pointwise(pointwise) or pointwise.in_channels != depthwise.out_channels:
            continue
        _unshuffle_filters(depthwise)
        pointwise.shuffle_groups, depthwise.shuffle_groups = depthwise.shuffle_groups, 1
        moved += 1
    return moved
