"""Tensors with no values (an empty batch, channel or spatial extent) give torch's result on every backend, forward
and backward: the dispatcher sends them to torch's kernels before any of groupconv's kernels, which divide by those
extents, is reached (a crash of the whole interpreter where they were)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import groupconv
from groupconv import ops

BACKENDS = [None, *ops.list_backends()]

# (input shape, weight shape, conv arguments): an empty batch, no input channels, no output channels, no rows.
CONV_CASES = {
    "batch": ((0, 4, 5, 5), (4, 2, 3, 3), dict(groups=2)),
    "input_channels": ((1, 0, 5, 5), (4, 0, 3, 3), dict()),
    "input_channels_grouped": ((2, 0, 5, 5), (4, 0, 3, 3), dict(groups=2)),
    "output_channels": ((2, 4, 5, 5), (0, 4, 3, 3), dict()),
    "rows": ((2, 4, 0, 5), (4, 2, 1, 1), dict(groups=2, padding=1)),
}


@pytest.fixture(params=[False, True], ids=["untuned", "tuned"])
def tuning(request):
    ops.set_tuning(request.param)
    yield request.param
    ops.set_tuning(None)


def _conv_case(case, shuffle_groups):
    input_shape, weight_shape, arguments = CONV_CASES[case]
    x = torch.randn(input_shape, requires_grad=True)
    w = torch.randn(weight_shape, requires_grad=True)
    b = torch.randn(weight_shape[0], requires_grad=True)
    shuffle_groups = shuffle_groups if input_shape[1] % shuffle_groups == 0 and input_shape[1] else 1
    return x, w, b, arguments, shuffle_groups


@pytest.mark.parametrize("case", sorted(CONV_CASES))
@pytest.mark.parametrize("shuffle_groups", [1, 2])
def test_every_backend_is_passed_over_for_torchs_kernels(case, shuffle_groups):
    x, w, b, arguments, shuffle_groups = _conv_case(case, shuffle_groups)
    for op in ("conv_forward", "conv_backward_input", "conv_backward_weight", "conv_backward"):
        problem = groupconv.ops.conv_problem(x, w, b, **arguments, shuffle_groups=shuffle_groups, op=op)
        assert problem.empty
        for backend in BACKENDS:
            with ops.use_backend(backend):
                assert ops.select_backend(problem).name == "aten", (op, backend)
    shuffle_problem = ops.ShuffleProblem.build(torch.empty(0, 4, 3, 3), 2)
    batch_norm_problem = ops.batch_norm_problem(torch.empty(2, 0, 3, 3), training=True, relu=True)
    for backend in BACKENDS:
        with ops.use_backend(backend):
            assert ops.select_backend(shuffle_problem).name == "aten"
            assert ops.select_backend(batch_norm_problem).name == "aten"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CONV_CASES))
@pytest.mark.parametrize("shuffle_groups", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_of_empty_tensors_is_torchs(backend, case, shuffle_groups, channels_last, tuning):
    x, w, b, arguments, shuffle_groups = _conv_case(case, shuffle_groups)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    shuffled = torch.channel_shuffle(x, shuffle_groups) if shuffle_groups > 1 else x
    try:
        expected = F.conv2d(shuffled, w, b, **arguments)
    except RuntimeError as error:  # (torch refuses a conv with no output channels: so does groupconv, with its words)
        with ops.use_backend(backend), pytest.raises(RuntimeError, match=re.escape(str(error).splitlines()[0])):
            groupconv.conv2d(x, w, b, **arguments, shuffle_groups=shuffle_groups)
        return
    with ops.use_backend(backend):
        out = groupconv.conv2d(x, w, b, **arguments, shuffle_groups=shuffle_groups)
        grads = torch.autograd.grad(out.sum(), (x, w, b), allow_unused=True)
    expected_grads = torch.autograd.grad(expected.sum(), (x, w, b), allow_unused=True)
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 0, 3, 3), (2, 4, 0, 3), (0, 6, 2), (1, 6, 2, 0, 2)])
def test_channel_shuffle_of_empty_tensors_is_torchs(backend, shape, tuning):
    groups = 2
    x = torch.randn(shape, requires_grad=True)
    with ops.use_backend(backend):
        out = groupconv.channel_shuffle(x, groups)
        (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, torch.channel_shuffle(x, groups))
    torch.testing.assert_close(grad, torch.zeros_like(x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 0, 3, 3), (2, 4, 0, 3), (2, 4, 3, 0)])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("fused", ["none", "residual_relu", "concat"])
def test_batch_norm_of_empty_tensors_is_torchs(backend, shape, training, fused, tuning):
    channels = shape[1]
    x = torch.randn(shape, requires_grad=True)
    weight, bias = torch.rand(channels, requires_grad=True), torch.randn(channels, requires_grad=True)
    mean, var = torch.randn(channels), torch.rand(channels) + 0.5
    expected_mean, expected_var = mean.clone(), var.clone()
    residual = torch.randn(shape) if fused == "residual_relu" else None
    concat = torch.randn(shape[0], 3, *shape[2:]) if fused == "concat" else None
    try:
        expected = F.batch_norm(x, expected_mean, expected_var, weight, bias, training)
    except (IndexError, RuntimeError) as error:  # (torch's batch norm refuses no channels with weights: so does ours)
        with ops.use_backend(backend), pytest.raises(type(error), match=re.escape(str(error).splitlines()[0])):
            ops.batch_norm(x, mean, var, weight, bias, training, residual=residual, relu=fused == "residual_relu",
                           concat=concat)
        return
    with ops.use_backend(backend):
        out = ops.batch_norm(x, mean, var, weight, bias, training, residual=residual, relu=fused == "residual_relu",
                             concat=concat)
        grads = torch.autograd.grad(out.sum(), (x, weight, bias), allow_unused=True)
    if residual is not None:
        expected = F.relu(expected + residual)
    if concat is not None:
        expected = torch.cat((expected, concat), 1)
    expected_grads = torch.autograd.grad(expected.sum(), (x, weight, bias), allow_unused=True)
    torch.testing.assert_close(out, expected, equal_nan=True)
    torch.testing.assert_close(mean, expected_mean, equal_nan=True)
    torch.testing.assert_close(var, expected_var, equal_nan=True)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, equal_nan=True)


def test_empty_batch_through_a_layer_needs_no_recursion():
    """The tuner's channels_last strategy used to dispatch the empty problem to itself, until the recursion limit."""
    layer = groupconv.nn.Conv2d(8, 8, 3, groups=2, padding=1)
    ops.set_tuning(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = layer(torch.randn(0, 8, 6, 6))
    finally:
        ops.set_tuning(None)
    assert out.shape == (0, 8, 6, 6)
