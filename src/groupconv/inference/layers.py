"""The layers an optimised model runs: a conv whose backend was chosen once per input signature, what is left of a
folded BatchNormAct2d, and pooling and linear layers that run groupconv's kernels where those measure faster."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..nn.base import GroupedConvMixin
from ..ops.allocator import release_free_memory
from ..ops.arguments import (ConvArguments, check_conv_call_once, memory_format_of, output_size,
                             suggested_memory_format)
from ..ops.backends import native
from ..ops.backends.native.backend import VECTOR_BYTES, runs_narrow
from ..ops.dispatch import ConvProblem, select_backend
from ..ops.tuning.timing import median_seconds_interleaved

# Timed runs of each way to run a layer when its input signature is first seen (the median is kept).
PLAN_REPEATS = 5
# The most input channels groupconv's first-layer conv kernel is offered for (an image's 3, or a few more), and the
# most output vectors (its accumulators: 4 vector registers a pixel, 64 float32 channels).
FEW_CHANNELS = 4
FEW_CHANNELS_OUTPUT_VECTORS = 4
# The largest batch groupconv's linear kernel is offered for: one pass over the weights serves the whole batch, which
# wins at a classifier's batch 1 to 4 and loses to a matrix product's blocking at batch 32.
LINEAR_MAX_BATCH = 8


def fastest_way(ways: dict[str, Callable], *inputs) -> str:
    """The name of the way (a function of `inputs`) that runs them fastest, or of the only one."""
    if len(ways) == 1:
        return next(iter(ways))
    # (in alternation: a busy moment then slows every way alike instead of crowning whichever ran before it)
    seconds = median_seconds_interleaved({name: (lambda run=run: run(*inputs)) for name, run in ways.items()},
                                         PLAN_REPEATS, warmup=1)
    return min(seconds, key=seconds.get)


def apply_epilogue(x: Tensor, relu: bool, residual: Optional[Tensor], concat: Optional[Tensor]) -> Tensor:
    """relu(x + residual), then torch.cat((that, concat), 1), in place on `x` (a conv's own output, which nothing
    else reads)."""
    if residual is not None:
        x = x.add_(residual)
    if relu:
        x = x.relu_()
    if concat is not None:
        x = torch.cat((x, concat), 1)
    return x


class ConvEpilogue(torch.nn.Module):
    """What is left of a BatchNormAct2d once its normalisation is folded into the conv before it: the residual add,
    ReLU and concatenation (apply_epilogue), in place on the conv's output."""

    def __init__(self, relu: bool):
        super().__init__()
        self.relu = relu

    def forward(self, x: Tensor, residual: Optional[Tensor] = None, concat: Optional[Tensor] = None) -> Tensor:
        return apply_epilogue(x, self.relu, residual, concat)

    def extra_repr(self) -> str:
        return f"relu={self.relu}"


def _adds_exactly(residual: Tensor, input: Tensor, weight: Tensor, arguments: ConvArguments) -> bool:
    """Whether a kernel's fused add can take `residual`: of the conv output's shape exactly (the plain add would
    broadcast), channels_last, of the input's dtype."""
    spatial = output_size(input.shape[2:], weight.shape[2:], arguments.stride, arguments.padding, arguments.padding,
                          arguments.dilation)
    return (residual.shape == (input.shape[0], weight.shape[0], *spatial) and residual.dtype == input.dtype
            and residual.device == input.device and memory_format_of(residual) == torch.channels_last)


def _native_pointwise_runs(input: Tensor, weight: Tensor, arguments: ConvArguments) -> bool:
    """Whether groupconv's 1x1 kernel (csrc/pointwise.cpp) can run the call with its epilogue: a 1x1 conv, stride 1,
    no padding, on a channels_last float32 or float64 CPU input, the native kernels built."""
    return (_native_floats(input) and input.dim() == 4 and memory_format_of(input) == torch.channels_last
            and tuple(weight.shape[2:]) == (1, 1) and tuple(arguments.stride) == (1, 1)
            and tuple(arguments.padding) == (0, 0))


def _native_narrow_runs(input: Tensor, weight: Tensor, arguments: ConvArguments) -> bool:
    """Whether groupconv's channels_last depthwise and narrow-group kernel (csrc/narrow_nhwc.cpp) runs the call as
    it is: a float CPU input within the kernel's limits, no fused shuffle, the native kernels built."""
    return (_native_floats(input) and input.dim() == 4 and arguments.shuffle_groups == 1
            and runs_narrow("conv_forward", input, weight.shape, arguments))


def _native_few_channels_runs(input: Tensor, weight: Tensor, arguments: ConvArguments) -> bool:
    """Whether groupconv's conv for an input of few channels (csrc/inference_ops.cpp) runs the call: a network's
    first conv on an image, in whatever layout the image comes."""
    return (_native_floats(input) and input.dim() == 4 and arguments.groups == 1 and arguments.shuffle_groups == 1
            and input.shape[1] <= FEW_CHANNELS
            and weight.shape[0] * input.element_size() <= FEW_CHANNELS_OUTPUT_VECTORS * VECTOR_BYTES
            and tuple(arguments.dilation) == (1, 1))


def _onednn_runs(conv: torch.nn.Module, input: Tensor, arguments: ConvArguments) -> bool:
    """Whether oneDNN's fused convolution (torch.ops.mkldnn._convolution_pointwise) can run the call: a 2-D
    float32 conv on the CPU in channels_last, torch built with oneDNN."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and input.device.type == "cpu" and input.dtype == torch.float32 and input.dim() == 4
            and memory_format_of(input) == torch.channels_last and arguments.spatial_dims == 2)


class PlannedConv(torch.nn.Module):
    """A groupconv conv layer, with the BatchNormAct2d's epilogue folded after it where there was one (relu, and
    the residual and concat arguments), that chooses how to run once per input signature (shape, dtype, device,
    strides, threads, the residual's shape and strides) and then calls that kernel directly.

    The ways (candidates), timed on the first input of each signature and the fastest kept:
    - the dispatcher's choice (its backend's kernel called directly), then the epilogue in place;
    - for a 1x1 conv, groupconv's 1x1 kernel with the epilogue fused: it starts its sums from the residual, applies
      the ReLU as it writes the output and makes an input shuffle by the order of its reads, its weights packed once;
    - for a depthwise or narrow-group conv, groupconv's kernel for those, its filters packed once, the ReLU fused;
    - for a network's first conv on an image of few channels, groupconv's kernel for it;
    - oneDNN's convolution (torch.ops.mkldnn._convolution_pointwise, the kernel torch.compile's CPU backend uses)
      with the ReLU, or the residual add and the ReLU, fused into the kernel's write of the output, on the weight as
      it is or reordered once into oneDNN's blocked layout for this input size (prepacked); then the concat.
    A plain call pays for groupconv's argument checks, the eager path's tests and the dispatcher's lookups every
    time. A call none of these covers (an unbatched input, 'same' padding with an odd total, a padding mode other
    than zeros, autocast) runs the layer as it was. A backend forced later (ops.use_backend) does not change a
    signature's choice."""

    def __init__(self, conv: GroupedConvMixin, relu: bool = False):
        super().__init__()
        self.conv = conv
        self.relu = relu
        # Per signature: the function running the conv and its ReLU and residual add, run(input, residual).
        self._plans: dict[tuple, Callable[[Tensor, Optional[Tensor]], Tensor]] = {}
        self._chosen: dict[tuple, str] = {}
        # The last call's input shape and strides, residual signature and plan (programs.py's straight-line programs).
        self.last_plan: Optional[tuple] = None

    def forward(self, input: Tensor, residual: Optional[Tensor] = None, concat: Optional[Tensor] = None) -> Tensor:
        shape, strides = input.shape, input.stride()
        residual_signature = None if residual is None else (residual.shape, residual.stride(), residual.dtype)
        key = (shape, strides, input.dtype, input.device, torch.get_num_threads(), residual_signature)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(input, residual, key)
            # The timed runs left free blocks of this layer's sizes, which kept freed memory would hold while the
            # next layers plan with theirs: given back now, the model's first forward holds what one layer's timing
            # needs, not the sum of all (MobileNet at batch 32: 1.66 GB resident before, when a forward needs 0.47).
            release_free_memory()
        self.last_plan = (shape, strides, residual_signature, plan)
        output = plan(input, residual)
        return output if concat is None else torch.cat((output, concat), 1)

    def _plan(self, input: Tensor, residual: Optional[Tensor], key: tuple):
        candidates = self.candidates(input, residual)
        chosen = self._chosen[key] = fastest_way(candidates, input, residual)
        return candidates[chosen]

    def candidates(self, input: Tensor, residual: Optional[Tensor]) -> dict[str, Callable]:
        """The ways to run this call, by name: each a function (input, residual) -> relu(conv(input) + residual)
        (ReLU where the layer has one, the residual where given)."""
        conv, spatial_dims, relu = self.conv, len(self.conv.kernel_size), self.relu

        def as_it_was(x: Tensor, residual: Optional[Tensor]) -> Tensor:
            return apply_epilogue(conv(x), relu, residual, None)

        if (conv.padding_mode != "zeros" or input.dim() != spatial_dims + 2 or input.numel() == 0
                or torch.is_autocast_enabled(input.device.type)):
            return {"the layer as it was": as_it_was}
        arguments, extra_after = check_conv_call_once(input, conv.weight, conv.bias, conv.stride, conv.padding,
                                                      conv.dilation, conv.groups, conv.shuffle_groups, spatial_dims)
        if any(extra_after):
            return {"the layer as it was": as_it_was}
        candidates = {"dispatcher": self._dispatched(input, arguments)}
        adds = residual is None or _adds_exactly(residual, input, conv.weight, arguments)
        if _native_pointwise_runs(input, conv.weight, arguments) and adds:
            candidates["groupconv 1x1 fused"] = self._native_pointwise(arguments)
        if _native_narrow_runs(input, conv.weight, arguments):
            candidates["groupconv narrow groups"] = self._native_narrow(arguments, residual)
        if _native_few_channels_runs(input, conv.weight, arguments):
            candidates["groupconv first-layer conv"] = self._native_few_channels(arguments)
        if _onednn_runs(conv, input, arguments) and adds:
            candidates["onednn"] = self._onednn(arguments, conv.weight)
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                conv.weight, list(arguments.padding), list(arguments.stride), list(arguments.dilation),
                arguments.groups, list(input.shape))
            candidates["onednn prepacked"] = self._onednn(arguments, packed)
        return candidates

    def _dispatched(self, input: Tensor, arguments: ConvArguments) -> Callable:
        conv, relu = self.conv, self.relu
        # A contiguous input of a channels_last weight (an image the model's first conv reads as it comes) is
        # converted first, as groupconv's and torch's convs do: the layers after it then stay channels_last.
        memory_format = memory_format_of(input)
        if memory_format == torch.contiguous_format and input.dim() == 4:
            memory_format = suggested_memory_format(conv.weight)
        input = input.contiguous(memory_format=memory_format)
        problem = ConvProblem.build("conv_forward", input.shape, conv.weight.shape, arguments, input,
                                    has_bias=conv.bias is not None)
        backend = select_backend(problem, lambda b: b.conv_forward(input, conv.weight, conv.bias, arguments))
        weight, bias = conv.weight, conv.bias

        def run(x: Tensor, residual: Optional[Tensor]) -> Tensor:
            output = backend.conv_forward(x.contiguous(memory_format=memory_format), weight, bias,
                                          arguments).contiguous(memory_format=memory_format)
            return apply_epilogue(output, relu, residual, None)

        return run

    def _native_pointwise(self, arguments: ConvArguments) -> Callable:
        # relu(conv(shuffle(x)) + residual): the shuffle made by the kernel's reads, the rest by its writes; the
        # weights packed once here (packing took about as long as the conv of a 7x7 input at batch 1).
        return native.load().PointwiseKernel(self.conv.weight, self.conv.bias, arguments.groups, self.relu,
                                             arguments.shuffle_groups)

    def _native_narrow(self, arguments: ConvArguments, residual: Optional[Tensor]) -> Callable:
        # The kernel called directly, its filters packed once and the ReLU applied as it writes: the dispatcher keeps
        # torch's kernels for these small layers unless groupconv's win by 30 us (a call through groupconv's eager
        # path costs that much more Python), and oneDNN's convolution pays 30-40 us a call whatever its size
        # (ShuffleNet's 7x7 and 14x14 depthwise convs at batch 1: 33-35 us against 10 us here).
        relu = self.relu
        kernel = native.load().NarrowKernel(self.conv.weight, self.conv.bias, list(arguments.stride),
                                            [int(p) for p in arguments.padding], relu and residual is None)
        if residual is None:
            return lambda x, residual: kernel(x)
        return lambda x, residual: apply_epilogue(kernel(x), relu, residual, None)

    def _native_few_channels(self, arguments: ConvArguments) -> Callable:
        # An image's 3 channels: oneDNN takes 270 us for ShuffleNet's first conv at batch 1 (after the image's
        # conversion to channels_last, which this kernel does not need), this kernel 210.
        kernel, weight, bias, relu = native.load().few_channels_conv_nhwc, self.conv.weight, self.conv.bias, self.relu
        stride, padding = list(arguments.stride), [int(p) for p in arguments.padding]

        def run(x: Tensor, residual: Optional[Tensor]) -> Tensor:
            if residual is None:
                return kernel(x, weight, bias, stride, padding, relu)
            return apply_epilogue(kernel(x, weight, bias, stride, padding, False), relu, residual, None)

        return run

    def _onednn(self, arguments: ConvArguments, weight: Tensor) -> Callable:
        padding, stride, dilation = list(arguments.padding), list(arguments.stride), list(arguments.dilation)
        groups, shuffle_groups, bias = arguments.groups, arguments.shuffle_groups, self.conv.bias
        relu = "relu" if self.relu else None
        pointwise = torch.ops.mkldnn._convolution_pointwise

        def run(x: Tensor, residual: Optional[Tensor]) -> Tensor:
            if shuffle_groups > 1:
                x = torch.channel_shuffle(x, shuffle_groups)
            if residual is None:
                return pointwise(x, weight, bias, padding, stride, dilation, groups, relu or "none", [None], "")
            # relu(conv(x) + residual) as the kernel writes its output (oneDNN's binary post-op)
            return pointwise.binary(x, residual, weight, bias, padding, stride, dilation, groups, "add", None, relu,
                                    [None], "")

        return run

    def extra_repr(self) -> str:
        chosen = sorted(set(self._chosen.values()))
        return f"relu={self.relu}, chosen: {', '.join(chosen) or 'none yet'}"


class PlannedLayer(torch.nn.Module):
    """A layer of one tensor input that runs, per input signature (shape, strides, dtype, device, threads), the
    fastest of its ways (`candidates`), timed on the first input of the signature."""

    def __init__(self):
        super().__init__()
        self._plans: dict[tuple, Callable[[Tensor], Tensor]] = {}
        self._chosen: dict[tuple, str] = {}
        self.last_plan: Optional[tuple] = None  # the last call's input shape and strides, and plan

    def forward(self, input: Tensor) -> Tensor:
        shape, strides = input.shape, input.stride()
        key = (shape, strides, input.dtype, input.device, torch.get_num_threads())
        plan = self._plans.get(key)
        if plan is None:
            ways = self.candidates(input)
            chosen = self._chosen[key] = fastest_way(ways, input)
            plan = self._plans[key] = ways[chosen]
            release_free_memory()  # (what the timed runs left free: PlannedConv.forward says why)
        self.last_plan = (shape, strides, plan)
        return plan(input)

    def candidates(self, input: Tensor) -> dict[str, Callable[[Tensor], Tensor]]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"chosen: {', '.join(sorted(set(self._chosen.values()))) or 'none yet'}"


class PlannedPool(PlannedLayer):
    """A torch.nn.MaxPool2d or AvgPool2d that runs the faster of torch's pooling and groupconv's channels_last one
    (csrc/inference_ops.cpp: no indices computed, the channels of each output pixel in vector registers; ShuffleNet's
    first pool at batch 1, 24 channels at 112x112: 68 us against 149)."""

    def __init__(self, pool: torch.nn.MaxPool2d | torch.nn.AvgPool2d):
        super().__init__()
        self.pool = pool

    def candidates(self, input: Tensor) -> dict[str, Callable[[Tensor], Tensor]]:
        ways: dict[str, Callable[[Tensor], Tensor]] = {"torch": self.pool}
        pool = self.pool
        kernel_size, stride, padding = (_pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size),
                                        _pair(pool.padding))
        if not (_native_floats(input) and input.dim() == 4 and memory_format_of(input) == torch.channels_last
                and all(0 <= 2 * p <= k for p, k in zip(padding, kernel_size))):
            return ways
        ceil_mode = pool.ceil_mode
        if isinstance(pool, torch.nn.MaxPool2d) and _pair(pool.dilation) == [1, 1] and not pool.return_indices:
            kernel = native.load().max_pool2d_nhwc
            ways["groupconv"] = lambda x: kernel(x, kernel_size, stride, padding, ceil_mode)
        elif isinstance(pool, torch.nn.AvgPool2d) and pool.divisor_override is None:
            kernel, count_include_pad = native.load().avg_pool2d_nhwc, pool.count_include_pad
            ways["groupconv"] = lambda x: kernel(x, kernel_size, stride, padding, ceil_mode, count_include_pad)
        return ways


class PlannedLinear(PlannedLayer):
    """A torch.nn.Linear that runs the faster of torch's and, for a small batch, groupconv's kernel
    (csrc/inference_ops.cpp): a classifier at batch 1 reads its weights from memory at each forward, which torch's
    matrix-vector product does on one thread (ShuffleNet 1x g=1's 576 x 1000 classifier: 59 us against 171, the
    caches flushed before each)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.linear = linear

    def candidates(self, input: Tensor) -> dict[str, Callable[[Tensor], Tensor]]:
        ways: dict[str, Callable[[Tensor], Tensor]] = {"torch": self.linear}
        weight, bias = self.linear.weight, self.linear.bias
        if (_native_floats(input) and input.dim() == 2 and input.shape[0] <= LINEAR_MAX_BATCH
                and weight.dtype == input.dtype and weight.device == input.device
                and (bias is None or bias.dtype == input.dtype)):
            kernel = native.load().linear_small_batch
            ways["groupconv"] = lambda x: kernel(x, weight, bias)
        return ways


def _native_floats(input: Tensor) -> bool:
    """A float32 or float64 CPU tensor, the native kernels built."""
    return (input.device.type == "cpu" and input.dtype in (torch.float32, torch.float64)
            and native.unavailable_reason() is None)


def _pair(value) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)
