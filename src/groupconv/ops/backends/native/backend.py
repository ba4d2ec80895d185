"""groupconv's compiled CPU kernels (src/groupconv/csrc/, built by build.py) as a backend.

If the build fails, or GROUPCONV_NATIVE=0, the backend reports why in `not_supported_reasons`
(so `groupconv backends` and `ops.explain_conv` show it) and every call goes to the other backends.

Kernels today: the channel shuffle (contiguous: one plane copy per channel; channels_last: a
gather within each pixel; every dtype), and direct convolution for narrow groups (1 or 2 input
channels per group: ShuffleNet's and MobileNet's depthwise 1; any depth multiplier) in NCHW and
depthwise (multiplier 1) in channels_last; 1-D and 2-D, any stride, padding and dilation,
float32 and float64, forward and both gradients, with the channel shuffle fused into the reads.
In channels_last also pointwise (1x1) grouped convs of any group width, forward and both gradients
(csrc/pointwise.cpp), and groups of 1 (depthwise) to 16 channels in and out with a kernel 3 wide (ResNeXt's and
MobileNet's 3x3 convs), forward and weight gradient at row stride 1 or 2, input gradient at stride 1 or 2 both
ways; a depthwise conv that reads through a shuffle runs there too, the shuffle paid on its output (as aten.py
does) (csrc/narrow_nhwc.cpp; cpu_kernels.cpp's depthwise kernel, which fuses the shuffle into its reads, runs the
rest).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from ...arguments import arguments_as_2d, lift_shape_to_2d, lift_to_2d, memory_format_of, output_size
from ...custom_ops.batch_norm import fused_batch_norm
from ...custom_ops.shuffle import run_channel_shuffle
from ...dispatch import Backend, BatchNormProblem, ConvProblem, Problem, ShuffleProblem
from ..aten import along_channels
from . import batch_norm, build
from .build import load

FLOAT_DTYPES = (torch.float32, torch.float64)
SUPPORTED_DTYPES = FLOAT_DTYPES  # of the convolutions and batch norm
# The shuffle kernels copy elements of any size.
SHUFFLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8, torch.int16,
                  torch.int32, torch.int64, torch.bool)
# Wider groups are matrix-multiply territory (oneDNN, gemm); the direct kernels suit narrow ones.
MAX_IN_PER_GROUP = 16
# cpu_kernels.cpp's NCHW kernels sum one input plane at a time, so their cost grows with the group width while
# oneDNN's does not: at 4 input channels per group they ran forward+backward 1.6-4.4x slower than oneDNN on
# 8-32-image batches, at 8-16 channels 9-30x (both gradients of 32x64x16x16, 16 per group: 27.9 ms against 1.8). They
# won only at toy sizes. Wider NCHW groups are left to oneDNN, or to the channels_last kernels (the via_channels_last
# strategy), so that an untuned dispatch (priority order) never lands there.
MAX_IN_PER_GROUP_NCHW = 2
MIN_UNTUNED_NCHW_OUTPUT_PIXELS = 28 * 28  # NativeBackend.runs_untuned


def _is_pointwise(weight_shape, args) -> bool:
    """A 2-D 1x1 conv (grouped or dense) with stride 1, no padding and no fused shuffle (csrc/pointwise.cpp's, in
    channels_last)."""
    return (len(weight_shape) == 4 and tuple(weight_shape[2:]) == (1, 1)
            and tuple(args.stride) == (1, 1) and tuple(args.padding) == (0, 0) and args.shuffle_groups == 1)


def _is_channels_last_pointwise(problem: ConvProblem) -> bool:
    return problem.layout == "channels_last" and _is_pointwise(problem.weight_shape, problem.arguments)


VECTOR_BYTES = 64  # csrc/narrow_nhwc.cpp's vector register: 16 floats, 8 doubles


# Asked on every call of the backend (which kernel runs it): remembered per distinct question.
@functools.lru_cache(maxsize=4096)
def _narrow_refusals(op: str, channels: int, weight_shape: tuple[int, ...], args,
                     dtype: torch.dtype) -> tuple[str, ...]:
    """Why csrc/narrow_nhwc.cpp cannot run this channels_last conv (empty: it can)."""
    out_channels, in_per_group, *kernel = weight_shape
    lanes = VECTOR_BYTES // dtype.itemsize if dtype in SUPPORTED_DTYPES else 0
    reasons = []
    if args.spatial_dims != 2 or kernel[1] != 3:
        reasons.append(f"kernel {tuple(kernel)} is not 2-D of width 3")
    if out_channels != channels:
        reasons.append(f"{out_channels} output channels for {channels} input channels (as many as the input only)")
    if in_per_group > lanes or in_per_group & (in_per_group - 1):
        reasons.append(f"{in_per_group} channels per group (a power of two up to {lanes})")
    if lanes and channels % lanes and not (op == "conv_forward" and in_per_group == 1):
        reasons.append(f"{channels} channels (a multiple of {lanes}; any count for a depthwise forward)")
    if args.spatial_dims == 2 and args.stride[1] not in (1, 2):
        reasons.append(f"stride {args.stride} (width stride 1 or 2)")
    if any(d != 1 for d in args.dilation):
        reasons.append(f"dilation {args.dilation} (1 only)")
    if args.shuffle_groups != 1 and in_per_group != 1:
        reasons.append(f"fused shuffle (shuffle_groups={args.shuffle_groups}) with {in_per_group} channels per group "
                       "(depthwise only)")
    if op in ("conv_backward_input", "conv_backward"):
        if tuple(args.stride) not in ((1, 1), (2, 2)):
            reasons.append(f"the input gradient of stride {args.stride} (1 or 2, the same both ways)")
        elif tuple(args.stride) == (1, 1) and len(kernel) == 2 and any(p > k - 1 for p, k in zip(args.padding, kernel)):
            reasons.append(f"the input gradient with padding {args.padding} > kernel size - 1")
    return tuple(reasons)


def runs_narrow(op: str, tensor: torch.Tensor, weight_shape, args) -> bool:
    """Whether csrc/narrow_nhwc.cpp runs this call of the backend: channels_last and within its limits. (Depthwise
    convs it cannot run go to cpu_kernels.cpp's channels_last kernel, which fuses a shuffle.)"""
    return (memory_format_of(tensor) == torch.channels_last
            and not _narrow_refusals(op, tensor.shape[1], tuple(weight_shape), args, tensor.dtype))


def to_memory_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """x in torch.channels_last or torch.contiguous_format: a 4-D float tensor by the kernels' tiled transpose
    (csrc/cpu_kernels.cpp: 2-4x faster than torch's permuted copy), anything else by torch."""
    if (x.dim() == 4 and x.dtype in SUPPORTED_DTYPES and x.device.type == "cpu" and load() is not None
            and not x.is_contiguous(memory_format=memory_format)):
        return load().to_memory_format(x, memory_format == torch.channels_last)
    return x.contiguous(memory_format=memory_format)


class NativeBackend(Backend):
    name = "native"
    description = ("groupconv's C++ CPU kernels: channel shuffle; narrow-group and depthwise convs with the shuffle "
                   "fused into their reads; channels_last pointwise and narrow-group convs")

    SUPPORTED_DEVICES = ("cpu",)
    SUPPORTED_DTYPES = {"conv": FLOAT_DTYPES, "batch_norm": FLOAT_DTYPES, "channel_shuffle": SHUFFLE_DTYPES}
    SUPPORTED_LAYOUTS = ("contiguous", "channels_last")

    def problem_reasons(self, problem: Problem) -> list[str]:
        if isinstance(problem, ShuffleProblem):
            return []
        if isinstance(problem, BatchNormProblem):
            return batch_norm.problem_reasons(problem)
        if _is_channels_last_pointwise(problem):
            return []
        reasons = []
        args = problem.arguments
        channels, in_per_group = problem.input_shape[1], problem.weight_shape[1]
        depthwise = args.groups == channels and in_per_group == 1
        if args.spatial_dims not in (1, 2):
            reasons.append(f"{args.spatial_dims}-D convolution (1-D and 2-D only)")
        if in_per_group > MAX_IN_PER_GROUP:
            reasons.append(f"{in_per_group} input channels per group (at most {MAX_IN_PER_GROUP}: narrow groups only)")
        elif in_per_group > MAX_IN_PER_GROUP_NCHW and problem.layout != "channels_last":
            reasons.append(f"{in_per_group} input channels per group in layout {problem.layout} (at most "
                           f"{MAX_IN_PER_GROUP_NCHW}: oneDNN is faster on wider groups; channels_last runs up to 16)")
        if problem.layout == "channels_last" and not (depthwise and problem.weight_shape[0] == channels):
            reasons.extend(f"channels_last: {reason}" for reason in _narrow_refusals(
                problem.op, channels, problem.weight_shape, args, problem.dtype))
        return reasons

    def unavailable_reason(self) -> str | None:
        return build.unavailable_reason()

    # Without tuning, priority order would run these kernels first wherever they can. cpu_kernels.cpp's NCHW kernels
    # lose to oneDNN in two places (32-image batches; 14 depthwise and shuffled-depthwise layers of the zoo, forward
    # and both gradients timed against torch's): their gradients, 1.0-3.8x slower on all but one (a tie), and the
    # forward on output planes under 28x28 (14x14: 1.2-2.5x slower, 7x7: 3x), where from 28x28 up it is 1.3-1.9x
    # faster. There the untuned choice is torch's; the tuner measures them as any contender.
    #
    # A dense (groups = 1) 1x1 conv runs on the pointwise kernel only where the tuner measured it faster: it wins where
    # the conv is narrow (the tuner's timings, batch 32: ShuffleNet's 24 -> 96 at 56x56 backward 7.8 ms against
    # oneDNN's 13.1, 36 -> 144 at 28x28 backward 4.0 against 5.4, 144 -> 36 forward 1.7 against 2.3) and loses to
    # oneDNN's matrix multiply on wide ones (MobileNet's 512 -> 512 at 14x14, forward+backward: 88 ms against 55).
    def runs_untuned(self, problem: Problem) -> bool:
        if not isinstance(problem, ConvProblem):
            return True
        if problem.layout == "channels_last":
            return not (_is_pointwise(problem.weight_shape, problem.arguments) and problem.arguments.groups == 1)
        if problem.op != "conv_forward":
            return False
        args = problem.arguments
        size = output_size(problem.input_shape[2:], problem.weight_shape[2:], args.stride, args.padding, args.padding,
                           args.dilation)
        return math.prod(size) >= MIN_UNTUNED_NCHW_OUTPUT_PIXELS

    def channel_shuffle(self, x, groups):
        return load().channel_shuffle(x, groups)

    def batch_norm(self, input, running_mean, running_var, weight, bias, training, momentum, eps, residual, relu,
                   concat):
        return fused_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, residual,
                                relu, concat)

    # A 1-D conv runs as a 2-D conv of height 1 (arguments.lift_to_2d).
    def conv_forward(self, input, weight, bias, args):
        if _is_pointwise(weight.shape, args) and memory_format_of(input) == torch.channels_last:
            return load().pointwise_forward_nhwc(input, weight, bias, args.groups)
        if runs_narrow("conv_forward", input, weight.shape, args):
            s = args.shuffle_groups  # a depthwise conv: the shuffle paid on the output (aten.py says why that holds)
            if s > 1:
                weight, bias = along_channels(weight, False, s), bias if bias is None else along_channels(bias, False, s)
            return _shuffled(load().narrow_forward_nhwc(input, weight, bias, args.stride, args.padding), s)
        one_d = args.spatial_dims == 1
        out = load().conv_forward(lift_to_2d(input, one_d), lift_to_2d(weight, one_d), bias,
                                  *arguments_as_2d(args), args.shuffle_groups)
        return out.squeeze(2) if one_d else out

    def conv_backward_input(self, grad_output, weight, input_shape, args, input=None):
        if _is_pointwise(weight.shape, args) and memory_format_of(grad_output) == torch.channels_last:
            return load().pointwise_backward_input_nhwc(grad_output, weight, args.groups)
        # (the input's channel count where the weight's output count would be: the kernel needs them equal)
        if runs_narrow("conv_backward_input", grad_output, (input_shape[1], *weight.shape[1:]), args):
            if args.shuffle_groups > 1:
                return self._shuffled_depthwise_gradients(grad_output, None, weight, input_shape, weight.shape, args)[0]
            return load().narrow_backward_input_nhwc(grad_output, weight, list(input_shape), args.stride,
                                                     args.padding)
        one_d = args.spatial_dims == 1
        grad = load().conv_backward_input(lift_to_2d(grad_output, one_d), lift_to_2d(weight, one_d),
                                          lift_shape_to_2d(input_shape, one_d), *arguments_as_2d(args),
                                          args.shuffle_groups)
        return grad.squeeze(2) if one_d else grad

    def conv_backward_input_accumulating(self, grad_output, weight, input_shape, args, input, accumulate):
        if _is_pointwise(weight.shape, args) and memory_format_of(grad_output) == torch.channels_last:
            return load().pointwise_backward_input_nhwc(grad_output, weight, args.groups, accumulate)
        return None

    def conv_backward_accumulating(self, grad_output, input, weight, args, accumulate):
        if _is_pointwise(weight.shape, args) and memory_format_of(input) == torch.channels_last:
            return tuple(load().pointwise_backward_nhwc(grad_output, input, weight, args.groups, accumulate))
        return None

    def conv_backward(self, grad_output, input, weight, args):
        if _is_pointwise(weight.shape, args) and memory_format_of(input) == torch.channels_last:
            return tuple(load().pointwise_backward_nhwc(grad_output, input, weight, args.groups))
        if args.shuffle_groups > 1 and runs_narrow("conv_backward", grad_output, weight.shape, args):
            return self._shuffled_depthwise_gradients(grad_output, input, weight, input.shape, weight.shape, args)
        return super().conv_backward(grad_output, input, weight, args)

    def conv_backward_weight(self, grad_output, input, weight_shape, args):
        if _is_pointwise(weight_shape, args) and memory_format_of(input) == torch.channels_last:
            return load().pointwise_backward_weight_nhwc(grad_output, input, list(weight_shape), args.groups)
        if runs_narrow("conv_backward_weight", input, weight_shape, args):
            if args.shuffle_groups > 1:
                return self._shuffled_depthwise_gradients(grad_output, input, None, input.shape, weight_shape, args)[1]
            return load().narrow_backward_weight_nhwc(grad_output, input, list(weight_shape), args.stride,
                                                      args.padding)
        one_d = args.spatial_dims == 1
        grad = load().conv_backward_weight(lift_to_2d(grad_output, one_d), lift_to_2d(input, one_d),
                                           lift_shape_to_2d(weight_shape, one_d), *arguments_as_2d(args),
                                           args.shuffle_groups)
        return grad.squeeze(2) if one_d else grad

    def _shuffled_depthwise_gradients(self, grad_output, input, weight, input_shape, weight_shape, args):
        """The gradients of a depthwise conv that reads through a shuffle, on narrow_nhwc.cpp: the conv with the
        shuffle paid on its output (aten.py), so both gradients read the unshuffled output gradient. The input's
        (None without `weight`) and the weight's (None without `input`)."""
        s = args.shuffle_groups
        grad = _shuffled(grad_output, grad_output.shape[1] // s)  # (the inverse shuffle)
        plain = dataclasses.replace(args, shuffle_groups=1)
        grad_input = grad_weight = None
        if weight is not None:
            grad_input = self.conv_backward_input(grad, along_channels(weight, False, s), input_shape, plain)
        if input is not None:
            grad_weight = along_channels(self.conv_backward_weight(grad, input, weight_shape, plain), True, s)
        return grad_input, grad_weight


def _shuffled(x: torch.Tensor, groups: int) -> torch.Tensor:
    """channel_shuffle(x, groups) as the dispatcher runs it: torch's or this backend's kernel, whichever the tuner
    found faster for the shape (torch's is 1.5-4x slower on some channels_last shapes, faster on small ones)."""
    return run_channel_shuffle(x, groups) if groups > 1 else x
