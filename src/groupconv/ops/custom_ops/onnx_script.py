"""The translations of onnx.py as onnxscript functions, for torch.onnx.export(..., dynamo=True).

This module imports onnxscript (optional, about two seconds); onnx.py imports it only when torch's dynamo exporter
or a caller of `onnx_translation_table()` needs it. The ONNX each op becomes is described in onnx.py.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from onnxscript import ir
from onnxscript import opset18 as op
from torch.onnx._internal.exporter._torchlib._tensor_typing import TFloat

from .onnx import onnx_padding, shuffle_shape


def _channels(x) -> int | None:
    size = x.shape[1] if x.shape is not None and len(x.shape) > 1 else None
    return size if isinstance(size, int) else None


def _shuffle(x: TFloat, groups: int) -> TFloat:
    grouped = op.Reshape(x, op.Constant(value_ints=shuffle_shape(_channels(x), groups)))
    return op.Reshape(op.Transpose(grouped, perm=[0, 2, 1, 3]), op.Shape(x))


def channel_shuffle(x: TFloat, groups: int) -> TFloat:
    """channel_shuffle(Tensor x, int groups) -> Tensor"""
    return _shuffle(x, groups)


def conv_forward(input: TFloat, weight: TFloat, bias: Optional[TFloat], stride: Sequence[int],
                 padding: Sequence[int], dilation: Sequence[int], groups: int, shuffle_groups: int) -> TFloat:
    """conv_forward(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation,
    int groups, int shuffle_groups) -> Tensor"""
    if shuffle_groups > 1:
        input = _shuffle(input, shuffle_groups)
    inputs = (input, weight) if bias is None else (input, weight, bias)
    return op.Conv(*inputs, strides=list(stride), pads=onnx_padding(padding), dilations=list(dilation),
                   group=groups)


def _filled_like(running_mean: TFloat, value: float, dtype) -> TFloat:
    return op.ConstantOfShape(op.Shape(running_mean), value=ir.tensor([value], dtype=dtype))


def batch_norm_forward(input: TFloat, weight: Optional[TFloat], bias: Optional[TFloat], residual: Optional[TFloat],
                       running_mean: Optional[TFloat], running_var: Optional[TFloat], training: bool, eps: float,
                       relu: bool, concat: Optional[TFloat]) -> tuple[TFloat, TFloat, TFloat, TFloat]:
    """batch_norm_forward(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, Tensor? running_mean,
    Tensor? running_var, bool training, float eps, bool relu, Tensor? concat) -> (Tensor, Tensor, Tensor, Tensor)"""
    if training or running_mean is None or running_var is None:
        raise ValueError("batch_norm: export a model in eval mode (model.eval()); training-mode batch norm has no "
                         "ONNX form here")
    if weight is None:
        weight = _filled_like(running_mean, 1.0, input.dtype)
    if bias is None:
        bias = _filled_like(running_mean, 0.0, input.dtype)
    output = op.BatchNormalization(input, weight, bias, running_mean, running_var, epsilon=eps)
    if residual is not None:
        output = op.Add(output, residual)
    if relu:
        output = op.Relu(output)
    if concat is not None:
        output = op.Concat(output, concat, axis=1)
    # The op's other outputs, as the kernel returns them in eval mode: the running statistics and 1/sqrt(var + eps).
    invstd = op.Reciprocal(op.Sqrt(op.Add(running_var, op.CastLike(op.Constant(value_float=eps), running_var))))
    return output, op.Identity(running_mean), invstd, op.Identity(running_var)


def local_response_norm(x: TFloat, size: int, alpha: float, beta: float, k: float) -> TFloat:
    """local_response_norm(Tensor x, int size, float alpha, float beta, float k) -> Tensor"""
    return op.LRN(x, size=size, alpha=alpha, beta=beta, bias=k)


def translation_table() -> dict:
    """{custom op overload: translation}, as torch.onnx.export's custom_translation_table takes it."""
    ops = torch.ops.groupconv
    return {ops.conv_forward.default: conv_forward, ops.channel_shuffle.default: channel_shuffle,
            ops.batch_norm_forward.default: batch_norm_forward,
            ops.local_response_norm.default: local_response_norm}
