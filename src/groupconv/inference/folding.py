"""Batch norm folded into the convolution before it (eval mode: the statistics are constants).

In eval mode BN is y = (x - mean) / sqrt(var + eps) * gamma + beta, per channel: an affine map that the preceding
conv's weight (scaled per output channel) and bias absorb, which saves a full pass over the activations per BN. Only
where the graph shows that the BN reads the conv's output and nothing else reads it. A BatchNormAct2d also adds a
residual, applies ReLU or concatenates after the normalisation: those stay, as ConvEpilogue, in place on the conv's
own output.
"""

from __future__ import annotations

import torch
from torch import fx

from ..nn import BatchNormAct2d
from .layers import ConvEpilogue
from .tracing import module_call_counts


def _is_foldable_conv(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.modules.conv._ConvNd) and not module.transposed


def _is_foldable_batch_norm(module: torch.nn.Module) -> bool:
    """A BN whose eval-mode output is an affine map: it normalises with running statistics, not the batch's."""
    return (isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats
            and module.running_mean is not None and module.running_var is not None)


@torch.no_grad()
def fold_into_conv(conv: torch.nn.Module, batch_norm: torch.nn.Module) -> None:
    """Scale `conv`'s weight and shift its bias (made if it has none) so that conv(x) equals batch_norm(conv(x)) of
    the eval-mode BN. Worked out in float64, then stored in the weight's dtype."""
    dtype = conv.weight.dtype
    variance = batch_norm.running_var.double()
    scale = torch.rsqrt(variance + batch_norm.eps)
    shift = -batch_norm.running_mean.double() * scale
    if batch_norm.affine:
        scale = scale * batch_norm.weight.double()
        shift = shift * batch_norm.weight.double() + batch_norm.bias.double()
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    weight = conv.weight.double() * scale.reshape(-1, *[1] * (conv.weight.dim() - 1))
    conv.weight = torch.nn.Parameter(weight.to(dtype), requires_grad=False)
    conv.bias = torch.nn.Parameter(bias.to(dtype), requires_grad=False)


def _argument(node: fx.Node, position: int, name: str):
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name)


def fold_batch_norms(graph_module: fx.GraphModule) -> int:
    """Fold every BN that reads a conv's output alone into that conv, in place; returns how many were folded."""
    modules = dict(graph_module.named_modules())
    calls = module_call_counts(graph_module)
    folded = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or not _is_foldable_batch_norm(modules[node.target]) or not node.args:
            continue
        conv_node = node.args[0]
        if (not isinstance(conv_node, fx.Node) or conv_node.op != "call_module"
                or not _is_foldable_conv(modules[conv_node.target]) or len(conv_node.users) != 1
                or calls[conv_node.target] != 1 or calls[node.target] != 1):
            continue  # (a conv or BN called at two places shares its weights between them: folding would change both)
        batch_norm, conv = modules[node.target], modules[conv_node.target]
        residual, concat = _argument(node, 1, "residual"), _argument(node, 2, "concat")
        if batch_norm.num_features != conv.out_channels or conv_node in (residual, concat):
            continue  # (the conv's output also read as the residual or the concatenated part: it must stay unfolded)
        fold_into_conv(conv, batch_norm)
        relu = isinstance(batch_norm, BatchNormAct2d) and batch_norm.apply_act
        if residual is None and concat is None and not relu:
            node.replace_all_uses_with(conv_node)
            graph_module.graph.erase_node(node)
            graph_module.delete_submodule(node.target)
        else:  # the BN's module becomes what is left of it, under the same name
            graph_module.delete_submodule(node.target)
            graph_module.add_submodule(node.target, ConvEpilogue(relu))
            node.args, node.kwargs = (conv_node, residual, concat), {}
        folded += 1
    graph_module.graph.lint()
    graph_module.recompile()
    return folded
