"""The derivatives of the convolution's backward ops: gradient penalties and Hessian-vector products.

Both backward ops are bilinear in their tensor arguments, so their own gradients are the other conv ops (the
adjoint identities <a, F(x, w)> = <BI(a, w), x> = <BW(a, x), w>), as with torch's conv.
"""

from __future__ import annotations

from .conv import conv_backward, conv_backward_input, conv_backward_weight, conv_forward


def _backward_input_setup_context(ctx, inputs, output):
    grad_output, weight, input_shape, *conv_arguments = inputs
    ctx.save_for_backward(grad_output, weight)
    ctx.conv_arguments = conv_arguments


def _backward_input_backward(ctx, grad_grad_input):
    grad_output, weight = ctx.saved_tensors
    grad_grad_output = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_grad_output = conv_forward(grad_grad_input, weight, None, *ctx.conv_arguments)
    if ctx.needs_input_grad[1]:
        grad_weight = conv_backward_weight(grad_output, grad_grad_input, list(weight.shape), *ctx.conv_arguments)
    return grad_grad_output, grad_weight, None, None, None, None, None, None


conv_backward_input.register_autograd(_backward_input_backward, setup_context=_backward_input_setup_context)


def _backward_weight_setup_context(ctx, inputs, output):
    grad_output, input, weight_shape, *conv_arguments = inputs
    ctx.save_for_backward(grad_output, input)
    ctx.conv_arguments = conv_arguments


def _backward_weight_backward(ctx, grad_grad_weight):
    grad_output, input = ctx.saved_tensors
    grad_grad_output = grad_input = None
    if ctx.needs_input_grad[0]:
        grad_grad_output = conv_forward(input, grad_grad_weight, None, *ctx.conv_arguments)
    if ctx.needs_input_grad[1]:
        grad_input = conv_backward_input(grad_output, grad_grad_weight, list(input.shape), *ctx.conv_arguments)
    return grad_grad_output, grad_input, None, None, None, None, None, None


conv_backward_weight.register_autograd(_backward_weight_backward, setup_context=_backward_weight_setup_context)


def _backward_setup_context(ctx, inputs, output):
    grad_output, input, weight, *conv_arguments = inputs
    ctx.save_for_backward(grad_output, input, weight)
    ctx.conv_arguments = conv_arguments


def _backward_backward(ctx, grad_grad_input, grad_grad_weight):
    """The sum of the two single-gradient ops' backward formulas above (either incoming gradient may be None)."""
    grad_output, input, weight = ctx.saved_tensors
    grad_grad_output = grad_input = grad_weight = None
    if ctx.needs_input_grad[0]:
        terms = []
        if grad_grad_input is not None:
            terms.append(conv_forward(grad_grad_input, weight, None, *ctx.conv_arguments))
        if grad_grad_weight is not None:
            terms.append(conv_forward(input, grad_grad_weight, None, *ctx.conv_arguments))
        grad_grad_output = sum(terms) if terms else None
    if ctx.needs_input_grad[1] and grad_grad_weight is not None:
        grad_input = conv_backward_input(grad_output, grad_grad_weight, list(input.shape), *ctx.conv_arguments)
    if ctx.needs_input_grad[2] and grad_grad_input is not None:
        grad_weight = conv_backward_weight(grad_output, grad_grad_input, list(weight.shape), *ctx.conv_arguments)
    return grad_grad_output, grad_input, grad_weight, None, None, None, None, None


conv_backward.register_autograd(_backward_backward, setup_context=_backward_setup_context)
