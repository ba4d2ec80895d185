"""Both gradients of a convolution, each computed by its own single-gradient op on its own best backend.

A strategy: a tuning contender of conv_backward that combines the registered backends (dispatch.register_strategy).
"""

from __future__ import annotations

from ..custom_ops.conv import conv_backward_weight_implementation, run_backward_input, unpacked
from ..dispatch import Backend, ConvProblem


class SplitGradients(Backend):
    """Each gradient by its own single-gradient op, each dispatched (and tuned) on its own: the best backend for the
    input gradient need not be the best for the weight gradient, and oneDNN computes a depthwise conv's two
    gradients faster apart than together. A tuning contender of conv_backward (a registered strategy), never forced."""

    name = "split"
    description = "the input and the weight gradient each on its own best backend"
    SUPPORTED_OPS = ("conv_backward",)

    def conv_backward(self, grad_output, input, weight, args):
        return self.conv_backward_accumulating(grad_output, input, weight, args, None)

    def conv_backward_accumulating(self, grad_output, input, weight, args, accumulate):
        # The implementations, not the custom ops: this runs inside an op already (no autograd, no tracing here).
        problem = ConvProblem.build("conv_backward_input", input.shape, weight.shape, args, grad_output)
        return (run_backward_input(problem, grad_output, weight, list(input.shape), input, accumulate),
                conv_backward_weight_implementation(grad_output, input, list(weight.shape), *unpacked(args)))

