"""Drop-in replacements for torch.nn.functional.conv1d/2d/3d and channel_shuffle.

Same signatures and results as torch, plus padding='full' and the keyword-only
`shuffle_groups`: the conv then reads its input as if it had been passed through
channel_shuffle(input, shuffle_groups) first, without the caller materialising the shuffle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .custom_ops import convolution, convolution_with_shortcut, settled_calls, shuffle
from .arguments import (IntOrTuple, Padding, check_conv_call_once, check_groups, check_shuffle, memory_format_of,
                        suggested_memory_format)
from .dispatch import ConvProblem, explain


def _prepare(spatial_dims, input, weight, bias, stride, padding, dilation, groups, shuffle_groups):
    """Validate a call; return the batched (and, for odd 'same' padding, pre-padded) input and arguments."""
    unbatched = isinstance(input, torch.Tensor) and input.dim() == spatial_dims + 1
    if unbatched:
        input = input.unsqueeze(0)
    input, weight, bias = _autocast(input, weight, bias)
    input = _in_the_weights_layout(input, weight)
    args, extra_after = check_conv_call_once(
        input, weight, bias, stride, padding, dilation, groups, shuffle_groups, spatial_dims
    )
    if any(extra_after):
        # torch's rule for 'same' with an even span: the odd element of padding goes after.
        input = F.pad(input, [p for extra in reversed(extra_after) for p in (0, extra)])
    return input, args, unbatched


def _in_the_weights_layout(input, weight):
    """A contiguous input of a conv whose weight is channels_last, converted to channels_last, as torch's own conv
    does (its output is channels_last then). So a model moved with .to(memory_format=torch.channels_last) runs
    channels_last throughout on contiguous inputs: the first conv converts, every later layer receives channels_last,
    and no layer converts back and forth."""
    if not (isinstance(input, torch.Tensor) and isinstance(weight, torch.Tensor) and input.dim() == weight.dim()):
        return input  # (a wrong call, reported by the argument checks)
    if memory_format_of(input) != torch.contiguous_format or (weight.is_contiguous() and 1 not in weight.shape[1:]):
        return input  # (the second test: a contiguous weight without size-1 dimensions, no doubt about its layout)
    weight_format = suggested_memory_format(weight)
    return input if weight_format == torch.contiguous_format else input.contiguous(memory_format=weight_format)


def _autocast(*tensors):
    """The operands as torch's autocast hands them to its own conv: inside an autocast region of their device, every
    floating-point tensor but a float64 one in the region's dtype (float16 or bfloat16)."""
    device_type = tensors[0].device.type if isinstance(tensors[0], torch.Tensor) else None
    if (device_type is None or not torch.amp.is_autocast_available(device_type)
            or not torch.is_autocast_enabled(device_type)):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
                 and t.device.type == device_type else t for t in tensors)


def _conv(spatial_dims, input, weight, bias, stride, padding, dilation, groups, shuffle_groups):
    # A signature whose path is settled skips the checks and the dispatcher's questions (settled_calls.py).
    out = settled_calls.run_settled(spatial_dims, input, weight, bias, stride, padding, dilation, groups,
                                    shuffle_groups)
    if out is not None:
        return out
    prepared, args, unbatched = _prepare(
        spatial_dims, input, weight, bias, stride, padding, dilation, groups, shuffle_groups
    )
    out = convolution(prepared, weight, bias, args)
    if prepared is input:
        settled_calls.settle(spatial_dims, input, weight, bias, stride, padding, dilation, groups, shuffle_groups,
                             args)
    return out.squeeze(0) if unbatched else out


def conv1d(input, weight, bias=None, stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, shuffle_groups: int = 1) -> torch.Tensor:
    """Like torch.nn.functional.conv1d; padding may also be 'full'; see the module docstring for shuffle_groups."""
    return _conv(1, input, weight, bias, stride, padding, dilation, groups, shuffle_groups)


def conv2d(input, weight, bias=None, stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, shuffle_groups: int = 1) -> torch.Tensor:
    """Like torch.nn.functional.conv2d; padding may also be 'full'; see the module docstring for shuffle_groups."""
    return _conv(2, input, weight, bias, stride, padding, dilation, groups, shuffle_groups)


def conv3d(input, weight, bias=None, stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, shuffle_groups: int = 1) -> torch.Tensor:
    """Like torch.nn.functional.conv3d; padding may also be 'full'; see the module docstring for shuffle_groups."""
    return _conv(3, input, weight, bias, stride, padding, dilation, groups, shuffle_groups)


def conv_with_shortcut(input, weight, bias=None, stride: IntOrTuple = 1, padding: Padding = 0,
                       dilation: IntOrTuple = 1, groups: int = 1, *, shuffle_groups: int = 1):
    """(convNd(input, weight, ...), input), N from the weight: a residual block's first conv and its shortcut.

    The same values as calling the conv and using `input` again, but the two come from one autograd node, which
    adds the shortcut's gradient into the conv's input gradient as the kernel writes it (groupconv's channels_last
    1x1 kernel) instead of autograd summing the two in a pass over memory of its own.
    """
    spatial_dims = weight.dim() - 2 if isinstance(weight, torch.Tensor) else 0
    batched, args, unbatched = _prepare(
        spatial_dims, input, weight, bias, stride, padding, dilation, groups, shuffle_groups
    )
    if batched is not input:  # (unbatched, or pre-padded for an even 'same' span: the conv reads another tensor)
        out = convolution(batched, weight, bias, args)
        return (out.squeeze(0) if unbatched else out), input
    return convolution_with_shortcut(input, weight, bias, args)


def channel_shuffle(input: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle of an (N, C, ...) tensor of rank 3 to 5.

    Equal to input.view(N, groups, C // groups, ...).transpose(1, 2).reshape(input.shape).
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not 3 <= input.dim() <= 5:
        raise ValueError(
            f"channel_shuffle expects input of rank 3 to 5 (N, C, *spatial), got input.dim()={input.dim()} "
            f"with shape {tuple(input.shape)}"
        )
    check_groups(groups)
    check_shuffle(input.shape[1], groups, "input channels (input.shape[1])")
    return shuffle(input, groups)


def conv_problem(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, shuffle_groups=1,
                 op: str = "conv_forward") -> ConvProblem:
    """The problem the dispatcher sees for this convolution call (op: conv_forward or one of its gradients)."""
    spatial_dims = weight.dim() - 2 if isinstance(weight, torch.Tensor) else 0
    input, args, _ = _prepare(spatial_dims, input, weight, bias, stride, padding, dilation, groups, shuffle_groups)
    return ConvProblem.build(op, input.shape, weight.shape, args, input, has_bias=bias is not None)


def explain_conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, shuffle_groups=1,
                 op: str = "conv_forward") -> str:
    """Which backend would run this convolution, and why each other one would not."""
    return explain(conv_problem(input, weight, bias, stride, padding, dilation, groups, shuffle_groups=shuffle_groups,
                                op=op))
