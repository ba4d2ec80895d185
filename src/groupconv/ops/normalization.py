"""Batch normalisation fused with the residual add and ReLU that follow it in a conv block.

`batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, residual=None,
relu=False, concat=None)` is torch.nn.functional.batch_norm (same arguments, same running-statistics
update), followed by `+ residual` and a ReLU when asked: y = relu(bn(input) + residual); with
`concat`, torch.cat((y, concat), 1), y written into the concatenation directly (ShuffleNet's
downsampling units concatenate their branch with the pooled shortcut: one pass over the output less).

Why: those are memory-bound passes, and in training torch makes each separately, forward and
backward. In a ShuffleNet g=8 step they cost as much as all its convolutions, and its activations,
2.7x g=1's at equal multiply-adds, are what makes g=8 slow. The native kernel
(csrc/batch_norm.cpp) makes two passes forward and two backward, and measured 1.8-3.3x faster than
torch's BN + ReLU on the zoo's activation shapes (benchmarks/bench_batch_norm.py).

Each call goes through the dispatcher as the convs do (a BatchNormProblem): the native backend runs the fused
kernel (custom_ops/batch_norm.py) on CPU float32/float64 tensors, contiguous or channels_last, with a residual of
the input's shape (backends/native/batch_norm.py says where else it declines); the aten backend runs torch's own
ops (anything else: CUDA, half precision, other strides, a broadcast residual, or a build without the native
kernels), and the reference backend the formula written out. `use_backend` forces one, `explain_batch_norm` shows
the choice, and with tuning on the tuner measures them as it measures the convs. Inside torch.func transforms the
aten backend runs (custom_ops.eager.in_functorch_transform says why).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .custom_ops.eager import in_functorch_transform, runs_eagerly
from .custom_ops.local_response_norm import local_response_norm as _local_response_norm_op
from .dispatch import BatchNormProblem, explain, get_backend, select_backend


def batch_norm_problem(input: Tensor, training: bool = True, *, residual: Optional[Tensor] = None,
                       relu: bool = False, concat: Optional[Tensor] = None) -> BatchNormProblem:
    """The problem the dispatcher sees for this batch_norm call."""
    return BatchNormProblem.build(input, training, residual, relu, concat)


def explain_batch_norm(input: Tensor, training: bool = True, *, residual: Optional[Tensor] = None,
                       relu: bool = False, concat: Optional[Tensor] = None) -> str:
    """Which backend would run this batch_norm call, and why each other one would not."""
    return explain(batch_norm_problem(input, training, residual=residual, relu=relu, concat=concat))


def _check_arguments(input, running_mean, running_var, weight, bias, training, residual, concat):
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(f"batch_norm expects input of shape (N, C, ...), got input.dim()={input.dim()}")
    channels = input.shape[1]
    for name, value in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                        ("bias", bias)):
        if value is not None and tuple(value.shape) != (channels,):
            raise ValueError(f"{name} must have shape ({channels},) for input of {channels} channels, "
                             f"got {tuple(value.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("training=False needs running_mean and running_var, got "
                         f"running_mean={'None' if running_mean is None else 'a tensor'}, "
                         f"running_var={'None' if running_var is None else 'a tensor'}")
    values_per_channel = input.shape[0] * math.prod(input.shape[2:])  # (not numel / channels: there may be none)
    if training and values_per_channel == 1:  # (torch's rule: none at all is an empty result, not an error)
        raise ValueError(f"training needs more than one value per channel, got input of shape {tuple(input.shape)}")
    if residual is not None and not isinstance(residual, Tensor):
        raise TypeError(f"residual must be a torch.Tensor or None, got {type(residual).__name__}")
    if concat is not None:
        if not isinstance(concat, Tensor):
            raise TypeError(f"concat must be a torch.Tensor or None, got {type(concat).__name__}")
        if (concat.dim() != input.dim() or concat.shape[0] != input.shape[0] or concat.shape[2:] != input.shape[2:]
                or concat.device != input.device):
            raise ValueError(f"concat must have the input's batch and spatial size (and device) to be concatenated "
                             f"along its channels: got concat of shape {tuple(concat.shape)} on {concat.device} for "
                             f"input of shape {tuple(input.shape)} on {input.device}")


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, residual: Optional[Tensor] = None,
               relu: bool = False, concat: Optional[Tensor] = None) -> Tensor:
    """torch.nn.functional.batch_norm, then `+ residual` (if given), then ReLU (if `relu`), fused on CPU; with
    `concat`, torch.cat((that, concat), 1), written into the concatenation directly."""
    _check_arguments(input, running_mean, running_var, weight, bias, training, residual, concat)
    if torch.compiler.is_dynamo_compiling():
        given = {name: tensor for name, tensor in zip(_OPTIONAL_TENSORS, (running_mean, running_var, weight, bias,
                                                                          residual, concat)) if tensor is not None}
        return _dispatched_outside_dynamo(input, given, training, momentum, eps, relu)
    return _dispatched(input, running_mean, running_var, weight, bias, training, momentum, eps, residual, relu, concat)


def _dispatched(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor], weight: Optional[Tensor],
                bias: Optional[Tensor], training: bool, momentum: float, eps: float, residual: Optional[Tensor],
                relu: bool, concat: Optional[Tensor]) -> Tensor:
    """The call on the backend the dispatcher chooses for it."""
    problem = BatchNormProblem.build(input, training, residual, relu, concat)
    if in_functorch_transform():
        backend = get_backend("aten")
    elif torch.compiler.is_compiling() or torch.jit.is_tracing():  # (no measurement recorded into a traced graph)
        backend = select_backend(problem)
    else:
        def run(backend):  # a measurement: the forward alone, on copies of the running statistics
            with torch.no_grad():
                return backend.batch_norm(input, _copy(running_mean), _copy(running_var), weight, bias, training,
                                          momentum, eps, residual, relu, concat)

        backend = select_backend(problem, run)
    return backend.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, residual,
                              relu, concat)


_OPTIONAL_TENSORS = ("running_mean", "running_var", "weight", "bias", "residual", "concat")


# torch.compile's dynamo does not trace this function: its graph records one call of it, which AOTAutograd then traces
# into (the real code, a dynamic size a torch.SymInt whose example value the choice uses without a guard), or which
# runs as plain Python with backend="eager". Traced by dynamo, a dynamic size would be an int to the chooser (dynamo's
# isinstance) but no constant it could choose with. The traced graph holds the chosen backend's ops, as it holds the ops
# of any Python branch (the conv ops choose inside their custom op instead, at run time). The optional tensors come in
# a dict of those given: such a function takes no None argument.
@torch._dynamo.nonstrict_trace
def _dispatched_outside_dynamo(input: Tensor, given: dict[str, Tensor], training: bool, momentum: float, eps: float,
                               relu: bool) -> Tensor:
    return _dispatched(input, given.get("running_mean"), given.get("running_var"), given.get("weight"),
                       given.get("bias"), training, momentum, eps, given.get("residual"), relu, given.get("concat"))


def _copy(tensor: Optional[Tensor]) -> Optional[Tensor]:
    return None if tensor is None else tensor.clone()


def local_response_norm(input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> Tensor:
    """torch.nn.functional.local_response_norm (AlexNet's, Krizhevsky et al. 2012), which also exports to ONNX.

    Where torch traces the call (torch.jit.trace, both ONNX exporters, torch.export, torch.compile) it is one op
    that becomes ONNX's LRN; plain eager calls run torch's function itself. An even `size` always runs torch's:
    ONNX's LRN centres an even window one channel later than torch does.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() < 3:
        raise ValueError(f"local_response_norm expects input of shape (N, C, *spatial) with at least one spatial "
                         f"dimension, got input.dim()={input.dim()}")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"size={size!r} must be a positive int")
    if size % 2 == 0 or in_functorch_transform() or runs_eagerly(input):
        return torch.nn.functional.local_response_norm(input, size, alpha, beta, k)
    return _local_response_norm_op(input, size, float(alpha), float(beta), float(k))
