"""groupconv's local response normalisation against torch's: forward, backward (twice), traced, compiled, scripted."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import groupconv
import groupconv.nn as gnn
from groupconv.ops.custom_ops import local_response_norm as local_response_norm_op

SHAPES = [(2, 7, 9), (2, 6, 5, 4), (1, 3, 3, 2, 4), (3, 12, 6, 6)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_the_op_equals_torch_forward_and_backward(shape, size):
    torch.manual_seed(0)
    arguments = dict(size=size, alpha=0.3, beta=0.75, k=1.5)  # (large alpha: the window's term matters)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(shape, dtype=torch.float64)
    expected = F.local_response_norm(x, **arguments)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    out = local_response_norm_op(x, *arguments.values())
    (out_grad,) = torch.autograd.grad(out, x, grad)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(out_grad, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size", [2, 3, 5])
def test_the_op_is_differentiable_twice(size):
    torch.manual_seed(1)
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    function = lambda t: local_response_norm_op(t, size, 0.5, 0.75, 1.0)  # noqa: E731
    assert torch.autograd.gradcheck(function, (x,))
    assert torch.autograd.gradgradcheck(function, (x,))


def test_channels_last_input_keeps_its_layout():
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    out = local_response_norm_op(x, 5, 1e-2, 0.75, 2.0)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.local_response_norm(x, 5, 1e-2, 0.75, 2.0))


def test_traced_calls_record_the_op_for_odd_windows_only():
    x = torch.randn(2, 8, 5, 5)
    for size, recorded in ((5, True), (4, False)):
        traced = torch.jit.trace(gnn.LocalResponseNorm(size, alpha=0.1), (x,))
        assert ("groupconv::local_response_norm" in str(traced.graph)) == recorded
        torch.testing.assert_close(traced(x), F.local_response_norm(x, size, alpha=0.1))


def test_compiled_layer_equals_eager_forward_and_backward():
    torch.manual_seed(2)
    layer = gnn.LocalResponseNorm(5, alpha=0.2, beta=0.75, k=2.0)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 10, 4, 4, requires_grad=True)
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    expected = F.local_response_norm(x, 5, alpha=0.2, beta=0.75, k=2.0)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, expected_grad)


def test_accelerate_swaps_torchs_layer_and_scripting_leaves_it():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.LocalResponseNorm(3))
    groupconv.accelerate(model)
    assert type(model[1]) is gnn.LocalResponseNorm
    x = torch.randn(2, 3, 7, 7)
    scripted = torch.jit.script(model)
    assert type(model[1]) is gnn.LocalResponseNorm
    torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize("size, message", [(0, "size=0"), (2.5, "size=2.5"), (True, "size=True")])
def test_bad_size_is_named(size, message):
    with pytest.raises(ValueError, match=message):
        groupconv.ops.local_response_norm(torch.randn(2, 4, 3, 3), size)


def test_input_without_spatial_dimensions_is_refused():
    with pytest.raises(ValueError, match="input.dim\\(\\)=2"):
        groupconv.ops.local_response_norm(torch.randn(2, 4), 3)
