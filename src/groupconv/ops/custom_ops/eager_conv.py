"""The eager path of the convolution: groupconv.conv2d and friends, called on plain tensors outside tracing.

EagerCall holds one call signature's dispatch problems, built once; EagerConv (and EagerConvWithShortcut, for a
residual block's first conv) run conv.py's implementations and gradient formula through torch.autograd.Functions
(eager.py says why). A call whose forward and backward the dispatcher has settled on torch's kernels for runs
torch's own ops directly.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch
from torch import Tensor

from ..arguments import ConvArguments, memory_format_of
from ..cache import BoundedCache
from ..dispatch import ConvProblem, choices_generation, forced_backend, get_backend, layout_name, remembered_choice
from .conv import (GradientOps, conv_forward, conv_gradients, run_backward_both, run_backward_input,
                   run_backward_weight, run_forward, save_for_gradients)
from .eager import eager_function, in_functorch_transform, profiled, runs_eagerly


class EagerCall:
    """One signature of eager conv calls (shapes, arguments, dtype, device, layout, thread count) and the dispatch
    problems its forward and gradients make, each built once and then looked up: a call pays one dict lookup where it
    built three problems (and their hashes) before. With the ops' implementations minus that work (the run_*
    functions), this is the EagerConv path. Its gradient methods are GradientOps' for the implementations."""

    _calls: ClassVar[BoundedCache[EagerCall]] = BoundedCache()

    def __init__(self, forward_problem: ConvProblem):
        self.forward_problem = forward_problem
        self.conv_arguments = [list(forward_problem.arguments.stride), list(forward_problem.arguments.padding),
                               list(forward_problem.arguments.dilation), forward_problem.arguments.groups,
                               forward_problem.arguments.shuffle_groups]
        self._gradient_problems: dict[tuple, ConvProblem] = {}
        self._on_torch: dict[tuple[bool, bool], bool] = {}  # runs_on_torch's answers, while the choices hold
        self._choices_generation = choices_generation()

    @classmethod
    def of(cls, input: Tensor, weight: Tensor, bias: Optional[Tensor], args: ConvArguments) -> "EagerCall":
        key = (input.shape, weight.shape, bias is None, args, input.dtype, input.device, layout_name(input),
               torch.get_num_threads())
        call = cls._calls.get(key)
        if call is None:
            call = cls._calls.put(key, cls(ConvProblem.build("conv_forward", input.shape, weight.shape, args, input,
                                                             has_bias=bias is not None)))
        return call

    def gradient_problem(self, op: str, like: Tensor) -> ConvProblem:
        """The problem of gradient op `op` (one of CONV_OPS but conv_forward) whose output follows `like`'s layout."""
        key = (op, layout_name(like), torch.get_num_threads())
        problem = self._gradient_problems.get(key)
        if problem is None:
            forward = self.forward_problem
            problem = self._gradient_problems[key] = ConvProblem.build(op, forward.input_shape, forward.weight_shape,
                                                                       forward.arguments, like)
        return problem

    def runs_on_torch(self, input: Tensor, weight: Tensor) -> bool:
        """Whether the dispatcher has chosen torch's own kernels for this call's forward and for the backward it will
        need (and no backend is forced).

        Then the aten backend's forward (F.convNd, with a fused shuffle as torch's channel_shuffle on the smaller
        side) runs with torch's own autograd, and groupconv costs only its argument checks: EagerConv's Python adds
        ~0.1 ms per forward and backward, 10-30% of a 7x7 depthwise layer's time (384 channels read through an
        8-group shuffle: 1.58 ms forward+backward through EagerConv, 1.20 ms this way, 1.07 ms for torch's own
        layer). The answer is kept until the choices are forgotten: right after a large layer's kernels have flushed
        the caches, each Python step of the question costs ~10 us."""
        return bool(self.settled_on_torch(input, weight))

    def settled_on_torch(self, input: Tensor, weight: Tensor) -> bool | None:
        """runs_on_torch's answer, None while a choice it depends on is still to be made."""
        if forced_backend() is not None:
            return False
        needs = (input.requires_grad, weight.requires_grad) if torch.is_grad_enabled() else (False, False)
        if self._choices_generation != choices_generation():
            self._on_torch.clear()
            self._choices_generation = choices_generation()
        answer = self._on_torch.get(needs)
        if answer is None:
            answer = self._settled_on_torch(*needs, input)
            if answer is not None:
                self._on_torch[needs] = answer
        return answer

    def _settled_on_torch(self, input_grad: bool, weight_grad: bool, input: Tensor) -> bool | None:
        """runs_on_torch's answer from the choices made so far; None while one it depends on is still to be made."""
        chosen = remembered_choice(self.forward_problem)
        if chosen != "aten":
            return None if chosen is None else False
        if not (input_grad or weight_grad):
            return True  # no backward op (a bias gradient alone is a sum, never dispatched)
        op = "conv_backward" if input_grad and weight_grad else "conv_backward_input" if input_grad else \
            "conv_backward_weight"
        chosen = remembered_choice(self.gradient_problem(op, input))
        return None if chosen is None else chosen == "aten"

    def forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        return run_forward(self.forward_problem, input, weight, bias)

    def both(self, grad_output: Tensor, input: Tensor, weight: Tensor,
             accumulate: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return run_backward_both(self.gradient_problem("conv_backward", input), grad_output, input, weight,
                                  accumulate)

    def input_only(self, grad_output: Tensor, weight: Tensor, input: Tensor,
                   accumulate: Optional[Tensor] = None) -> Tensor:
        return run_backward_input(self.gradient_problem("conv_backward_input", grad_output), grad_output, weight,
                                   list(input.shape), input, accumulate)

    def weight_only(self, grad_output: Tensor, input: Tensor, weight_shape: list[int]) -> Tensor:
        return run_backward_weight(self.gradient_problem("conv_backward_weight", input), grad_output, input,
                                    weight_shape)


def _eager_conv_setup_context(ctx, inputs, output):
    input, weight, bias, call = inputs
    save_for_gradients(ctx, input, weight, bias)
    ctx.call = call


def _eager_conv_backward(ctx, grad_output, accumulate: Optional[Tensor] = None):
    """EagerConv's gradients (and EagerConvWithShortcut's, `accumulate` its shortcut's gradient)."""
    # A backward that must itself be differentiated (create_graph) goes through the custom ops, which carry the
    # double backward.
    if torch.is_grad_enabled():
        return *conv_gradients(ctx, grad_output, GradientOps(ctx.call.conv_arguments), accumulate), None
    with profiled("groupconv::conv_backward"):
        return *conv_gradients(ctx, grad_output, ctx.call, accumulate), None


EagerConv = eager_function(
    "EagerConv", lambda input, weight, bias, call: call.forward(input, weight, bias), _eager_conv_setup_context,
    _eager_conv_backward,
    """groupconv::conv_forward and its backward for plain eager calls (input, weight, bias, and the call's EagerCall).
    Why: torch.library's Python custom-op dispatch costs ~100 us per call forward and as much backward (measured on a
    32x144x7x7 depthwise layer: 260 us forward against torch's 140), which is most of a small layer's time.""")


def on_torch_ops_only(input: Tensor, weight: Tensor) -> bool:
    """Whether the call runs torch's conv with torch's autograd: inside torch.func transforms (eager.py's
    in_functorch_transform says why), and for operands with no values, whose result torch shapes its own way (no
    input channels: an output with none either) and groupconv's kernels would divide by the empty extent."""
    return in_functorch_transform() or input.numel() == 0 or weight.numel() == 0


def convolution(input: Tensor, weight: Tensor, bias: Optional[Tensor], args: ConvArguments) -> Tensor:
    """conv_forward, with autograd: by torch's own conv where the dispatcher settled on it, else by EagerConv where
    it may run, else by the custom op; inside torch.func transforms and for empty operands by torch's own conv
    (on_torch_ops_only)."""
    if on_torch_ops_only(input, weight):
        return get_backend("aten").conv_forward(input, weight, bias, args)
    if runs_eagerly(input, weight, bias):
        call = EagerCall.of(input, weight, bias, args)
        if call.runs_on_torch(input, weight):
            return torch_convolution(input, weight, bias, args)
        with profiled("groupconv::conv_forward"):
            return EagerConv.apply(input, weight, bias, call)
    # (int(): under torch.jit.trace, padding worked out from the weight's shape holds traced sizes, which the tracer
    # cannot record as the op's int[] argument)
    return conv_forward(input, weight, bias, list(args.stride), [int(p) for p in args.padding], list(args.dilation),
                        args.groups, args.shuffle_groups)


def torch_convolution(input: Tensor, weight: Tensor, bias: Optional[Tensor], args: ConvArguments) -> Tensor:
    """The conv by torch's ops, with torch's autograd, in the layout groupconv's ops promise (a no-op there)."""
    return get_backend("aten").conv_forward(input, weight, bias, args).contiguous(memory_format=memory_format_of(input))


class EagerConvWithShortcut(torch.autograd.Function):
    """EagerConv that also returns its input, as a residual block's shortcut: (conv(input), input), one autograd node.

    Why: the block's input feeds its first conv and its shortcut, and autograd sums the two gradients in a pass of its
    own (2 reads and a write of the input's size: 2.3 ms for each 32x384x28x28 input of ShuffleNet g=8's stage 2).
    Here the node receives both, and the conv's input-gradient kernel adds the shortcut's as it writes its own
    (Backend.conv_backward_accumulating; elsewhere the sum is the same pass autograd would make)."""

    @staticmethod
    def forward(ctx, input, weight, bias, call):
        output = call.forward(input, weight, bias)
        _eager_conv_setup_context(ctx, (input, weight, bias, call), output)
        ctx.set_materialize_grads(False)  # (an unused output's gradient stays None: nothing to add)
        return output, input  # (autograd returns the input as a view whose gradient comes here)

    @staticmethod
    def backward(ctx, grad_output, grad_shortcut):
        if grad_output is None:  # the conv's output unused: the input's gradient is the shortcut's alone
            return grad_shortcut, None, None, None
        return _eager_conv_backward(ctx, grad_output, grad_shortcut)


def convolution_with_shortcut(input: Tensor, weight: Tensor, bias: Optional[Tensor],
                              args: ConvArguments) -> tuple[Tensor, Tensor]:
    """(convolution(input, ...), input): by EagerConvWithShortcut where the call runs eagerly on groupconv's
    kernels; elsewhere (torch's kernels settled on, compile and export, dispatch modes) the input itself, whose two
    gradients autograd sums."""
    if runs_eagerly(input, weight, bias) and not on_torch_ops_only(input, weight):
        call = EagerCall.of(input, weight, bias, args)
        if not call.runs_on_torch(input, weight):
            with profiled("groupconv::conv_forward"):
                return EagerConvWithShortcut.apply(input, weight, bias, call)
    return convolution(input, weight, bias, args), input
