"""A model as a torch.fx graph, with groupconv's layers as single nodes, and what to do with the parts that will not
trace.

torch.fx's symbolic tracing fails where Python code branches on a tensor (`if x.is_cuda and not x.is_contiguous()`).
Such code sits either in a plain function (the zoo's layout helpers, called on activations) or in a module's own
forward. The first kind is recorded as one call, opaque to the graph and run with real tensors (fx's
`autowrap_functions`); the second kind leaves that module as one node that runs as it was. Both are found from the
tracing error's traceback and tracing starts again, so any model traces, down to leaving the whole model as it was.
"""

from __future__ import annotations

import contextlib
import functools
import os
import types
from collections import Counter
from typing import Callable

import torch
from torch import fx

from ..nn import BatchNormAct2d, ChannelShuffle, LocalResponseNorm
from ..nn.base import GroupedConvMixin

# groupconv's layers are nodes of the graph, not traced through: their forward checks its input in Python, and the
# folding and the conv plans work on whole layers.
LEAF_LAYERS = (GroupedConvMixin, BatchNormAct2d, ChannelShuffle, LocalResponseNorm)

# A model rarely needs more retries than it has helper functions and untraceable blocks; this bounds a pathological one.
MAX_ATTEMPTS = 64

_TORCH_DIRECTORY = os.path.dirname(torch.__file__)


class _Tracer(fx.Tracer):
    def __init__(self, opaque_modules: set[int]):
        super().__init__()
        self.opaque_modules = opaque_modules

    def is_leaf_module(self, module: torch.nn.Module, qualified_name: str) -> bool:
        return (id(module) in self.opaque_modules or isinstance(module, LEAF_LAYERS)
                or super().is_leaf_module(module, qualified_name))


def _recorded(function: Callable) -> Callable:
    """`function`, recorded as one node of the graph when an argument is a traced value (run as it is otherwise)."""

    @functools.wraps(function)
    def call(*args, **kwargs):
        proxies = [value for value in (*args, *kwargs.values()) if isinstance(value, fx.Proxy)]
        if not proxies:
            return function(*args, **kwargs)
        return proxies[0].tracer.create_proxy("call_function", function, args, kwargs)

    return call


@contextlib.contextmanager
def _recording(functions: list[tuple[dict, str, Callable]]):
    """While tracing, each (module globals, name, function) has its name bound to the recorded function."""
    for namespace, name, function in functions:
        namespace[name] = _recorded(function)
    try:
        yield
    finally:
        for namespace, name, function in functions:
            namespace[name] = function


def _culprit(error: BaseException, tried: set) -> list[tuple[dict, str, Callable]] | torch.nn.Module | None:
    """The innermost function or module forward of the user's code (not torch's) in the error's traceback that
    is not yet handled: a module-level function, to record as one call (as the names its caller's module binds to
    it: (globals, name, function) each); a module, to leave as it was."""
    frames = []
    traceback = error.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for index in reversed(range(1, len(frames))):
        frame = frames[index]
        if frame.f_code.co_filename.startswith(_TORCH_DIRECTORY):
            continue
        owner = frame.f_locals.get("self")
        if isinstance(owner, torch.nn.Module) and frame.f_code.co_name == "forward":
            return owner if id(owner) not in tried else None
        function = frame.f_globals.get(frame.f_code.co_name)
        if isinstance(function, types.FunctionType) and function.__code__ is frame.f_code and id(function) not in tried:
            caller_globals = frames[index - 1].f_globals
            names = [name for name, value in caller_globals.items() if value is function]
            if names:
                return [(caller_globals, name, function) for name in names]
    return None


def trace(model: torch.nn.Module) -> tuple[fx.GraphModule, set[str]] | None:
    """`model` as a GraphModule and the names of its submodules left as they were; None where the model's own
    forward does not trace (it then runs as it was)."""
    functions: list[tuple[dict, str, Callable]] = []
    opaque_modules: set[int] = set()
    for _ in range(MAX_ATTEMPTS):
        tracer = _Tracer(opaque_modules)
        try:
            with _recording(functions):
                graph = tracer.trace(model)
        except Exception as error:  # (fx raises TraceError, TypeError, AttributeError, ... from the user's code)
            culprit = _culprit(error, opaque_modules | {id(function) for _, _, function in functions})
            if culprit is None or culprit is model:
                return None
            if isinstance(culprit, torch.nn.Module):
                opaque_modules.add(id(culprit))
            else:
                functions.extend(culprit)
            continue
        opaque_names = {name for name, module in model.named_modules() if id(module) in opaque_modules}
        return fx.GraphModule(model, graph, class_name=type(model).__name__), opaque_names
    return None


def module_call_counts(graph_module: fx.GraphModule) -> Counter:
    """How many places of the graph call each submodule: a module called at two places shares its weights between
    them, so a rewrite of those weights for one place would change the other."""
    return Counter(node.target for node in graph_module.graph.nodes if node.op == "call_module")
