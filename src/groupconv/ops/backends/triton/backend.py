"""The Triton kernels (kernels.py) as a groupconv backend for CUDA tensors.

The wrapper's work is bookkeeping: lift a 1-D conv to height 1 (as the native backend does), allocate the
output in the layout the caller will want, pick the kernel form and tile sizes, and launch. The
kernels read every tensor through its strides, so no input is copied, channels_last included.

Kernel form: implicit GEMM (`tl.dot` on tensor cores) when a group has at least
IMPLICIT_GEMM_MIN_CHANNELS input and output channels, so that every dot tile is mostly real data;
otherwise the direct form (narrow groups such as ResNeXt's 4 channels, depthwise convs).

On a GPU the tuner (ops/tuning) times this backend against aten (cuDNN) per problem and keeps the
faster. Without a GPU the kernels can run in Triton's interpreter on CPU tensors, which is how the
tests check them on a CPU-only machine: that needs TRITON_INTERPRET=1, set before anything imports
triton (which decorates its own library functions on import; `import groupconv` imports it through
torch.utils.flop_counter, so tests/conftest.py sets it first), and the explicit opt-in
GROUPCONV_TRITON_ON_CPU=1, so that ordinary CPU dispatch never picks an interpreter that runs
thousands of times slower than the native kernels.
"""

from __future__ import annotations

import math

import torch

from ...arguments import (ConvArguments, arguments_as_2d, lift_shape_to_2d, lift_to_2d, memory_format_of,
                         output_size)
from .... import environment
from ...dispatch import CONV_OPS, Backend, ConvProblem, Problem

ENV_INTERPRET = "TRITON_INTERPRET"
ENV_ON_CPU = "GROUPCONV_TRITON_ON_CPU"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Narrower groups would pad a 16-wide dot tile with zeros: they run on the direct kernels.
IMPLICIT_GEMM_MIN_CHANNELS = 16
# The kernels index with 32-bit integers.
MAX_ELEMENTS = 2**31 - 1
# Weight gradient: pixels (N*OH*OW) reduced by one program before the range is split across programs.
PIXELS_PER_SPLIT = 8192
MAX_SPLITS = 64

_kernels = None
_import_error: str | None = None


def interpreter_enabled() -> bool:
    return environment.flag(ENV_INTERPRET, False)


def kernels():
    """The kernels module, imported on first use (importing triton costs a second); None if triton is missing."""
    global _kernels, _import_error
    if _kernels is None and _import_error is None:
        try:
            from . import kernels as module
        except Exception as error:  # ImportError, or a triton that fails on import (driver, version)
            _import_error = f"triton is not usable ({type(error).__name__}: {error})"
        else:
            _kernels = module
    return _kernels


def unavailable_reason() -> str | None:
    kernels()
    return _import_error


def _device_reason(device_type: str) -> str | None:
    if device_type == "cuda":
        return None
    if device_type == "cpu" and interpreter_enabled() and environment.flag(ENV_ON_CPU, False):
        return None
    return (f"device {device_type} is not cuda (CPU tensors run only in Triton's interpreter, for tests: "
            f"{ENV_INTERPRET}=1 and {ENV_ON_CPU}=1)")


def uses_implicit_gemm(in_per_group: int, out_per_group: int) -> bool:
    """The kernel form for a problem: implicit GEMM for wide groups, direct for narrow ones."""
    return min(in_per_group, out_per_group) >= IMPLICIT_GEMM_MIN_CHANNELS


def _dot_options(dtype: torch.dtype) -> dict:
    """tl.dot settings: float32 follows torch's cuDNN TF32 switch, as torch's own conv does on a GPU.

    Triton's interpreter multiplies bfloat16 dot operands as raw 16-bit integers (triton 3.9), so
    there the operands are upcast first; on a GPU they go to the tensor cores as they are.
    """
    precision = None  # half types: Triton's default (tensor cores, float32 accumulation)
    if dtype == torch.float32:
        precision = "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return {"DOT_PRECISION": precision, "DOT_IN_FP32": interpreter_enabled() and dtype == torch.bfloat16}


def _dot_block(extent: int, largest: int) -> int:
    """A tl.dot tile side: a power of two between 16 (the smallest tl.dot accepts) and `largest`."""
    return max(16, min(largest, _next_power_of_2(extent)))


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _strides(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.stride())


def _geometry(args: ConvArguments) -> dict:
    """The kernels' stride, padding and dilation arguments (2-D; a 1-D conv lifted to height 1)."""
    (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w) = arguments_as_2d(args)
    return dict(stride_h=stride_h, stride_w=stride_w, pad_h=pad_h, pad_w=pad_w, dil_h=dil_h, dil_w=dil_w)


class TritonBackend(Backend):
    name = "triton"
    description = ("Triton kernels for CUDA: implicit-GEMM (wide groups) and direct (narrow groups, depthwise) "
                   "convs, the shuffle fused into their reads")

    SUPPORTED_OPS = CONV_OPS  # (the convs fuse the channel shuffle into their reads)
    # float64 is left out: the kernels accumulate in float32, which would lose its precision (aten runs it).
    SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
    # Devices are checked in problem_reasons: CPU tensors run too, in Triton's interpreter, when the tests ask.

    def problem_reasons(self, problem: Problem) -> list[str]:
        reasons = []
        device = _device_reason(problem.device_type)
        if device:
            reasons.append(device)
        if problem.arguments.spatial_dims not in (1, 2):
            reasons.append(f"{problem.arguments.spatial_dims}-D convolution (1-D and 2-D only)")
        else:
            largest = max(math.prod(problem.input_shape), math.prod(problem.weight_shape),
                          math.prod(self._output_shape(problem)))
            if largest > MAX_ELEMENTS:
                reasons.append(f"a tensor of {largest} elements (the kernels index with 32 bits: at most "
                               f"{MAX_ELEMENTS})")
        return reasons

    def unavailable_reason(self) -> str | None:
        return unavailable_reason()

    @staticmethod
    def _output_shape(problem: ConvProblem) -> tuple[int, ...]:
        args = problem.arguments
        spatial = output_size(problem.input_shape[2:], problem.weight_shape[2:], args.stride, args.padding,
                              args.padding, args.dilation)
        return (problem.input_shape[0], problem.weight_shape[0], *spatial)

    # --------------------------------------------------------------------------------------- forward
    def conv_forward(self, input, weight, bias, args):
        one_d = args.spatial_dims == 1
        x, w = lift_to_2d(input, one_d), lift_to_2d(weight, one_d)
        n, c, h, wd = x.shape
        m, in_per_group, kh, kw = w.shape
        out_per_group = m // args.groups
        stride, padding, dilation = arguments_as_2d(args)
        oh, ow = output_size((h, wd), (kh, kw), stride, padding, padding, dilation)
        y = torch.empty((n, m, oh, ow), dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
        if y.numel() == 0:
            return y.squeeze(2) if one_d else y
        common = dict(KH=kh, KW=kw, SHUFFLE_GROUPS=args.shuffle_groups, HAS_BIAS=bias is not None, **_geometry(args))
        bias_arg = bias if bias is not None else w  # never read when HAS_BIAS is false
        module = kernels()
        if uses_implicit_gemm(in_per_group, out_per_group):
            block_n = _dot_block(out_per_group, 64)
            block_k = _dot_block(in_per_group * kh * kw, 32)
            grid = (_cdiv(n * oh * ow, 64), _cdiv(out_per_group, block_n), args.groups)
            module.conv_forward_implicit_gemm_kernel[grid](
                x, w, bias_arg, y, n, c, h, wd, oh, ow, in_per_group, out_per_group,
                *_strides(x), *_strides(w), *_strides(y), **common, **_dot_options(x.dtype),
                BLOCK_M=64, BLOCK_N=block_n, BLOCK_K=block_k)
        else:
            block_p, block_t = _direct_blocks(oh * ow, in_per_group * kh * kw)
            grid = (n * m, _cdiv(oh * ow, block_p))
            module.conv_forward_direct_kernel[grid](
                x, w, bias_arg, y, c, h, wd, m, oh, ow, in_per_group, out_per_group,
                *_strides(x), *_strides(w), *_strides(y), **common, BLOCK_P=block_p, BLOCK_T=block_t)
        return y.squeeze(2) if one_d else y

    # ------------------------------------------------------------------------------ gradient of input
    def conv_backward_input(self, grad_output, weight, input_shape, args, input=None):
        one_d = args.spatial_dims == 1
        go, w = lift_to_2d(grad_output, one_d), lift_to_2d(weight, one_d)
        n, c, h, wd = lift_shape_to_2d(input_shape, one_d)
        m, in_per_group, kh, kw = w.shape
        out_per_group = m // args.groups
        oh, ow = go.shape[2:]
        grad_input = torch.empty((n, c, h, wd), dtype=go.dtype, device=go.device, memory_format=memory_format_of(go))
        if go.numel() == 0:  # an empty batch, or nothing flows back
            return grad_input.zero_().squeeze(2) if one_d else grad_input.zero_()
        common = dict(KH=kh, KW=kw, SHUFFLE_GROUPS=args.shuffle_groups, **_geometry(args))
        module = kernels()
        if uses_implicit_gemm(in_per_group, out_per_group):
            block_n = _dot_block(in_per_group, 64)
            block_k = _dot_block(out_per_group * kh * kw, 32)
            grid = (_cdiv(n * h * wd, 64), _cdiv(in_per_group, block_n), args.groups)
            module.conv_backward_input_implicit_gemm_kernel[grid](
                go, w, grad_input, n, c, h, wd, oh, ow, in_per_group, out_per_group,
                *_strides(go), *_strides(w), *_strides(grad_input), **common, **_dot_options(go.dtype),
                BLOCK_M=64, BLOCK_N=block_n, BLOCK_K=block_k)
        else:
            block_p, block_t = _direct_blocks(h * wd, out_per_group * kh * kw)
            grid = (n * c, _cdiv(h * wd, block_p))
            module.conv_backward_input_direct_kernel[grid](
                go, w, grad_input, c, h, wd, oh, ow, in_per_group, out_per_group,
                *_strides(go), *_strides(w), *_strides(grad_input), **common, BLOCK_P=block_p, BLOCK_T=block_t)
        return grad_input.squeeze(2) if one_d else grad_input

    # ----------------------------------------------------------------------------- gradient of weight
    def conv_backward_weight(self, grad_output, input, weight_shape, args):
        one_d = args.spatial_dims == 1
        go, x = lift_to_2d(grad_output, one_d), lift_to_2d(input, one_d)
        n, c, h, wd = x.shape
        m, in_per_group, kh, kw = lift_shape_to_2d(weight_shape, one_d)
        out_per_group = m // args.groups
        oh, ow = go.shape[2:]
        pixels, columns = n * oh * ow, in_per_group * kh * kw
        if pixels == 0:
            return torch.zeros(tuple(weight_shape), dtype=x.dtype, device=x.device)
        common = dict(KH=kh, KW=kw, SHUFFLE_GROUPS=args.shuffle_groups, **_geometry(args))
        module = kernels()
        if uses_implicit_gemm(in_per_group, out_per_group):
            block_m, block_n, block_k = _dot_block(out_per_group, 64), _dot_block(columns, 64), 32
            splits, per_split = _splits(pixels, block_k)
            partial = torch.empty((splits, m, columns), dtype=torch.float32, device=x.device)
            grid = (_cdiv(out_per_group, block_m), _cdiv(columns, block_n), args.groups * splits)
            module.conv_backward_weight_implicit_gemm_kernel[grid](
                go, x, partial, n, c, h, wd, oh, ow, m, in_per_group, out_per_group, per_split, splits,
                *_strides(go), *_strides(x), **common, **_dot_options(x.dtype),
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
        else:
            block_p, block_t = _direct_blocks(pixels, columns)
            splits, per_split = _splits(pixels, block_p)
            partial = torch.empty((splits, m, columns), dtype=torch.float32, device=x.device)
            grid = (m, _cdiv(columns, block_t), splits)
            module.conv_backward_weight_direct_kernel[grid](
                go, x, partial, n, c, h, wd, oh, ow, m, in_per_group, out_per_group, per_split,
                *_strides(go), *_strides(x), **common, BLOCK_P=block_p, BLOCK_T=block_t)
        # The split parts' sum: a small (splits, M, C/G*KH*KW) reduction, deterministic (no atomics).
        return partial.sum(0).to(x.dtype).view(tuple(weight_shape))


def _direct_blocks(pixels: int, reduction: int) -> tuple[int, int]:
    """Pixel and (channel, tap) block sizes of a direct kernel: a [BLOCK_P, BLOCK_T] float32 tile of at most 4096."""
    block_t = min(32, _next_power_of_2(reduction))
    block_p = max(16, min(4096 // block_t, _next_power_of_2(pixels)))
    return block_p, block_t


def _splits(pixels: int, block: int) -> tuple[int, int]:
    """How many programs share a weight gradient's pixel range, and the range each gets (a multiple of `block`,
    so that no pixel falls in two ranges)."""
    splits = max(1, min(MAX_SPLITS, _cdiv(pixels, PIXELS_PER_SPLIT)))
    per_split = _cdiv(_cdiv(pixels, splits), block) * block
    return _cdiv(pixels, per_split), per_split
