"""Plain eager calls without torch.library's machinery: the autograd Functions that stand in for the custom ops.

torch.library's Python dispatch costs ~100 us a call each way, most of a small layer's time. Plain eager calls run
the same implementations and gradient formulas through torch.autograd.Functions made by `eager_function`, where
`runs_eagerly` says they may: everything that must see the ops (torch.compile, torch.export, functorch transforms,
dispatch modes, tensor subclasses) still gets the custom op.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode


def eager_function(name: str, implementation, setup_context, backward, doc: str) -> type[torch.autograd.Function]:
    """A torch.autograd.Function that runs a custom op's implementation, setup_context and backward formula without
    the custom op's machinery: what plain eager calls use (see the module docstring). Its backward node is named
    `name + "Backward"` in autograd graphs and profiles."""

    # forward(ctx, ...) rather than a separate setup_context: that form binds the arguments with inspect on every call.
    def forward(ctx, *inputs):
        output = implementation(*inputs)
        setup_context(ctx, inputs, output)
        return output

    return type(name, (torch.autograd.Function,), {"__doc__": doc, "forward": staticmethod(forward),
                                                   "backward": staticmethod(backward)})


# A Parameter is a plain tensor to torch's dispatch (it disables __torch_function__); other subclasses may not be.
PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)


def in_functorch_transform() -> bool:
    """Whether the call runs inside a torch.func transform (vmap, grad, jvp, jacrev, jacfwd, hessian, ...).

    Such calls run torch's own ops (the aten backend), whose autograd, forward-mode and batching rules the transforms
    apply: groupconv's kernels take plain tensors and have no batching rule, and torch.library's custom ops carry no
    rules for these transforms (their generated autograd.Function has no setup_context, which torch.func.grad
    requires, and forward-mode AD passes through them with a zero tangent). Not while torch.compile traces: its
    tracing sees the custom ops."""
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is not None


def runs_eagerly(*tensors: Tensor | None) -> bool:
    """Whether a call on these tensors may skip the custom ops: plain tensors, outside torch.compile and export,
    torch.jit tracing (torch.jit.trace, the ONNX exporter's trace), functorch transforms and dispatch modes
    (FlopCounterMode, fake tensors), which all must see the custom op."""
    return (not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()  # (a traced Function or raw kernel would be recorded as opaque calls)
            and torch._C._functorch.peek_interpreter_stack() is None
            and _get_current_dispatch_mode() is None
            and all(type(t) in PLAIN_TENSOR_TYPES for t in tensors if t is not None))


def profiled(name: str):
    """A profiler label for an eager call, so profiles still name the op (free when no profiler runs)."""
    return torch.profiler.record_function(name) if torch._C._autograd._profiler_enabled() else nullcontext()
