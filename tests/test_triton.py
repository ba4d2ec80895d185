"""The Triton backend against torch.nn.functional.conv1d/2d: forward and the gradients of input, weight and bias.

On a machine without a GPU the kernels run in Triton's interpreter on CPU tensors (slow: the shapes
are small, and every case runs forward and backward once). Two environment variables make that happen:

- TRITON_INTERPRET=1 is set by tests/conftest.py, before anything imports triton (see the comment
  there for why it has to be that early and why it is harmless to the other tests).
- GROUPCONV_TRITON_ON_CPU=1, the backend's explicit opt-in to CPU tensors, is set only while a test
  of this module runs (fixture below), so no other test module's dispatch ever sees the backend accept
  a CPU problem.

On a machine with a GPU the same tests run the compiled kernels on CUDA tensors.
"""

import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="the triton package is not installed (pip install -e '.[test]' installs it)")

import groupconv  # noqa: E402
from groupconv import ops  # noqa: E402
from groupconv.ops.arguments import ConvArguments  # noqa: E402
from groupconv.ops.reference import channel_shuffle  # noqa: E402
from groupconv.ops.backends.triton import backend as triton_backend  # noqa: E402

from .conftest import assert_close_scaled  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _triton_runs_here(monkeypatch):
    monkeypatch.setenv(triton_backend.ENV_ON_CPU, "1")
    # torch's conv on a GPU multiplies float32 in TF32 by default, and this backend follows the same switch:
    # the float32 tolerances below are for full float32 products.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    if DEVICE == "cpu" and not triton_backend.interpreter_enabled():
        pytest.skip("no GPU, and TRITON_INTERPRET is set to something other than 1: the kernels cannot run here")


# name: (batch, in channels, out channels, groups, kernel, stride, padding, dilation, input size, shuffle groups,
#        layout). Each is one kind of layer of the zoo, or one piece of the conv arithmetic.
CASES = {
    "depthwise": (2, 8, 8, 8, (3, 3), 1, 1, 1, (6, 6), 1, "contiguous"),
    "depthwise-multiplier-2": (2, 4, 8, 4, (3, 3), 1, 1, 1, (5, 6), 1, "contiguous"),
    "narrow-groups-4-per-group": (2, 16, 16, 4, (3, 3), 1, 1, 1, (6, 5), 1, "contiguous"),
    "wide-groups-implicit-gemm": (2, 32, 32, 2, (3, 3), 1, 1, 1, (6, 6), 1, "contiguous"),
    "wide-groups-uneven-tiles": (1, 36, 40, 2, (3, 2), 1, (1, 0), 1, (5, 7), 1, "contiguous"),
    "pointwise-grouped-narrow": (2, 16, 32, 4, (1, 1), 1, 0, 1, (5, 5), 1, "contiguous"),
    "pointwise-grouped-wide": (2, 64, 32, 2, (1, 1), 1, 0, 1, (4, 5), 1, "contiguous"),
    "stride-2": (2, 8, 8, 2, (3, 3), 2, 1, 1, (7, 6), 1, "contiguous"),
    "stride-2-wide": (2, 32, 32, 2, (3, 3), 2, 1, 1, (7, 7), 1, "contiguous"),
    "padding-and-dilation": (2, 8, 16, 2, (3, 3), 1, 2, 2, (7, 7), 1, "contiguous"),
    "mixed-stride-dilation": (1, 6, 6, 3, (3, 2), (2, 1), (1, 0), (1, 2), (7, 6), 1, "contiguous"),
    "channels-last-depthwise": (2, 8, 8, 8, (3, 3), 1, 1, 1, (6, 6), 1, "channels_last"),
    "channels-last-wide": (2, 32, 32, 2, (3, 3), 2, 1, 1, (6, 7), 1, "channels_last"),
    "strided-view": (2, 8, 8, 4, (3, 3), 1, 1, 1, (5, 6), 1, "noncontiguous"),
    "shuffle-depthwise": (2, 12, 12, 12, (3, 3), 1, 1, 1, (5, 5), 3, "contiguous"),
    "shuffle-grouped-strided": (2, 8, 8, 2, (3, 3), 2, 1, 1, (6, 6), 4, "contiguous"),
    "shuffle-wide-channels-last": (2, 32, 32, 2, (3, 3), 1, 1, 1, (5, 5), 4, "channels_last"),
    "batch-1": (1, 8, 8, 4, (3, 3), 1, 1, 1, (6, 6), 1, "contiguous"),
    "1d": (2, 8, 12, 2, (3,), 2, 1, 1, (11,), 2, "contiguous"),
    "1d-depthwise-dilated": (1, 6, 6, 6, (3,), 1, 2, 2, (9,), 1, "contiguous"),
}


def make_case(config, dtype):
    n, c, m, groups, kernel, stride, padding, dilation, size, shuffle_groups, layout = config
    shape = (n, c, *size)
    if layout == "noncontiguous":  # every other element of a wider tensor in the last dimension
        x = torch.randn(*shape[:-1], 2 * shape[-1], device=DEVICE)[..., ::2]
    else:
        x = torch.randn(shape, device=DEVICE)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(m, c // groups, *kernel, device=DEVICE)
    b = torch.randn(m, device=DEVICE)
    return [t.to(dtype) for t in (x, w, b)], dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def check_case(config, dtype):
    """Forward and the three gradients on the triton backend against torch's conv (after an explicit shuffle) in float64."""
    (x, w, b), conv_args = make_case(config, dtype)
    shuffle_groups = config[9]
    spatial_dims = w.dim() - 2
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    oracle_leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ours = {1: groupconv.conv1d, 2: groupconv.conv2d}[spatial_dims]
    theirs = {1: F.conv1d, 2: F.conv2d}[spatial_dims]

    with ops.use_backend("triton"):
        out = ours(*leaves, **conv_args, shuffle_groups=shuffle_groups)
    shuffled = channel_shuffle(oracle_leaves[0], shuffle_groups) if shuffle_groups > 1 else oracle_leaves[0]
    expected = theirs(shuffled, *oracle_leaves[1:], **conv_args)
    assert out.dtype == dtype
    assert_close_scaled(out, expected, dtype, "forward")
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert out.is_contiguous(memory_format=torch.channels_last)

    grad_output = torch.randn_like(expected)
    with ops.use_backend("triton"):
        grads = torch.autograd.grad(out, leaves, grad_output.to(dtype))
    expected_grads = torch.autograd.grad(expected, oracle_leaves, grad_output)
    for name, grad, expected_grad in zip(("input", "weight", "bias"), grads, expected_grads):
        assert grad.dtype == dtype
        assert_close_scaled(grad, expected_grad, dtype, f"gradient of {name}")


@pytest.mark.parametrize("config", CASES.values(), ids=CASES.keys())
def test_float32_matches_torch(config):
    check_case(config, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("case", ["depthwise", "wide-groups-implicit-gemm"])
def test_half_precision_matches_torch(case, dtype):
    """Half types are read as they are and accumulated in float32 (tolerances of tests/conftest.py)."""
    check_case(CASES[case], dtype)


@pytest.mark.parametrize("form", ["implicit-gemm", "direct"])
@pytest.mark.parametrize("case", ["depthwise", "shuffle-grouped-strided", "channels-last-wide"])
def test_both_kernel_forms_match_torch(case, form, monkeypatch):
    """Each form is correct on shapes the automatic choice gives to the other one (dot tiles padded with zeros)."""
    threshold = 1 if form == "implicit-gemm" else 10**9
    monkeypatch.setattr(triton_backend, "IMPLICIT_GEMM_MIN_CHANNELS", threshold)
    check_case(CASES[case], torch.float32)


def test_weight_gradient_split_across_programs(monkeypatch):
    """A long pixel range is cut into parts summed afterwards; force several parts on a small problem."""
    monkeypatch.setattr(triton_backend, "PIXELS_PER_SPLIT", 16)
    check_case(CASES["depthwise"], torch.float32)
    check_case(CASES["wide-groups-implicit-gemm"], torch.float32)


def test_gradients_follow_a_forced_backend():
    """A conv forced onto a backend inside use_backend gets its gradients from that backend too. On a GPU the backward
    runs on an autograd device thread, whose Python context does not see the block around backward(); forcing the
    reference (never the automatic choice here) shows where the gradients went."""
    reference = ops.get_backend("reference")
    calls = []
    for name in ("conv_forward", "conv_backward_input", "conv_backward_weight"):
        method = getattr(reference, name)

        def spy(*args, _name=name, _method=method):
            calls.append(_name)
            return _method(*args)

        setattr(reference, name, spy)
    try:
        (x, w, b), conv_args = make_case(CASES["depthwise"], torch.float32)
        x, w = x.requires_grad_(), w.requires_grad_()
        with ops.use_backend("reference"):
            out = groupconv.conv2d(x, w, b, **conv_args)
        with ops.use_backend("reference"):
            out.backward(torch.randn_like(out))
    finally:
        for name in ("conv_forward", "conv_backward_input", "conv_backward_weight"):
            del reference.__dict__[name]
    assert sorted(calls) == ["conv_backward_input", "conv_backward_weight", "conv_forward"]


def test_empty_batch():
    x = torch.randn(0, 8, 5, 5, device=DEVICE, requires_grad=True)
    w = torch.randn(8, 2, 3, 3, device=DEVICE, requires_grad=True)
    with ops.use_backend("triton"):
        out = groupconv.conv2d(x, w, padding=1, groups=4)
        out.sum().backward()
    assert out.shape == (0, 8, 5, 5) and x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))


# ----------------------------------------------------------------------------------- what it refuses, and why
# Problems on DEVICE unless a test is about CPU tensors: on a GPU machine (no interpreter) a CPU problem
# carries one more reason, "device cpu is not cuda".
def problem(dtype=torch.float32, device=DEVICE, weight_shape=(8, 2, 3, 3), input_shape=(1, 8, 6, 6)):
    like = torch.empty(1, dtype=dtype, device=device)
    dims = len(weight_shape) - 2
    args = ConvArguments((1,) * dims, (1,) * dims, (1,) * dims, input_shape[1] // weight_shape[1])
    return ops.ConvProblem.build("conv_forward", input_shape, weight_shape, args, like)


def test_plain_cpu_tensors_are_refused_without_the_opt_in(monkeypatch):
    monkeypatch.delenv(triton_backend.ENV_ON_CPU)
    reasons = ops.get_backend("triton").not_supported_reasons(problem(device="cpu"))
    assert len(reasons) == 1 and "device cpu is not cuda" in reasons[0] and "GROUPCONV_TRITON_ON_CPU=1" in reasons[0]
    # ... so a CPU conv that only aten and the reference can otherwise run (32 input channels per group) goes to aten.
    wide = problem(device="cpu", weight_shape=(64, 32, 3, 3), input_shape=(1, 64, 6, 6))
    assert ops.select_backend(wide).name == "aten"


def test_the_opt_in_alone_does_not_run_cpu_tensors(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reasons = ops.get_backend("triton").not_supported_reasons(problem(device="cpu"))
    assert any("is not cuda" in reason for reason in reasons)


def test_unsupported_problems_say_why():
    triton = ops.get_backend("triton")
    [float64] = triton.not_supported_reasons(problem(torch.float64))
    assert "float64" in float64 and "float32" in float64
    assert triton.not_supported_reasons(problem(weight_shape=(8, 2, 3, 3, 3), input_shape=(1, 8, 4, 4, 4))) == [
        "3-D convolution (1-D and 2-D only)"]
    [shuffle] = triton.not_supported_reasons(ops.ShuffleProblem.build(torch.empty(1, 4, 3), 2))
    assert "only convolutions" in shuffle
    [too_large] = triton.not_supported_reasons(problem(input_shape=(4096, 8, 256, 256)))
    assert "32 bits" in too_large
    assert triton.not_supported_reasons(problem()) == []


def test_missing_triton_is_a_reason(monkeypatch):
    """Without an importable triton the backend refuses every problem, with the import error as its reason."""
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.delitem(sys.modules, "groupconv.ops.backends.triton.kernels", raising=False)
    monkeypatch.delattr(groupconv.ops.backends.triton, "kernels", raising=False)  # else `from . import kernels` finds it
    monkeypatch.setattr(triton_backend, "_kernels", None)
    monkeypatch.setattr(triton_backend, "_import_error", None)
    [reason] = ops.get_backend("triton").not_supported_reasons(problem())
    assert reason.startswith("triton is not usable (ModuleNotFoundError") and "triton" in reason
