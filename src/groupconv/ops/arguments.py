"""Argument normalisation and validation for the grouped-convolution ops.

Every public entry point (functional ops, modules, cost model) goes through here, so each
rule about what a valid convolution is lives in exactly one place, and every error names
the argument and the value that broke it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

from .cache import BoundedCache

IntOrTuple = Union[int, Sequence[int]]
Padding = Union[str, int, Sequence[int]]

PADDING_MODES = ("valid", "same", "full")


def expand_tuple(value: IntOrTuple, ndim: int, name: str) -> tuple[int, ...]:
    """Turn an int or a sequence into an ndim-tuple of ints, like torch's _ntuple, but strict."""
    if isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be an int or a tuple of {ndim} ints, not a bool")
    if isinstance(value, int):
        return (value,) * ndim
    if isinstance(value, torch.Size | tuple | list):
        values = tuple(value)
        if len(values) == 1 and ndim > 1:
            values = values * ndim
        if len(values) != ndim or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise TypeError(f"{name}={value!r} must be an int or a tuple of {ndim} ints")
        return values
    raise TypeError(f"{name}={value!r} must be an int or a tuple of {ndim} ints")


def check_positive(values: tuple[int, ...], name: str) -> None:
    if any(v <= 0 for v in values):
        raise ValueError(f"{name}={values} must be positive in every dimension")


def check_groups(groups: int, name: str = "groups") -> None:
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"{name}={groups!r} must be an int")
    if groups <= 0:
        raise ValueError(f"{name}={groups} must be a positive integer")


def check_divisible(channels: int, channels_name: str, groups: int, groups_name: str = "groups") -> None:
    if channels % groups != 0:
        raise ValueError(f"{channels_name}={channels} is not divisible by {groups_name}={groups}")


def resolve_padding(
    padding: Padding, kernel_size: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return (padding before, padding after) for each spatial dimension.

    'valid' pads nothing, 'full' pads every partial overlap (output length m + n - 1 at stride 1),
    'same' keeps the length at stride 1 and, as in torch, puts the odd extra element after.
    """
    ndim = len(kernel_size)
    if isinstance(padding, str):
        if padding not in PADDING_MODES:
            raise ValueError(f"padding={padding!r} must be one of {PADDING_MODES}, an int or a tuple of ints")
        if padding == "valid":
            zeros = (0,) * ndim
            return zeros, zeros
        spans = tuple(d * (k - 1) for k, d in zip(kernel_size, dilation))
        if padding == "full":
            return spans, spans
        if any(s != 1 for s in stride):
            raise ValueError(f"padding='same' is not supported for strided convolutions (stride={stride})")
        before = tuple(s // 2 for s in spans)
        return before, tuple(s - b for s, b in zip(spans, before))
    pads = expand_tuple(padding, ndim, "padding")
    if any(p < 0 for p in pads):
        raise ValueError(f"padding={pads} must be non-negative")
    return pads, pads


def output_size(
    input_size: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding_before: Sequence[int],
    padding_after: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, ...]:
    """Spatial output size of a convolution (the formula of torch.nn.Conv2d's docs)."""
    return tuple(
        (i + pb + pa - d * (k - 1) - 1) // s + 1
        for i, k, s, pb, pa, d in zip(input_size, kernel_size, stride, padding_before, padding_after, dilation)
    )


def check_kernel_fits(
    input_size: Sequence[int],
    kernel_size: Sequence[int],
    padding_before: Sequence[int],
    padding_after: Sequence[int],
    dilation: Sequence[int],
) -> None:
    for dim, (i, k, pb, pa, d) in enumerate(zip(input_size, kernel_size, padding_before, padding_after, dilation)):
        span = d * (k - 1) + 1
        if span > i + pb + pa:
            raise ValueError(
                f"input size {tuple(input_size)}: kernel size {k} (dilation {d}, effective size {span}) is larger than the padded input size "
                f"{i + pb + pa} (input {i} + padding {pb}+{pa}) in spatial dimension {dim}"
            )


def check_shuffle(channels: int, groups: int, channels_name: str = "channels") -> None:
    check_groups(groups, "shuffle groups")
    if channels % groups != 0:
        raise ValueError(f"{channels_name}={channels} is not divisible by shuffle groups={groups}")


@dataclass(frozen=True)
class ConvArguments:
    """The checked arguments of a convolution: what the op, the dispatcher and the backends see.

    Padding is symmetric here; the odd element of an asymmetric 'same' padding is applied to the
    input beforehand (as torch does), so backends only ever see symmetric padding.
    `shuffle_groups` > 1 means the conv reads its input as if channel-shuffled with that many groups.
    """

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    shuffle_groups: int = 1

    @property
    def spatial_dims(self) -> int:
        return len(self.stride)


def check_conv_call(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: IntOrTuple,
    padding: Padding,
    dilation: IntOrTuple,
    groups: int,
    shuffle_groups: int,
    spatial_dims: int,
) -> tuple[ConvArguments, tuple[int, ...]]:
    """Validate a functional conv call (batched input).

    Returns the normalised arguments and the extra padding to add after each spatial dimension
    (non-zero only for 'same' padding whose total is odd).
    """
    for name, tensor in (("input", input), ("weight", weight)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if input.dim() != spatial_dims + 2:
        raise ValueError(
            f"conv{spatial_dims}d expects input of rank {spatial_dims + 1} (unbatched) or {spatial_dims + 2} "
            f"(batched), got input.dim()={input.dim()} with shape {tuple(input.shape)}"
        )
    if weight.dim() != spatial_dims + 2:
        raise ValueError(
            f"conv{spatial_dims}d expects weight of rank {spatial_dims + 2} (out_channels, in_channels/groups, "
            f"*kernel_size), got weight.dim()={weight.dim()} with shape {tuple(weight.shape)}"
        )
    if not input.dtype.is_floating_point:
        raise TypeError(f"input.dtype={input.dtype} is not supported: convolution needs a floating-point dtype")
    if input.dtype != weight.dtype:
        raise TypeError(f"input.dtype={input.dtype} and weight.dtype={weight.dtype} must be the same")
    if input.device != weight.device:
        raise ValueError(f"input.device={input.device} and weight.device={weight.device} must be the same")
    check_groups(groups)
    check_groups(shuffle_groups, "shuffle_groups")

    in_channels, out_channels = input.shape[1], weight.shape[0]
    check_divisible(in_channels, "input channels (input.shape[1])", groups)
    check_divisible(out_channels, "out channels (weight.shape[0])", groups)
    if weight.shape[1] * groups != in_channels:
        raise ValueError(
            f"weight.shape[1]={weight.shape[1]} times groups={groups} must equal the input channels "
            f"input.shape[1]={in_channels} (weight shape {tuple(weight.shape)})"
        )
    check_shuffle(in_channels, shuffle_groups, "input channels (input.shape[1])")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if tuple(bias.shape) != (out_channels,):
            raise ValueError(f"bias.shape={tuple(bias.shape)} must be ({out_channels},), one value per output channel")
        if bias.dtype != input.dtype:
            raise TypeError(f"bias.dtype={bias.dtype} and input.dtype={input.dtype} must be the same")
        if bias.device != input.device:
            raise ValueError(f"bias.device={bias.device} and input.device={input.device} must be the same")

    kernel_size = tuple(weight.shape[2:])
    if any(k == 0 for k in kernel_size):
        raise ValueError(f"weight.shape={tuple(weight.shape)} has an empty kernel")
    stride_t = expand_tuple(stride, spatial_dims, "stride")
    check_positive(stride_t, "stride")
    dilation_t = expand_tuple(dilation, spatial_dims, "dilation")
    check_positive(dilation_t, "dilation")
    before, after = resolve_padding(padding, kernel_size, stride_t, dilation_t)
    check_kernel_fits(input.shape[2:], kernel_size, before, after, dilation_t)
    arguments = ConvArguments(stride_t, before, dilation_t, groups, shuffle_groups)
    return arguments, tuple(a - b for a, b in zip(after, before))


# check_conv_call's results for the call signatures that passed it: a model's every conv call asks again, and the
# checks are ~30 Python calls, a third of groupconv's Python on a small layer's forward. The key holds everything the
# checks read; arguments that do not make an exact key (a bool or float where an int belongs) are checked every time.
# Bounded: inputs of ever new sizes would grow it without limit.
_PASSED_CHECKS: BoundedCache[tuple[ConvArguments, tuple[int, ...]]] = BoundedCache()


def exact_key(value):
    """`value` as a cache key that equals another only for the same ints or strings; None where there is none."""
    kind = type(value)
    if kind is int or kind is str:
        return value
    if kind is tuple or kind is list or kind is torch.Size:
        for v in value:
            if type(v) is not int:
                return None
        return tuple(value)  # (a list and a tuple of the same ints pass the same checks)
    return None


def check_conv_call_once(input, weight, bias, stride, padding, dilation, groups, shuffle_groups, spatial_dims):
    """check_conv_call, remembering the signatures that passed (the same result, the same errors).

    Not inside torch.compile's tracing: dynamo would guard on the cache's contents and compile again whenever
    another signature changed them."""
    key = None
    if not torch.compiler.is_compiling() and isinstance(input, torch.Tensor) and isinstance(weight, torch.Tensor) and (
            bias is None or isinstance(bias, torch.Tensor)):
        arguments = (exact_key(stride), exact_key(padding), exact_key(dilation), exact_key(groups),
                     exact_key(shuffle_groups))
        if None not in arguments:
            key = (spatial_dims, input.shape, input.dtype, input.device, weight.shape, weight.dtype, weight.device,
                   None if bias is None else (bias.shape, bias.dtype, bias.device), arguments)
            try:
                passed = _PASSED_CHECKS.get(key)
            except TypeError:  # symbolic sizes (torch.export, dynamic shapes in torch.compile) have no hash
                key = passed = None
            if passed is not None:
                return passed
    result = check_conv_call(input, weight, bias, stride, padding, dilation, groups, shuffle_groups, spatial_dims)
    if key is not None:
        _PASSED_CHECKS.put(key, result)
    return result


def memory_format_of(tensor: torch.Tensor) -> torch.memory_format:
    """The memory format an op's output should take to follow `tensor`, as torch's convolution does."""
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if tensor.dim() == 5 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def suggested_memory_format(tensor: torch.Tensor) -> torch.memory_format:
    """torch's Tensor.suggest_memory_format(): channels_last(_3d) where the strides are ordered as that layout's,
    size-1 dimensions' strides included (which is_contiguous ignores). torch's conv reads its weight's layout this
    way: a 1x1 or depthwise weight moved with .to(memory_format=torch.channels_last) is contiguous too, yet counts
    as channels_last."""
    dims = tensor.dim()
    if dims not in (4, 5) or tensor.layout != torch.strided:
        return torch.contiguous_format
    sizes, strides = tensor.shape, tensor.stride()
    if strides[1] == 0:
        return torch.contiguous_format
    smallest = 0
    for d in (1, 3, 2, 0) if dims == 4 else (1, 4, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < smallest or (d == 0 and smallest == strides[1]):
            return torch.contiguous_format  # (the last test: ambiguous N111 tensors count as contiguous, as torch's)
        smallest = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return torch.channels_last if dims == 4 else torch.channels_last_3d


# Kernels written for 2-D run a 1-D conv as a 2-D conv of height 1: tensors and shapes gain a unit dimension
# before the length, and the arguments a neutral one (stride 1, padding 0, dilation 1).
def arguments_as_2d(args: ConvArguments) -> tuple[list[int], list[int], list[int]]:
    """Stride, padding, dilation of a 1-D or 2-D conv, as those of a 2-D conv."""
    if args.spatial_dims == 2:
        return list(args.stride), list(args.padding), list(args.dilation)
    return [1, *args.stride], [0, *args.padding], [1, *args.dilation]


def lift_to_2d(tensor: torch.Tensor, one_d: bool) -> torch.Tensor:
    return tensor.unsqueeze(2) if one_d else tensor


def lift_shape_to_2d(shape, one_d: bool) -> list[int]:
    return [*shape[:2], 1, *shape[2:]] if one_d else list(shape)
