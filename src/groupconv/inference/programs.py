"""A straight-line program per input signature: the traced graph with each planned layer's call replaced by a direct
call of the kernel it chose for that signature.

A planned layer's forward finds its plan per call: it builds a key of its input's shape, strides, dtype, device and
torch's thread count and looks it up, through torch.nn.Module's call machinery. At batch 1 that Python, 5-10 us a
layer, was a tenth of a ShuffleNet's forward. Every activation's shape follows from the model's inputs, so once a
forward has run on an input signature, each layer's plan for that signature is known: the program calls it straight.
Each step still checks its input's shape and strides (a fraction of a microsecond), and where they differ (a part of
the model that the graph does not see into changed them) it calls the layer as before, which plans for them.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Optional

import torch
from torch import Tensor, fx

from .layers import PlannedConv, PlannedLayer


def _conv_step(layer: PlannedConv, shape: torch.Size, strides: tuple, residual_signature: Optional[tuple],
               plan: Callable) -> Callable:
    def planned_conv(input: Tensor, residual: Optional[Tensor] = None, concat: Optional[Tensor] = None) -> Tensor:
        if (input.shape != shape or input.stride() != strides
                or (residual_signature if residual is None else (residual.shape, residual.stride(), residual.dtype))
                != residual_signature):
            return layer(input, residual, concat)
        output = plan(input, residual)
        return output if concat is None else torch.cat((output, concat), 1)

    return planned_conv


def _layer_step(layer: PlannedLayer, shape: torch.Size, strides: tuple, plan: Callable) -> Callable:
    def planned_layer(input: Tensor) -> Tensor:
        if input.shape != shape or input.stride() != strides:
            return layer(input)
        return plan(input)

    return planned_layer


def straight_line_program(graph_module: fx.GraphModule) -> fx.GraphModule:
    """graph_module's forward with each planned layer called once in its graph replaced by a direct call of the plan it
    used on its last call (PlannedConv.last_plan, PlannedLayer.last_plan): run it right after a forward on the input
    signature the program is for. A layer that has not run, or that the graph calls more than once, stays a call of
    the layer."""
    graph = fx.Graph()
    outputs = graph.graph_copy(graph_module.graph, {})
    graph.output(outputs)
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        layer = graph_module.get_submodule(node.target)
        if not isinstance(layer, PlannedConv | PlannedLayer) or layer.last_plan is None:
            continue
        node.op = "call_function"
        node.target = (_conv_step if isinstance(layer, PlannedConv) else _layer_step)(layer, *layer.last_plan)
    graph.lint()
    return fx.GraphModule(graph_module, graph)
