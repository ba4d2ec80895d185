"""AlexNet's local response normalisation (Krizhevsky et al. 2012) as a custom op, groupconv::local_response_norm.

torch computes it as a chain of reshapes and an average pool over the channels; torch's TorchScript-based ONNX
exporter loses the tensor sizes in that chain, so nothing after it (AlexNet's adaptive pooling) exports. As one op
it becomes ONNX's own LRN operator, with both exporters (onnx.py), which ONNX Runtime and OpenVINO run as one kernel.

The op computes torch.nn.functional.local_response_norm exactly; its backward is the derivative written out in
torch's ops, so it is differentiable again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..arguments import memory_format_of
from .outputs import empty_like_layout, owned


def run_local_response_norm(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    out = F.local_response_norm(x, size, alpha, beta, k)
    return owned(out, memory_format_of(x), x)


local_response_norm = torch.library.custom_op("groupconv::local_response_norm", run_local_response_norm,
                                              mutates_args=())


@local_response_norm.register_fake
def _local_response_norm_fake(x, size, alpha, beta, k):
    return empty_like_layout(x.shape, x)


def channel_window_sum(t: Tensor, before: int, after: int) -> Tensor:
    """For each channel c, the sum of t over channels c - before .. c + after (zero beyond the edges)."""
    padded = F.pad(t, [0, 0] * (t.dim() - 2) + [before, after])
    return padded.unfold(1, before + after + 1, 1).sum(-1)


def _setup_context(ctx, inputs, output):
    x, ctx.size, ctx.alpha, ctx.beta, ctx.k = inputs
    ctx.save_for_backward(x)


def _backward(ctx, grad_output):
    # y_c = x_c d_c^-beta with d_c = k + alpha/size * (sum of x_j^2 over c's window), the window being channels
    # c - size//2 .. c + (size-1)//2 (torch's). Channel j appears in the windows of c = j - (size-1)//2 .. j + size//2.
    (x,) = ctx.saved_tensors
    size, alpha, beta = ctx.size, ctx.alpha, ctx.beta
    d = ctx.k + alpha / size * channel_window_sum(x * x, size // 2, (size - 1) // 2)
    scaled = d.pow(-beta)
    through_d = channel_window_sum(grad_output * x * scaled / d, (size - 1) // 2, size // 2)
    grad_input = grad_output * scaled - (2 * alpha * beta / size) * x * through_d
    return grad_input, None, None, None, None


local_response_norm.register_autograd(_backward, setup_context=_setup_context)
