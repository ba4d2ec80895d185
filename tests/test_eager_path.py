"""The eager path (EagerConv, EagerBatchNorm) against the custom ops it stands in for.

Plain eager calls skip torch.library's dispatch; everything that must see the custom ops (torch.compile, export,
dispatch modes such as FlopCounterMode) still does. Both paths run the same implementations, so they must agree
exactly, forward and every gradient.
"""

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import groupconv
from groupconv.ops import batch_norm, custom_ops as library
from groupconv.ops.backends.native import batch_norm as native_batch_norm
from groupconv.ops.custom_ops import batch_norm as normalization
from groupconv.ops.custom_ops import eager_conv
from groupconv.ops.arguments import ConvArguments
from groupconv.ops.dispatch import forget_choices, layout_name


def conv_inputs(seed, channels_last, with_bias):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 12, 9, 7, generator=generator, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(12, 4, 3, 3, generator=generator, dtype=torch.float64)
    b = torch.randn(12, generator=generator, dtype=torch.float64) if with_bias else None
    return x, w, b


@pytest.mark.parametrize("channels_last,with_bias", itertools.product([False, True], [False, True]))
@pytest.mark.parametrize("needs", ["all", "input", "weight"])
def test_eager_conv_equals_the_custom_op(channels_last, with_bias, needs):
    arguments = ConvArguments(stride=(2, 1), padding=(1, 0), dilation=(1, 1), groups=3, shuffle_groups=3)
    forget_choices()  # unsettled: a call settled on torch's kernels would skip EagerConv for torch's own ops
    results = []
    for eager in (True, False):
        x, w, b = conv_inputs(0, channels_last, with_bias)
        leaves = {"all": [x, w] + ([b] if with_bias else []), "input": [x], "weight": [w]}[needs]
        for leaf in leaves:
            leaf.requires_grad_()
        out = library.convolution(x, w, b, arguments) if eager else library.conv_forward(
            x, w, b, list(arguments.stride), list(arguments.padding), list(arguments.dilation), 3, 3)
        grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        results.append((out, torch.autograd.grad(out, leaves, grad_output)))
    (eager_out, eager_grads), (op_out, op_grads) = results
    assert eager_out.grad_fn.name().startswith("EagerConv")
    assert op_out.grad_fn.name() != eager_out.grad_fn.name()
    assert eager_out.stride() == op_out.stride()
    torch.testing.assert_close(eager_out, op_out, rtol=0, atol=0)
    for eager_grad, op_grad in zip(eager_grads, op_grads, strict=True):
        torch.testing.assert_close(eager_grad, op_grad, rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_eager_shuffle_equals_the_custom_op(channels_last):
    results = []
    for call in (library.shuffle, library.channel_shuffle):
        x = torch.randn(2, 12, 3, 5, generator=torch.Generator().manual_seed(5))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        out = call(x, 3)
        grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
        results.append((out, *torch.autograd.grad(out, x, grad_output), out.grad_fn.name()))
    (eager_out, eager_grad, eager_node), (op_out, op_grad, op_node) = results
    assert eager_node.startswith("EagerShuffle") and op_node != eager_node
    assert eager_out.stride() == op_out.stride()
    torch.testing.assert_close(eager_out, op_out, rtol=0, atol=0)
    torch.testing.assert_close(eager_grad, op_grad, rtol=0, atol=0)


def test_eager_conv_double_backward_goes_through_the_custom_ops():
    x, w, _ = conv_inputs(2, False, False)
    x.requires_grad_()
    w.requires_grad_()
    conv = lambda a, b: groupconv.conv2d(a, b, padding=1, groups=3)  # noqa: E731
    assert torch.autograd.gradgradcheck(conv, (x, w), fast_mode=True)


def test_dispatch_modes_and_compile_see_the_custom_op():
    x, w, _ = conv_inputs(3, False, False)
    assert library.runs_eagerly(x, w, None)
    with FlopCounterMode(display=False) as counter:
        assert not library.runs_eagerly(x, w, None)
        groupconv.conv2d(x, w, groups=3)
    assert torch.ops.groupconv.conv_forward in counter.get_flop_counts()["Global"]
    # Parameters are plain tensors to torch's dispatch; a subclass with its own __torch_function__ is not.
    assert library.runs_eagerly(x, torch.nn.Parameter(w))

    class Tagged(torch.Tensor):
        pass

    tagged = x.as_subclass(Tagged)
    assert not library.runs_eagerly(tagged, w)
    assert type(groupconv.conv2d(tagged, w, groups=3)) is Tagged

    seen = []

    @torch.compile(fullgraph=True, backend="eager")
    def compiled(a, b):
        seen.append(library.runs_eagerly(a, b))
        return groupconv.conv2d(a, b, groups=3)

    torch.testing.assert_close(compiled(x, w), groupconv.conv2d(x, w, groups=3))
    assert seen == [False]


@pytest.mark.native
@pytest.mark.parametrize("residual,relu,channels_last", [(False, True, False), (True, True, True),
                                                          (True, False, False)])
def test_eager_batch_norm_equals_the_custom_op(monkeypatch, residual, relu, channels_last):
    monkeypatch.setattr(native_batch_norm, "NATIVE_MIN_VALUES", 0)
    results = []
    for eager in (True, False):
        monkeypatch.setattr(normalization, "runs_eagerly", lambda *tensors, eager=eager: eager)
        generator = torch.Generator().manual_seed(4)
        x = torch.randn(4, 6, 5, 5, generator=generator, dtype=torch.float64)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        r = torch.randn(x.shape, generator=generator, dtype=torch.float64) if residual else None
        w = torch.rand(6, generator=generator, dtype=torch.float64) + 0.5
        b = torch.randn(6, generator=generator, dtype=torch.float64)
        running_mean, running_var = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
        leaves = [t.requires_grad_() for t in (x, w, b, r) if t is not None]
        out = batch_norm(x, running_mean, running_var, w, b, True, 0.1, 1e-5, residual=r, relu=relu)
        grads = torch.autograd.grad(out, leaves, torch.randn(out.shape, generator=generator, dtype=out.dtype))
        results.append((out, grads, running_mean, running_var, out.grad_fn.name()))
    (eager_out, eager_grads, eager_mean, eager_var, eager_node), (op_out, op_grads, op_mean, op_var, op_node) = results
    assert eager_node.startswith("EagerBatchNorm") and op_node != eager_node
    for eager_tensor, op_tensor in zip((eager_out, eager_mean, eager_var, *eager_grads),
                                       (op_out, op_mean, op_var, *op_grads), strict=True):
        torch.testing.assert_close(eager_tensor, op_tensor, rtol=0, atol=0)


@pytest.fixture
def priority_order():
    """Tuning off: the dispatcher's choice is the capable backend of highest priority, with nothing measured."""
    groupconv.ops.set_tuning(False)
    yield
    groupconv.ops.set_tuning(None)


def test_a_call_settled_on_torch_runs_torchs_own_conv(priority_order):
    """A 3-D conv only torch's kernels run: once the forward and backward choices are made, later calls go straight
    to F.conv3d (torch's autograd), with the same results."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, 6, 4, 5, 3, generator=generator, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, 3, generator=generator, requires_grad=True)
    b = torch.randn(6, generator=generator, requires_grad=True)
    first = groupconv.conv3d(x, w, b, padding=1, groups=3)
    assert first.grad_fn.name().startswith("EagerConv")  # the choices are made by this call and its backward
    first.sum().backward()
    for _ in range(2):
        x.grad = w.grad = b.grad = None
        out = groupconv.conv3d(x, w, b, padding=1, groups=3)
        assert out.grad_fn.name() == "ConvolutionBackward0"
        out.square().sum().backward()
        grads = [x.grad, w.grad, b.grad]
    expected = torch.nn.functional.conv3d(x, w, b, padding=1, groups=3)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert out.stride() == expected.stride()
    for grad, expected_grad in zip(grads, torch.autograd.grad(expected.square().sum(), [x, w, b]), strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)
    with groupconv.ops.use_backend("aten"):  # a forced backend always goes through the ops
        assert groupconv.conv3d(x, w, b, padding=1, groups=3).grad_fn.name().startswith("EagerConv")


@pytest.mark.parametrize("in_per_group", [1, 2])  # depthwise: the shuffle paid on the output; else on the input
def test_a_shuffled_call_settled_on_torch_runs_torchs_own_ops(priority_order, in_per_group):
    """The aten backend's formulation of a fused shuffle (torch's channel_shuffle and conv) with torch's autograd, once
    settled: the same results as a materialised shuffle followed by the conv."""
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(2, 6, 4, 5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, in_per_group, 3, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    groups = 6 // in_per_group
    groupconv.conv3d(x, w, padding=1, groups=groups, shuffle_groups=3).sum().backward()  # the choices are made
    out = groupconv.conv3d(x, w, padding=1, groups=groups, shuffle_groups=3)
    assert not out.grad_fn.name().startswith("EagerConv")
    expected = torch.nn.functional.conv3d(torch.nn.functional.channel_shuffle(x, 3), w, padding=1, groups=groups)
    torch.testing.assert_close(out, expected)
    grad_output = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    for grad, expected_grad in zip(torch.autograd.grad(out, [x, w], grad_output),
                                   torch.autograd.grad(expected, [x, w], grad_output), strict=True):
        torch.testing.assert_close(grad, expected_grad)


@pytest.mark.native
def test_a_call_settled_elsewhere_keeps_the_ops(priority_order):
    x, w, _ = conv_inputs(8, True, False)
    x.requires_grad_()
    w = w[:, :1].contiguous()  # a channels_last depthwise conv: the native kernels' by priority
    for _ in range(3):
        out = groupconv.conv2d(x, w, padding=1, groups=12)
        out.backward(torch.ones_like(out))
    assert groupconv.ops.select_backend(groupconv.ops.conv_problem(x, w, padding=1, groups=12)).name == "native"
    assert out.grad_fn.name().startswith("EagerConv")


def test_an_eager_call_signature_builds_its_problems_once(monkeypatch):
    """EagerCall keeps the dispatch problems of a call signature: later calls and their backward build none, and
    an output gradient in another layout gets a problem of its own (the dispatch key follows the gradient)."""
    x, w, b = conv_inputs(9, True, True)
    x.requires_grad_()
    w.requires_grad_()
    groupconv.conv2d(x, w, b, padding=1, groups=3).backward(torch.ones(3, 12, 9, 7, dtype=torch.float64))
    built = []
    original = eager_conv.ConvProblem.build
    monkeypatch.setattr(eager_conv.ConvProblem, "build",
                        lambda *a, **k: built.append((a[0], layout_name(a[4]))) or original(*a, **k))
    for _ in range(2):
        groupconv.conv2d(x, w, b, padding=1, groups=3).backward(torch.ones(3, 12, 9, 7, dtype=torch.float64))
    assert built == []
    w.requires_grad_(False)
    x.grad = None
    expanded = torch.ones((), dtype=torch.float64).expand(3, 12, 9, 7)  # strided: neither layout
    groupconv.conv2d(x, w, b, padding=1, groups=3).backward(expanded)
    # (the first asked by the forward: has the input gradient's choice been made? The second by the backward.)
    assert built == [("conv_backward_input", "channels_last"), ("conv_backward_input", "strided")]
    ones = torch.ones(3, 12, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(x.grad, torch.nn.functional.conv_transpose2d(ones, w, padding=1, groups=3))
