"""groupconv.ops.batch_norm and nn.BatchNormAct2d against torch's BatchNorm2d (+ residual) (+ ReLU).

Both paths are checked: the native fused kernel, and torch's ops (what runs where the kernel cannot);
forward, every gradient, the running statistics, on random shapes in both layouts.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from groupconv import ops
from groupconv.nn import BatchNormAct2d
from groupconv.ops.backends.native import batch_norm as normalization
from groupconv.ops.backends.native import build as native

from .conftest import assert_close_scaled, skip_unless_supported

needs_native = pytest.mark.native  # (skipped where the kernels are unavailable: conftest.py)


@pytest.fixture(autouse=True, scope="module")
def native_at_every_size():
    """The tests' shapes are small; the size rule (torch's ops below NATIVE_MIN_VALUES) has its own test."""
    previous = normalization.NATIVE_MIN_VALUES
    normalization.NATIVE_MIN_VALUES = 0
    yield
    normalization.NATIVE_MIN_VALUES = previous


@pytest.fixture(params=["native", "torch"])
def path(request, monkeypatch):
    """Run the test on the native kernel, then with it reported unavailable (torch's ops)."""
    if request.param == "native":
        if native.unavailable_reason() is not None:
            pytest.skip(f"native kernels unavailable: {native.unavailable_reason()}")
    else:
        monkeypatch.setattr(native, "unavailable_reason", lambda: "turned off by the test")
        ops.dispatch.forget_choices()  # (the choices made while the kernels were there)
    return request.param


def reference(module: torch.nn.BatchNorm2d, x, residual, relu, concat=None):
    out = torch.nn.BatchNorm2d.forward(module, x)
    if residual is not None:
        out = out + residual
    out = F.relu(out) if relu else out
    return out if concat is None else torch.cat((out, concat), 1)


def strided_like(grad: torch.Tensor, form: str | None, memory_format) -> torch.Tensor:
    """grad's values in a tensor of other strides, as autograd may hand an output gradient over."""
    if form is None:
        return grad
    n, c, h, w = grad.shape
    if form == "channel slice":  # a concatenation's gradient, as in ShuffleNet's downsampling units
        whole = torch.zeros(n, c + 3, h, w, dtype=grad.dtype).contiguous(memory_format=memory_format)
        whole[:, 1:1 + c] = grad
        return whole[:, 1:1 + c]
    if form == "expanded":  # a global average pool's gradient (the values then repeat over the pixels)
        return grad.contiguous(memory_format=memory_format)[:, :, :1, :1].expand(n, c, h, w)
    if form == "transposed":  # pixels that do not collapse into one stride: copied
        return grad.transpose(2, 3).contiguous().transpose(2, 3)
    if form == "other layout":
        other = torch.contiguous_format if memory_format == torch.channels_last else torch.channels_last
        return grad.contiguous(memory_format=other)
    raise ValueError(form)


def compare(shape, channels_last, relu, with_residual, training, dtype, affine=True, track=True, momentum=0.1,
            offset=0.0, seed=0, grad_form=None, concat_channels=0):
    generator = torch.Generator().manual_seed(seed)
    channels = shape[1]
    ours = BatchNormAct2d(channels, momentum=momentum, affine=affine, track_running_stats=track,
                          dtype=dtype, apply_act=relu)
    with torch.no_grad():
        if affine:
            ours.weight.uniform_(0.5, 1.5, generator=generator)
            ours.bias.uniform_(-0.5, 0.5, generator=generator)
        if track:
            ours.running_mean.uniform_(-1, 1, generator=generator)
            ours.running_var.uniform_(0.5, 2, generator=generator)
    theirs = torch.nn.BatchNorm2d(channels, momentum=momentum, affine=affine, track_running_stats=track, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    ours.train(training)
    theirs.train(training)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(shape, generator=generator, dtype=dtype) * 2 + offset).contiguous(memory_format=memory_format)
    residual = torch.randn(shape, generator=generator, dtype=dtype) if with_residual else None
    concat = torch.randn(shape[0], concat_channels, *shape[2:], generator=generator, dtype=dtype)
    out_shape = (shape[0], shape[1] + concat_channels, *shape[2:])
    grad = strided_like(torch.randn(out_shape, generator=generator, dtype=dtype), grad_form, memory_format)

    def run(module, forward):
        inputs = [x.clone().requires_grad_(), residual.clone().requires_grad_() if with_residual else None,
                  concat.clone().requires_grad_() if concat_channels else None]
        out = forward(module, *inputs)
        parameters = [module.weight, module.bias] if affine else []
        grads = torch.autograd.grad(out, [t for t in inputs if t is not None] + parameters, grad)
        return out, grads

    out, grads = run(ours, lambda m, x, r, c: m(x, r, concat=c))
    expected, expected_grads = run(theirs, lambda m, x, r, c: reference(m, x, r, relu, c))
    assert_close_scaled(out, expected, dtype, "output")
    assert out.is_contiguous(memory_format=memory_format), "output does not keep the input's layout"
    names = ["input", "residual"][:1 + with_residual] + ["concat"][:concat_channels] + (["weight", "bias"] if affine
                                                                                         else [])
    for name, actual, wanted in zip(names, grads, expected_grads):
        assert_close_scaled(actual, wanted, dtype, f"grad {name}")
    for name, buffer in theirs.named_buffers():
        assert_close_scaled(getattr(ours, name), buffer, dtype, name)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("relu", [False, True], ids=["bn", "bn_relu"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["", "residual"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_torch_float64(path, channels_last, relu, with_residual, training):
    compare((3, 5, 7, 6), channels_last, relu, with_residual, training, torch.float64)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_matches_torch_float32_larger_than_a_block(path, channels_last):
    """Planes and row ranges longer than the kernel's 1024-value accumulation blocks."""
    compare((4, 24, 40, 36), channels_last, True, True, True, torch.float32)


@pytest.mark.parametrize("grad_form", ["channel slice", "expanded", "transposed", "other layout"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("relu, with_residual", [(False, False), (True, False), (True, True)],
                         ids=["bn", "bn_relu", "bn_residual_relu"])
def test_output_gradient_of_any_strides(path, grad_form, channels_last, relu, with_residual):
    """The kernel reads a channel slice or an expanded output gradient in place and copies other strides; every
    gradient as with a dense one."""
    compare((3, 5, 7, 6), channels_last, relu, with_residual, True, torch.float64, grad_form=grad_form)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("relu, with_residual", [(False, False), (True, False), (True, True)],
                         ids=["bn", "bn_relu", "bn_residual_relu"])
@pytest.mark.parametrize("concat_channels", [1, 4])
def test_concatenates_with_concat(path, channels_last, relu, with_residual, concat_channels):
    """cat((result, concat), 1) in one op: the output's values and layout, and every gradient, concat's too."""
    compare((3, 5, 7, 6), channels_last, relu, with_residual, True, torch.float64, concat_channels=concat_channels)
    compare((3, 5, 7, 6), channels_last, relu, with_residual, True, torch.float64, concat_channels=concat_channels,
            grad_form="channel slice")


@given(batch=st.integers(1, 4), channels=st.integers(1, 12), height=st.integers(1, 9), width=st.integers(2, 9),
       channels_last=st.booleans(), relu=st.booleans(), with_residual=st.booleans(), training=st.booleans(),
       affine=st.booleans(), track=st.booleans(), momentum=st.sampled_from([0.1, 0.5, None]),
       seed=st.integers(0, 2 ** 16))
def test_random_shapes_and_options_match_torch(batch, channels, height, width, channels_last, relu, with_residual,
                                               training, affine, track, momentum, seed):
    if not training and not track:
        training = True  # eval without running statistics uses the batch's, as torch does: covered by training
    compare((batch, channels, height, width), channels_last, relu, with_residual, training, torch.float64,
            affine=affine, track=track, momentum=momentum, seed=seed)


@needs_native
def test_large_mean_keeps_variance_accurate():
    """A channel far from zero (|mean| = 1000 std): the kernel's one-pass variance is shifted, so it does not cancel."""
    compare((8, 4, 16, 16), False, False, False, True, torch.float32, offset=2000.0)


@needs_native
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_gradcheck(channels_last):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_()
    residual = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(3, dtype=torch.float64).add(0.5).requires_grad_()
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x, residual, weight, bias):
        return ops.batch_norm(x, None, None, weight, bias, True, residual=residual, relu=True)

    assert torch.autograd.gradcheck(f, (x, residual, weight, bias))


@needs_native
def test_native_path_runs_the_custom_op():
    """On CPU float32 the fused op runs (not torch's batch_norm): the profiler sees groupconv::batch_norm_*."""
    module = BatchNormAct2d(8)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    with torch.profiler.profile() as profile:
        module(x).sum().backward()
    names = {event.name for event in profile.events()}
    assert {"groupconv::batch_norm_forward", "groupconv::batch_norm_backward"} <= names
    assert "aten::native_batch_norm" not in names


@needs_native
def test_small_inputs_run_torchs_ops(monkeypatch):
    monkeypatch.setattr(normalization, "NATIVE_MIN_VALUES", 1000)
    assert normalization.native_unsupported_reasons(torch.randn(2, 8, 5, 5)) == [
        "400 values, fewer than 1000: torch's ops are faster there"]
    assert normalization.native_unsupported_reasons(torch.randn(2, 8, 10, 10)) == []
    with torch.profiler.profile() as profile:
        BatchNormAct2d(8)(torch.randn(2, 8, 5, 5, requires_grad=True)).sum().backward()
    names = {event.name for event in profile.events()}
    assert "aten::native_batch_norm" in names and "groupconv::batch_norm_forward" not in names


@needs_native
def test_results_do_not_depend_on_thread_count():
    x = torch.randn(6, 16, 20, 20).contiguous(memory_format=torch.channels_last)
    residual, grad = torch.randn_like(x), torch.randn_like(x)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xr = x.clone().requires_grad_()
            out = ops.batch_norm(xr, None, None, None, None, True, residual=residual, relu=True)
            out.backward(grad)
            results.append((out, xr.grad))
    finally:
        torch.set_num_threads(previous)
    # The per-thread partial sums change with the thread count: float32 rounding, nothing more.
    for one, two, what in zip(*results, ("output", "grad input")):
        assert_close_scaled(one, two, torch.float32, what)


def test_falls_back_for_what_the_kernel_does_not_take():
    """bfloat16, a strided view and a broadcast residual run torch's ops, with torch's results."""
    x = torch.randn(4, 6, 5, 5)
    cases = [(x.bfloat16(), None), (x.transpose(2, 3), None), (x, torch.randn(1, 6, 1, 1))]
    for input, residual in cases:
        assert normalization.native_unsupported_reasons(input, residual)
        out = ops.batch_norm(input, None, None, None, None, True, residual=residual, relu=True)
        expected = F.batch_norm(input, None, None, None, None, True)
        expected = F.relu(expected + residual if residual is not None else expected)
        torch.testing.assert_close(out, expected)


def test_compiles_fullgraph():
    module = BatchNormAct2d(6)
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    residual = torch.randn(2, 6, 4, 4)
    expected = torch.nn.BatchNorm2d(6)(x.detach()).add(residual).relu()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out = compiled(x, residual)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert x.grad is not None and module.weight.grad is not None


@needs_native
def test_compiles_fullgraph_with_concat():
    """The custom ops carry the concatenation too: values and gradients as in eager mode."""
    module = BatchNormAct2d(6)
    x = torch.randn(2, 6, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    concat = torch.randn(2, 3, 4, 4, requires_grad=True)
    grad = torch.randn(2, 9, 4, 4)
    expected = module(x, concat=concat)
    expected_grads = torch.autograd.grad(expected, (x, concat, module.weight), grad)
    out = torch.compile(module, fullgraph=True, backend="aot_eager")(x, concat=concat)
    torch.testing.assert_close(out, expected)
    for actual, wanted in zip(torch.autograd.grad(out, (x, concat, module.weight), grad), expected_grads):
        torch.testing.assert_close(actual, wanted)


@needs_native
def test_exports_with_the_fused_op():
    module = BatchNormAct2d(6).eval()
    x, residual = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4)
    exported = torch.export.export(module, (x, residual))
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert torch.ops.groupconv.batch_norm_forward.default in targets
    torch.testing.assert_close(exported.module()(x, residual), module(x, residual))


def test_state_dict_is_batchnorm2d():
    ours, theirs = BatchNormAct2d(5), torch.nn.BatchNorm2d(5)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict(), strict=True)


@pytest.mark.parametrize("call, message", [
    (lambda: ops.batch_norm(torch.randn(2, 3, 4), None, None, torch.ones(4), None, True), "weight must have shape"),
    (lambda: ops.batch_norm(torch.randn(2, 3, 4), None, None, None, None, False), "running_mean=None"),
    (lambda: ops.batch_norm(torch.randn(1, 3, 1, 1), None, None, None, None, True), "more than one value"),
    (lambda: ops.batch_norm(torch.randn(2, 3, 4), None, None, None, None, True, residual=1.0), "residual must be"),
    (lambda: ops.batch_norm(torch.randn(3), None, None, None, None, True), "input.dim()=1"),
    (lambda: ops.batch_norm(torch.randn(2, 3, 4, 4), None, None, None, None, True, concat=torch.randn(2, 3, 4, 5)),
     "concat must have the input's batch and spatial size"),
    (lambda: ops.batch_norm(torch.randn(2, 3, 4, 4), None, None, None, None, True, concat=[1.0]), "concat must be a"),
    (lambda: BatchNormAct2d(3, apply_act="yes"), "apply_act='yes'"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


# Batch norm goes through the dispatcher as the convs do: every backend forced on the same call, the reasons a
# backend gives, the choice shown by explain.
def batch_norm_inputs(channels_last=False, residual=True, dtype=torch.float64, seed=3):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, 5, 5, generator=generator, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    r = torch.randn(x.shape, generator=generator, dtype=dtype) if residual else None
    w = torch.rand(6, generator=generator, dtype=dtype) + 0.5
    b = torch.randn(6, generator=generator, dtype=dtype)
    return x, r, w, b


@pytest.mark.parametrize("backend", ["native", "aten", "reference"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_every_batch_norm_backend_matches_torch_when_forced(backend, channels_last, training):
    x, r, w, b = batch_norm_inputs(channels_last)
    skip_unless_supported(backend, ops.batch_norm_problem(x, training, residual=r, relu=True))
    results = []
    for name in (backend, None):  # the forced backend, then torch's ops written out
        mean, var = torch.linspace(-1, 1, 6, dtype=x.dtype), torch.linspace(0.5, 2, 6, dtype=x.dtype)
        leaves = [t.detach().clone().requires_grad_() for t in (x, r, w, b)]
        if name is None:
            out = F.relu(F.batch_norm(leaves[0], mean, var, leaves[2], leaves[3], training, 0.1, 1e-5) + leaves[1])
        else:
            with ops.use_backend(name):
                out = ops.batch_norm(leaves[0], mean, var, leaves[2], leaves[3], training, 0.1, 1e-5,
                                     residual=leaves[1], relu=True)
        grads = torch.autograd.grad(out, leaves, torch.linspace(-1, 1, out.numel(), dtype=x.dtype).view(out.shape))
        results.append((out, *grads, mean, var))
    for forced, expected, what in zip(*results, ("output", "grad input", "grad residual", "grad weight", "grad bias",
                                                 "running mean", "running var")):
        assert_close_scaled(forced, expected, torch.float64, f"{backend} {what}")


def test_batch_norm_reasons_and_explain():
    x, r, _, _ = batch_norm_inputs()
    problem = ops.batch_norm_problem(x.bfloat16(), residual=r.bfloat16(), relu=True)
    assert ops.get_backend("native").not_supported_reasons(problem)[0] == (
        "dtype torch.bfloat16 is not supported: torch.float32, torch.float64 only")
    assert ops.get_backend("gemm").not_supported_reasons(problem) == ["batch_norm is not supported: only convolutions"]
    assert ops.get_backend("aten").not_supported_reasons(problem) == []
    explanation = ops.explain_batch_norm(x.bfloat16(), residual=r.bfloat16(), relu=True)
    assert "BatchNormProblem(" in explanation and "\n-> aten: can run" in explanation
    assert "   native: dtype torch.bfloat16 is not supported" in explanation
    with pytest.raises(ValueError, match="backend 'native' is forced but cannot run BatchNormProblem"):
        with ops.use_backend("native"):
            ops.batch_norm(x.bfloat16(), None, None, training=True, residual=r.bfloat16(), relu=True)


@needs_native
def test_batch_norm_follows_the_dispatchers_choice():
    """Untuned, the native backend comes first where it can run the call; forced, aten runs torch's own ops."""
    x, r, w, b = batch_norm_inputs()
    assert "\n-> native: can run" in ops.explain_batch_norm(x, residual=r, relu=True)
    for forced, expected in ((None, "EagerBatchNorm"), ("aten", "ReluBackward")):
        with ops.use_backend(forced):
            out = ops.batch_norm(x.requires_grad_(), None, None, w, b, True, residual=r, relu=True)
        assert out.grad_fn.name().startswith(expected)
