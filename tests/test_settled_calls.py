"""Settled conv calls: a signature whose path is decided runs it from one lookup, with the slow path's results, and
goes back to the slow path whenever the signature or the state that decided it changes."""

import pytest
import torch

import groupconv
from groupconv.ops.custom_ops import settled_calls

pytestmark = pytest.mark.native  # (the settled calls' table is in the compiled library)


@pytest.fixture
def priority_order():
    """Tuning off: each choice is the capable backend of highest priority, made without measuring."""
    groupconv.ops.set_tuning(False)
    yield
    groupconv.ops.set_tuning(None)


def operands(seed, shape, weight_shape, requires_grad, channels_last=False):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(weight_shape, generator=generator, dtype=torch.float64)
    b = torch.randn(weight_shape[0], generator=generator, dtype=torch.float64)
    return [t.requires_grad_(requires_grad) for t in (x, w, b)]


def settled_path(x, w, b, **arguments):
    return settled_calls.settled_path(2, x, w, b, arguments.get("stride", 1), arguments.get("padding", 0), 1,
                                      arguments.get("groups", 1), 1)


def run_settled(x, w, b, groups):
    return settled_calls.run_settled(2, x, w, b, 1, 0, 1, groups, 1)


# A grouped 3x3 conv with 4 channels per group in NCHW runs on torch's kernels; a channels_last depthwise conv on
# groupconv's (by priority, tuning off).
CASES = [
    pytest.param(dict(shape=(2, 8, 9, 7), weight_shape=(8, 4, 3, 3), groups=2, channels_last=False,
                      grad_fn="ConvolutionBackward0"), id="settled on torch"),
    pytest.param(dict(shape=(3, 12, 9, 7), weight_shape=(12, 1, 3, 3), groups=12, channels_last=True,
                      grad_fn="EagerConvBackward"), id="settled on groupconv's kernels"),
]


@pytest.mark.parametrize("spec", CASES)
def test_a_settled_call_equals_torchs_conv_forward_and_backward(priority_order, spec):
    arguments = dict(stride=(2, 1), padding=1, groups=spec["groups"])
    for seed in range(3):  # the first call and its backward settle the path; the next ones run it
        x, w, b = operands(seed, spec["shape"], spec["weight_shape"], True, spec["channels_last"])
        out = groupconv.conv2d(x, w, b, **arguments)
        expected = torch.nn.functional.conv2d(x, w, b, **arguments)
        torch.testing.assert_close(out, expected)
        assert out.stride() == expected.stride()
        grad_output = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
        for grad, expected_grad in zip(torch.autograd.grad(out, [x, w, b], grad_output),
                                       torch.autograd.grad(expected, [x, w, b], grad_output), strict=True):
            torch.testing.assert_close(grad, expected_grad)
    assert settled_path(x, w, b, **arguments) is not None
    assert out.grad_fn.name() == spec["grad_fn"]


@pytest.mark.parametrize("no_gradient", ["no_grad", "operands without requires_grad"])
def test_a_settled_call_without_gradients_runs_the_forward_alone(priority_order, no_gradient):
    arguments = dict(stride=(2, 1), padding=1, groups=12)
    for seed in range(3):
        x, w, b = operands(seed, (3, 12, 9, 7), (12, 1, 3, 3), no_gradient == "no_grad", channels_last=True)
        with torch.set_grad_enabled(no_gradient != "no_grad"):
            out = groupconv.conv2d(x, w, b, **arguments)
        expected = torch.nn.functional.conv2d(x.detach(), w.detach(), b.detach(), **arguments)
        torch.testing.assert_close(out, expected)
        assert out.stride() == expected.stride() and out.grad_fn is None and not out.requires_grad
    with torch.set_grad_enabled(no_gradient != "no_grad"):
        assert settled_path(x, w, b, **arguments).__qualname__.startswith("_forward_runner")
    # The same shapes with gradients wanted have a signature of their own, and get their gradients.
    x, w, b = operands(5, (3, 12, 9, 7), (12, 1, 3, 3), True, channels_last=True)
    out = groupconv.conv2d(x, w, b, **arguments)
    assert out.grad_fn is not None
    grads = torch.autograd.grad(out.sum(), [x, w, b])
    expected = torch.autograd.grad(torch.nn.functional.conv2d(x, w, b, **arguments).sum(), [x, w, b])
    for grad, expected_grad in zip(grads, expected, strict=True):
        torch.testing.assert_close(grad, expected_grad)


def test_a_bad_argument_never_finds_a_good_calls_path(priority_order):
    x, w, b = operands(0, (2, 8, 9, 7), (8, 4, 3, 3), False)
    for _ in range(2):
        groupconv.conv2d(x, w, b, stride=1, groups=2)
    assert settled_path(x, w, b, stride=1, groups=2) is not None
    with pytest.raises(TypeError, match="stride=True must be an int"):
        groupconv.conv2d(x, w, b, stride=True, groups=2)
    with pytest.raises(TypeError, match=r"stride=\(1.0, 1\) must be an int or a tuple of 2 ints"):
        groupconv.conv2d(x, w, b, stride=(1.0, 1), groups=2)


def test_a_forced_backend_and_autocast_take_the_slow_path(priority_order):
    x, w, b = operands(1, (2, 8, 9, 7), (8, 4, 3, 3), True)
    for _ in range(2):
        groupconv.conv2d(x, w, b, groups=2).sum().backward()
    assert run_settled(x, w, b, groups=2) is not None
    with groupconv.ops.use_backend("reference"):
        assert run_settled(x, w, b, groups=2) is None
        out = groupconv.conv2d(x, w, b, groups=2)
        assert out.grad_fn.name().startswith("EagerConv")  # the forced backend's path, through groupconv's ops
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert run_settled(x.float(), w.float(), b.float(), groups=2) is None
        assert groupconv.conv2d(x.float(), w.float(), b.float(), groups=2).dtype == torch.bfloat16
    with torch.no_grad():  # another signature: no operand needs a gradient
        assert run_settled(x, w, b, groups=2) is None


def test_a_change_of_the_dispatchers_choices_forgets_every_settled_path(priority_order):
    x, w, b = operands(2, (2, 8, 9, 7), (8, 4, 3, 3), False)
    for _ in range(2):
        groupconv.conv2d(x, w, b, groups=2)
    assert run_settled(x, w, b, groups=2) is not None
    groupconv.ops.set_tuning(True)  # the choices are forgotten: so are the paths they settled
    assert run_settled(x, w, b, groups=2) is None
    groupconv.conv2d(x[:1], w, b, groups=2)  # (the next call that may settle empties the table)
    assert settled_path(x, w, b, groups=2) is None


def test_calls_the_slow_path_changes_the_input_of_are_never_settled(priority_order):
    x, w, b = operands(3, (8, 9, 7), (8, 4, 3, 3), False)  # unbatched: the slow path adds the batch dimension
    for _ in range(2):
        out = groupconv.conv2d(x, w, b, groups=2, padding=1)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, w, b, groups=2, padding=1))
    assert settled_path(x, w, b, groups=2, padding=1) is None


def test_the_settled_path_is_refused_where_tracing_transforms_or_modes_must_see_the_op(priority_order):
    from torch.utils.flop_counter import FlopCounterMode

    x, w, b = operands(4, (2, 8, 9, 7), (8, 4, 3, 3), False)
    for _ in range(2):
        groupconv.conv2d(x, w, b, groups=2)
    assert run_settled(x, w, b, groups=2) is not None
    with FlopCounterMode(display=False):
        assert run_settled(x, w, b, groups=2) is None
    seen = []
    torch.func.vmap(lambda t: seen.append(run_settled(t, w, b, groups=2)) or t)(x.unsqueeze(0))
    assert seen == [None]
    torch.jit.trace(lambda t: seen.append(run_settled(t, w, b, groups=2)) or t * 1, (x,), check_trace=False)
    assert seen == [None, None]
    assert run_settled(x, w, b, groups=2) is not None  # (and back again after each)


def test_the_signature_holds_the_thread_count_the_exact_arguments_and_plain_tensors_only(priority_order):
    x, w, b = operands(5, (2, 8, 9, 7), (8, 4, 3, 3), False)
    for _ in range(2):
        groupconv.conv2d(x, w, b, stride=(1, 1), groups=2)
    assert settled_path(x, w, b, stride=(1, 1), groups=2) == "torch"
    assert settled_path(x, w, b, stride=[1, 1], groups=2) == "torch"  # (a list passes the checks a tuple does)
    assert settled_path(x, w, b, stride=1, groups=2) is None  # (another call: its stride checked anew)
    assert settled_calls.run_settled(2, x, w, b, (1, 1), 0, 1, 2.0, 1) is None
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert settled_path(x, w, b, stride=(1, 1), groups=2) is None
    finally:
        torch.set_num_threads(threads)

    class Tagged(torch.Tensor):
        pass

    tagged = x.as_subclass(Tagged)
    assert settled_calls.run_settled(2, tagged, w, b, (1, 1), 0, 1, 2, 1) is None
    out = groupconv.conv2d(tagged, w, b, stride=(1, 1), groups=2)
    torch.testing.assert_close(out.as_subclass(torch.Tensor), torch.nn.functional.conv2d(x, w, b, groups=2))


def test_a_settled_call_with_padding_by_name_equals_torchs(priority_order):
    for seed in range(3):
        x, w, b = operands(seed, (2, 8, 9, 7), (8, 4, 3, 3), False)
        out = groupconv.conv2d(x, w, b, padding="same", groups=2)
        torch.testing.assert_close(out, torch.nn.functional.conv2d(x, w, b, padding="same", groups=2))
    assert settled_calls.settled_path(2, x, w, b, 1, "same", 1, 2, 1) == "torch"
