"""ops.conv_with_shortcut and nn.with_shortcut: a residual block's first conv and its shortcut as one autograd node.

The node adds the shortcut's gradient into the conv's input gradient (in the native 1x1 kernel as it writes it,
elsewhere as a sum): every backend must give the gradients of the plain formulation, conv(x) and x used again.
"""

import pytest
import torch

from groupconv import nn as gnn
from groupconv import ops
from groupconv.ops import ConvProblem
from groupconv.ops.backends.native import backend as native
from groupconv.ops.arguments import ConvArguments

from .conftest import assert_close_scaled, skip_unless_supported

needs_native = pytest.mark.native  # (skipped where the kernels are unavailable: conftest.py)

# (in channels, out channels, groups, kernel): 1x1s whose groups fill whole vectors, a vector and a half (24), less
# than one (20, 10), and a 3x3, which no kernel fuses (the sum is added after it).
SHAPES = [(48, 24, 8, 1), (40, 24, 2, 1), (20, 10, 2, 1), (16, 16, 4, 3)]


def plain_and_fused(shape, channels_last, backend, needs="all", use_output=True, use_shortcut=True):
    cin, cout, groups, kernel = shape
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, cin, 5, 6, generator=generator, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin // groups, kernel, kernel, generator=generator, dtype=torch.float64)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    grad = torch.randn(2, cout, 5, 6, generator=generator, dtype=torch.float64).contiguous(memory_format=layout)
    grad_shortcut = torch.randn(2, cin, 5, 6, generator=generator, dtype=torch.float64)
    padding = kernel // 2
    skip_unless_supported(backend, ConvProblem.build("conv_forward", x.shape, weight.shape,
                                                     ConvArguments((1, 1), (padding, padding), (1, 1), groups, 1), x))
    results = []
    for fused in (True, False):
        xi, wi = x.clone().requires_grad_(needs in ("all", "input")), weight.clone().requires_grad_(needs != "input")
        with ops.use_backend(backend):
            if fused:
                out, shortcut = ops.conv_with_shortcut(xi, wi, None, 1, padding, 1, groups)
                assert torch.equal(shortcut, x)
            else:
                out, shortcut = ops.conv2d(xi, wi, None, 1, padding, 1, groups), xi
            # the shortcut through a ReLU, as a block uses it (its gradient is not just grad_shortcut)
            loss = (out * grad).sum() * use_output + (shortcut.relu() * grad_shortcut).sum() * use_shortcut
            leaves = [t for t in (xi, wi) if t.requires_grad]
            results.append((out, torch.autograd.grad(loss, leaves, allow_unused=True)))
    return results


@pytest.mark.parametrize("backend", [None, "native", "gemm", "aten", "reference"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "{}->{} g{} k{}".format(*s))
def test_gradients_are_the_plain_formulations(backend, channels_last, shape):
    (out, grads), (expected_out, expected_grads) = plain_and_fused(shape, channels_last, backend)
    assert torch.equal(out, expected_out)
    for name, actual, expected in zip(("input", "weight"), grads, expected_grads):
        assert_close_scaled(actual, expected, torch.float64, f"grad {name}")


@pytest.mark.parametrize("needs, use_output, use_shortcut", [("input", True, True), ("all", False, True),
                                                             ("all", True, False), ("weight", True, True)])
def test_partial_gradients_and_unused_outputs(needs, use_output, use_shortcut):
    (_, grads), (_, expected_grads) = plain_and_fused((48, 24, 8, 1), True, None, needs, use_output, use_shortcut)
    for actual, expected in zip(grads, expected_grads):
        if expected is None:
            assert actual is None or not actual.any()
        else:
            assert_close_scaled(actual, expected, torch.float64, "gradient")


@needs_native
def test_the_native_1x1_kernel_adds_the_shortcut_as_it_writes(monkeypatch):
    summed = []
    for method in ("conv_backward_accumulating", "conv_backward_input_accumulating"):
        original = getattr(native.NativeBackend, method)

        def spy(self, *args, original=original):
            result = original(self, *args)
            summed.append(result is not None)
            return result

        monkeypatch.setattr(native.NativeBackend, method, spy)
    plain_and_fused((48, 24, 8, 1), True, "native")
    plain_and_fused((48, 24, 8, 1), True, "native", needs="input")
    plain_and_fused((16, 16, 4, 3), True, "native")  # a 3x3: the sum is added after the kernel
    assert summed == [True, True, False]


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cin, cout, groups, size", [(40, 24, 8, 7), (20, 10, 2, 5), (384, 96, 8, 28)])
def test_kernel_accumulate_is_the_sum(dtype, cin, cout, groups, size):
    """Both kernels that write the input gradient, on partial vectors and (384 channels at 32x28x28: 38.5 MB) the
    streaming-store path."""
    batch = 32 if size == 28 else 3
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, size, size, generator=generator, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    weight = torch.randn(cout, cin // groups, 1, 1, generator=generator, dtype=dtype)
    grad = torch.randn(batch, cout, size, size, generator=generator, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    accumulate = torch.randn_like(x)
    kernels = native.load()
    expected = kernels.pointwise_backward_input_nhwc(grad, weight, groups) + accumulate
    torch.testing.assert_close(kernels.pointwise_backward_input_nhwc(grad, weight, groups, accumulate), expected)
    grad_x, grad_w = kernels.pointwise_backward_nhwc(grad, x, weight, groups, accumulate)
    torch.testing.assert_close(grad_x, expected)
    assert grad_x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(grad_w, kernels.pointwise_backward_nhwc(grad, x, weight, groups)[1])


def test_double_backward():
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(4, 2, 1, 1, dtype=torch.float64, requires_grad=True)

    def f(x, weight):
        out, shortcut = ops.conv_with_shortcut(x, weight, groups=4)
        return out.sum((2, 3)), (shortcut * shortcut).sum((2, 3))

    assert torch.autograd.gradgradcheck(f, (x, weight))


def test_with_shortcut_calls_the_layer_as_a_module():
    conv = gnn.Conv2d(8, 4, 1, groups=2)
    outputs = []
    conv.register_forward_hook(lambda module, args, output: outputs.append(output))
    x = torch.randn(2, 8, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    out, shortcut = gnn.with_shortcut(conv, x)
    assert len(outputs) == 1 and outputs[0] is out  # the hook saw the conv's output alone
    assert torch.equal(out, conv(x)) and torch.equal(shortcut, x)
    assert type(shortcut.grad_fn).__name__ == "EagerConvWithShortcutBackward"
    # any other module: the plain pair, the input itself
    torch_conv = torch.nn.Conv2d(8, 4, 1, groups=2)
    out, shortcut = gnn.with_shortcut(torch_conv, x)
    assert shortcut is x and torch.equal(out, torch_conv(x))
    # a layer that pads its input first reads another tensor: the plain pair
    reflecting = gnn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect")
    assert gnn.with_shortcut(reflecting, x)[1] is x
