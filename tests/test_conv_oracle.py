"""groupconv.conv1d/2d/3d against torch.nn.functional.convNd: random configurations, every backend.

The oracle is torch's own convolution in float64 (after an explicit channel shuffle when the
conv reads its input shuffled). Forward and the gradients of input, weight and bias are compared.
"""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import groupconv
from groupconv import ops

from .conftest import assert_close_scaled, skip_unless_supported

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
GROUPCONV_CONV = {1: groupconv.conv1d, 2: groupconv.conv2d, 3: groupconv.conv3d}
CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


@dataclass
class ConvCase:
    dims: int
    batch: int
    in_channels: int
    out_channels: int
    groups: int
    shuffle_groups: int
    kernel_size: tuple
    stride: tuple
    dilation: tuple
    padding: object
    input_size: tuple
    bias: bool
    layout: str  # contiguous | channels_last | noncontiguous | unbatched

    def torch_padding(self):
        if self.padding == "full":
            return tuple(d * (k - 1) for d, k in zip(self.dilation, self.kernel_size))
        return self.padding


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def conv_cases(draw, dims=st.sampled_from([1, 2, 3])):
    dims = draw(dims)
    max_extent = {1: 9, 2: 7, 3: 4}[dims]
    groups = draw(st.integers(1, 4))
    depthwise = draw(st.booleans())
    # Pointwise convs (1x1, stride 1, no padding) get their own share: some backends run only those.
    pointwise = draw(st.booleans())
    in_per_group = 1 if depthwise else draw(st.integers(1, 3))
    out_per_group = draw(st.integers(1, 3))
    kernel_size = tuple(1 if pointwise else draw(st.integers(1, 3)) for _ in range(dims))
    stride = tuple(1 if pointwise else draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding_kinds = ["int", "tuple", "valid", "full"] + (["same"] if all(s == 1 for s in stride) else [])
    kind = "valid" if pointwise else draw(st.sampled_from(padding_kinds))
    padding = {
        "int": draw(st.integers(0, 2)),
        "tuple": tuple(draw(st.integers(0, 2)) for _ in range(dims)),
    }.get(kind, kind)
    # Every spatial extent must hold the dilated kernel after padding.
    pads = (padding,) * dims if isinstance(padding, int) else padding if isinstance(padding, tuple) else (0,) * dims
    input_size = tuple(
        max(draw(st.integers(1, max_extent)), d * (k - 1) + 1 - 2 * p)
        for k, d, p in zip(kernel_size, dilation, pads)
    )
    in_channels = groups * in_per_group
    layouts = ["contiguous", "noncontiguous", "unbatched"] + (["channels_last"] if dims > 1 else [])
    return ConvCase(
        dims=dims,
        batch=draw(st.integers(1, 2)),
        in_channels=in_channels,
        out_channels=groups * out_per_group,
        groups=groups,
        shuffle_groups=draw(st.sampled_from([1] if pointwise and draw(st.booleans()) else _divisors(in_channels))),
        kernel_size=kernel_size,
        stride=stride,
        dilation=dilation,
        padding=padding,
        input_size=input_size,
        bias=draw(st.booleans()),
        layout=draw(st.sampled_from(layouts)),
    )


def make_tensors(case: ConvCase, dtype):
    shape = (case.batch, case.in_channels, *case.input_size)
    if case.layout == "noncontiguous":
        # A strided view: every other element of a larger tensor in the last spatial dimension.
        x = torch.randn(*shape[:-1], shape[-1] * 2, dtype=torch.float64)[..., ::2]
    else:
        x = torch.randn(shape, dtype=torch.float64)
    if case.layout == "channels_last":
        x = x.contiguous(memory_format=CHANNELS_LAST[case.dims])
    if case.layout == "unbatched":
        x = x[0]
    w = torch.randn(case.out_channels, case.in_channels // case.groups, *case.kernel_size, dtype=torch.float64)
    b = torch.randn(case.out_channels, dtype=torch.float64) if case.bias else None
    return [t.to(dtype) if t is not None else None for t in (x, w, b)]


def shuffle(x, groups, channel_dim):
    if groups == 1:
        return x
    c = x.shape[channel_dim]
    shape = (*x.shape[:channel_dim], groups, c // groups, *x.shape[channel_dim + 1 :])
    return x.reshape(shape).transpose(channel_dim, channel_dim + 1).reshape(x.shape)


def oracle(case, x, w, b):
    channel_dim = 0 if case.layout == "unbatched" else 1
    x = shuffle(x, case.shuffle_groups, channel_dim)
    return TORCH_CONV[case.dims](x, w, b, case.stride, case.torch_padding(), case.dilation, case.groups)


def run_groupconv(case, x, w, b):
    return GROUPCONV_CONV[case.dims](
        x, w, b, case.stride, case.padding, case.dilation, case.groups, shuffle_groups=case.shuffle_groups
    )


def forward_problem(case: ConvCase, x, w, b):
    return ops.conv_problem(x, w, b, case.stride, case.padding, case.dilation, case.groups,
                            shuffle_groups=case.shuffle_groups)


def check_against_oracle(case: ConvCase, dtype, backend):
    x, w, b = make_tensors(case, dtype)
    if backend is not None:  # a forced backend is tested on the cases it runs; hypothesis draws others
        assume(not ops.get_backend(backend).not_supported_reasons(forward_problem(case, x, w, b)))
    leaves = [t.detach().requires_grad_() for t in (x, w, b) if t is not None]
    oracle_leaves = [t.detach().double().requires_grad_() for t in leaves]
    with ops.use_backend(backend):
        out = run_groupconv(case, *leaves, *([None] if not case.bias else []))
    expected = oracle(case, *oracle_leaves, *([None] if not case.bias else []))
    assert out.dtype == dtype
    assert_close_scaled(out, expected, dtype, f"forward {case}")

    grad_output = torch.randn_like(expected)
    with ops.use_backend(backend):
        grads = torch.autograd.grad(out, leaves, grad_output.to(dtype))
    expected_grads = torch.autograd.grad(expected, oracle_leaves, grad_output)
    for name, grad, expected_grad in zip(("input", "weight", "bias"), grads, expected_grads):
        assert grad.dtype == dtype
        assert_close_scaled(grad, expected_grad, dtype, f"grad {name} {case}")
    return out, x


BACKENDS = ops.list_backends()


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=conv_cases())
def test_float64_matches_torch(backend, case):
    first_supported_conv(backend, torch.empty(1, 8, 5, 5, dtype=torch.float64))  # skips a backend that runs none here
    check_against_oracle(case, torch.float64, backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
@given(case=conv_cases(dims=st.sampled_from([1, 2])))
def test_low_precision_matches_torch(backend, dtype, case):
    first_supported_conv(backend, torch.empty(1, 8, 5, 5, dtype=dtype))  # skips a backend without this dtype
    check_against_oracle(case, dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_can_be_modified_in_place(backend):
    """Models apply ReLU(inplace=True) to conv outputs: every backend's output must allow it, with correct gradients."""
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    weight_shape, padding, groups = first_supported_conv(backend, x)
    w = torch.randn(weight_shape, dtype=torch.float64, requires_grad=True)
    with ops.use_backend(backend):
        out = torch.relu_(groupconv.conv2d(x, w, padding=padding, groups=groups))
        grads = torch.autograd.grad(out.sum(), (x, w))
    expected = torch.relu(F.conv2d(x, w, padding=padding, groups=groups))
    torch.testing.assert_close(out, expected)
    for grad, expected_grad in zip(grads, torch.autograd.grad(expected.sum(), (x, w))):
        torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x = torch.randn(0, 8, 5, 5, requires_grad=True)
    weight_shape, padding, groups = first_supported_conv(backend, x)
    w = torch.randn(weight_shape, requires_grad=True)
    with ops.use_backend(backend):
        out = groupconv.conv2d(x, w, padding=padding, groups=groups)
        out.sum().backward()
    assert out.shape == (0, 8, 5, 5) and x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))


@given(case=conv_cases())
def test_automatic_dispatch_matches_torch(case):
    check_against_oracle(case, torch.float64, None)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=conv_cases(dims=st.sampled_from([2, 3])))
def test_output_layout_follows_input(backend, case):
    """A channels_last input gives a channels_last output, as with torch; anything else a contiguous one."""
    first_supported_conv(backend, torch.empty(1, 8, 5, 5))  # skips a backend that runs none here
    x, w, b = make_tensors(case, torch.float32)
    assume(not ops.get_backend(backend).not_supported_reasons(forward_problem(case, x, w, b)))
    fmt = CHANNELS_LAST[case.dims]
    channels_last_only = x.dim() == case.dims + 2 and x.is_contiguous(memory_format=fmt) and not x.is_contiguous()
    with ops.use_backend(backend):
        out = run_groupconv(case, x, w, b)
    if channels_last_only:
        assert out.is_contiguous(memory_format=fmt)
        # torch's own 2-D conv does the same (its shuffle would materialise a copy), except on degenerate shapes
        # where size-1 extents make both layouts one and torch's choice varies by kernel (a 1x2 plane, say). Its 3-D
        # convs on the small volumes drawn here often go to a kernel that returns a contiguous output (torch 2.13:
        # a 1x1x1 kernel on 2x2x2, a 2x1x1 one), so they are not compared.
        if case.shuffle_groups == 1 and min(x.shape[2:]) > 1 and case.dims == 2:
            assert oracle(case, x, w, b).is_contiguous(memory_format=fmt)
    else:
        assert out.is_contiguous()


GRADCHECK_CASES = [
    # dims, N, C, M, groups, shuffle, kernel, stride, dilation, padding, size
    (1, 2, 4, 6, 2, 2, (3,), (2,), (1,), "full", (7,)),
    (2, 1, 6, 6, 3, 3, (3, 2), (1, 2), (2, 1), 1, (6, 5)),
    (2, 2, 4, 4, 4, 1, (3, 3), (1, 1), (1, 1), "same", (5, 4)),
    (2, 1, 4, 8, 1, 2, (2, 2), (1, 1), (1, 1), "same", (4, 5)),
    (3, 1, 4, 4, 2, 2, (2, 2, 2), (1, 2, 1), (1, 1, 1), (1, 0, 1), (3, 4, 3)),
    (2, 2, 6, 4, 2, 1, (1, 1), (1, 1), (1, 1), 0, (3, 4)),  # pointwise grouped
    (2, 1, 6, 6, 6, 3, (3, 3), (2, 1), (1, 2), 1, (7, 6)),  # depthwise, shuffled, strided, dilated
    (2, 2, 3, 6, 3, 3, (3, 2), (1, 1), (1, 1), (1, 0), (5, 4)),  # depthwise with depth multiplier 2
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", GRADCHECK_CASES)
def test_gradcheck(backend, config):
    dims, n, c, m, groups, shuffle_groups, kernel, stride, dilation, padding, size = config
    x = torch.randn(n, c, *size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(m, c // groups, *kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(m, dtype=torch.float64, requires_grad=True)
    skip_unless_supported(backend, ops.conv_problem(x, w, b, stride, padding, dilation, groups,
                                                    shuffle_groups=shuffle_groups))

    def conv(x, w, b):
        return GROUPCONV_CONV[dims](x, w, b, stride, padding, dilation, groups, shuffle_groups=shuffle_groups)

    with ops.use_backend(backend):
        assert torch.autograd.gradcheck(conv, (x, w, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "config",
    [
        (1, 1, 4, 4, 2, 2, (3,), (2,), (1,), "full", (5,)),
        (2, 1, 4, 2, 2, 2, (2, 2), (1, 2), (2, 1), 1, (4, 3)),
        (3, 1, 2, 2, 2, 1, (2, 1, 2), (1, 1, 2), (1, 1, 1), 0, (2, 2, 3)),
        (1, 2, 4, 6, 2, 1, (1,), (1,), (1,), 0, (5,)),
        (1, 1, 4, 4, 4, 2, (3,), (2,), (1,), 1, (7,)),
    ],
)
def test_gradgradcheck(backend, config):
    """Second derivatives (gradient penalties, Hessian-vector products) work as with torch's conv."""
    dims, n, c, m, groups, shuffle_groups, kernel, stride, dilation, padding, size = config
    x = torch.randn(n, c, *size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(m, c // groups, *kernel, dtype=torch.float64, requires_grad=True)
    skip_unless_supported(backend, ops.conv_problem(x, w, None, stride, padding, dilation, groups,
                                                    shuffle_groups=shuffle_groups))

    def conv(x, w):
        return GROUPCONV_CONV[dims](x, w, None, stride, padding, dilation, groups, shuffle_groups=shuffle_groups)

    with ops.use_backend(backend):
        assert torch.autograd.gradgradcheck(conv, (x, w), fast_mode=True)


def test_gradient_penalty_matches_torch():
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)

    def penalty(conv):
        (grad_x,) = torch.autograd.grad(conv(x, w, None, 1, 1, 1, 3).square().sum(), x, create_graph=True)
        return torch.autograd.grad(grad_x.square().sum(), (x, w))

    for ours, expected in zip(penalty(groupconv.conv2d), penalty(F.conv2d)):
        torch.testing.assert_close(ours, expected)


# (weight shape, padding, groups) of an 8-channel conv: each backend is tested on the first one it runs.
SMALL_CONVS = [((8, 2, 3, 3), 1, 4), ((8, 2, 1, 1), 0, 4), ((8, 1, 3, 3), 1, 8)]


def first_supported_conv(backend, x):
    for weight_shape, padding, groups in SMALL_CONVS:
        problem = ops.conv_problem(x, torch.empty(weight_shape, dtype=x.dtype), padding=padding, groups=groups)
        if not ops.get_backend(backend).not_supported_reasons(problem):
            return weight_shape, padding, groups
    pytest.skip(f"backend {backend!r} runs none of {SMALL_CONVS}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_propagate_as_in_torch(backend):
    x = torch.randn(2, 8, 9, 9)
    x[0, 1, 4, 4] = float("nan")
    x[1, 5, 0, 2] = float("inf")
    weight_shape, padding, groups = first_supported_conv(backend, x)
    w = torch.rand(weight_shape) + 0.1  # positive, so inf does not meet -inf
    with ops.use_backend(backend):
        out = groupconv.conv2d(x, w, padding=padding, groups=groups)
    expected = F.conv2d(x, w, padding=padding, groups=groups)
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.isinf(), expected.isinf())
    assert out.isnan().any() and out.isinf().any()
    finite = expected.isfinite()
    assert torch.allclose(out[finite], expected[finite], atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("needs", ["input", "weight", "both"])
def test_each_gradient_alone_and_both_together(backend, needs):
    """A frozen weight (fine-tuning) or an input without gradient (the first layer) takes the single-gradient ops;
    a training step takes the combined one. All three paths match torch."""
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    weight_shape, padding, groups = first_supported_conv(backend, x)
    w = torch.randn(weight_shape, dtype=torch.float64)
    x.requires_grad_(needs in ("input", "both"))
    w.requires_grad_(needs in ("weight", "both"))
    wanted = [t for t in (x, w) if t.requires_grad]
    grad_output = torch.randn_like(F.conv2d(x, w, padding=padding, groups=groups))
    with ops.use_backend(backend):
        ours = torch.autograd.grad(groupconv.conv2d(x, w, padding=padding, groups=groups), wanted, grad_output)
    expected = torch.autograd.grad(F.conv2d(x, w, padding=padding, groups=groups), wanted, grad_output)
    for mine, theirs in zip(ours, expected, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_the_combined_backward_has_a_double_backward():
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    grad_output = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(
        lambda go, a, b: torch.ops.groupconv.conv_backward(go, a, b, [1, 1], [1, 1], [1, 1], 3, 1), (grad_output, x, w))


# ------------------------------------------------------------------ every vector path of the native kernels
# The random cases above use at most 12 channels, so the C++ kernels' wide paths need their own cases. The vector
# register is 64 bytes (csrc/layout.h: 16 floats, 8 doubles), with a half register for the last 8 floats (4
# doubles) of a row. csrc/pointwise.cpp (channels_last 1x1 convs) takes a group's columns in chunks of 4 vectors,
# then 2, then what is left: 1.5, 1 or 0.5 vectors, the last one partly masked where the group's width is not a
# multiple of half a vector; its weight gradient tiles the output channels by 8, 4, 2, 1 and sums chunks of 256
# pixels; its forward takes pixels 8 at a time (then one by one) in chunks of 64. csrc/narrow_nhwc.cpp runs groups of
# a power of two channels up to one vector with a kernel 3 wide. Outputs over 32 MiB are written with streaming
# stores (pointwise.cpp's STREAMING_MIN_BYTES).


def _wide_case(groups, in_per_group, out_per_group, size, kernel=(1, 1), stride=(1, 1), padding=0, layout="channels_last",
               shuffle_groups=1, bias=True, batch=1):
    return ConvCase(dims=2, batch=batch, in_channels=groups * in_per_group, out_channels=groups * out_per_group,
                    groups=groups, shuffle_groups=shuffle_groups, kernel_size=kernel, stride=stride, dilation=(1, 1),
                    padding=padding, input_size=size, bias=bias, layout=layout)


# (groups, input and output channels per group, input size): per-group widths of 5, 8, 13, 16, 20, 24, 40, 48, 64,
# 100, 104 and 120 reach every column path (0.5, 1, 1.5, 2 and 4 vectors, masked or whole) of floats and doubles;
# output widths of 13 and 20 reach the 8 + 4 + 1 and 8 + 4 row tiles of the weight gradient; 3x5, 9x9 and 17x17
# pixels reach the pixel tails and a second forward chunk and gradient chunk.
POINTWISE_WIDTHS = [
    (1, 16, 16, (3, 5)),
    (2, 13, 24, (3, 5)),
    (3, 24, 8, (9, 9)),
    (2, 5, 13, (3, 3)),
    (1, 48, 20, (17, 17)),
    (2, 40, 48, (2, 3)),
    (1, 100, 104, (3, 3)),
    (2, 64, 120, (2, 2)),
]
# (channels, channels per group, stride, padding, input size) of 3x3 convs: every group width csrc/narrow_nhwc.cpp
# runs, both strides (the input gradient runs the same stride both ways), and rows that are not a multiple of its
# 8-pixel blocks.
NARROW_WIDTHS = [
    (32, 16, (1, 1), 1, (5, 11)),
    (32, 8, (2, 2), 1, (7, 9)),
    (16, 4, (1, 1), 1, (4, 10)),
    (32, 2, (1, 1), (1, 0), (6, 9)),
    (48, 1, (2, 2), 1, (7, 7)),
]
KERNEL_PATH_CASES = (
    [_wide_case(g, a, b, size, layout=layout) for g, a, b, size in POINTWISE_WIDTHS
     for layout in ("channels_last", "contiguous")]
    + [_wide_case(c // cpg, cpg, cpg, size, kernel=(3, 3), stride=stride, padding=padding, layout=layout)
       for c, cpg, stride, padding, size in NARROW_WIDTHS for layout in ("channels_last", "contiguous")]
)


def _case_id(case):
    kind = "pointwise" if case.kernel_size == (1, 1) else "3x3"
    return (f"{kind}-{case.in_channels}to{case.out_channels}-g{case.groups}-{'x'.join(map(str, case.input_size))}-"
            f"{case.layout}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", KERNEL_PATH_CASES, ids=_case_id)
def test_wide_groups_match_torch(case, backend, dtype):
    x, w, b = make_tensors(case, dtype)
    skip_unless_supported(backend, forward_problem(case, x, w, b))
    check_against_oracle(case, dtype, backend)


@pytest.mark.native
def test_pointwise_output_past_the_streaming_store_size_matches_torch():
    """A channels_last 1x1 conv whose float32 output (96 channels of 300x300 pixels, 34.6 MB) is over the 32 MiB from
    which csrc/pointwise.cpp writes with streaming stores, groups of 24 channels: a vector and a half each."""
    case = _wide_case(4, 24, 24, (300, 300))
    check_against_oracle(case, torch.float32, "native")


# ------------------------------------------------------------------ float32 accumulation of low precision
# Every backend promises (and the reference, ops/reference.py, states) that bfloat16 and float16 inputs are summed in
# float32 and rounded once. On the short sums above, summing in the low precision itself would stay within the
# tolerances. Here each output of the forward sums 4096 positive products of about 0.25 (64 channels by 64 taps), each
# weight gradient 2048 (2 samples by 1024 positions), each input gradient 512 (8 channels by 64 taps): a sum kept in
# bfloat16 (8 bits) or float16 (11 bits) loses a rounding's worth at each of its many additions, far more than the one
# rounding of a float32 sum. (Many taps, because the reference sums over the taps one addition at a time.)


def _long_sum_tensors(dtype):
    x = torch.rand(2, 64, 1024 + 63, dtype=torch.float64).to(dtype)
    w = torch.rand(8, 64, 64, dtype=torch.float64).to(dtype)
    grad_output = torch.rand(2, 8, 1024, dtype=torch.float64).to(dtype)
    return x, w, grad_output


def _assert_within_roundings(actual, exact, dtype, what, roundings=1):
    """`actual` equals the float64 `exact` rounded once to `dtype`, give or take one unit in its last place (a float32
    sum can round to the neighbour of the exact sum's rounding), or `roundings` units."""
    assert actual.dtype == dtype
    unit = torch.finfo(dtype).eps  # one unit in the last place, relative, at most
    error = ((actual.double() - exact) / exact.abs()).abs().max().item()
    assert error <= roundings * unit, f"{what}: relative error {error:.3g}, more than {roundings} x {unit:.3g}"


# torch's own CPU float16 conv (torch 2.x, the aten backend) rounds its input gradient a few more times: 4 units
# measured on this problem, still far from a float16 sum.
EXTRA_ROUNDINGS = {("aten", torch.float16, "grad input"): 8}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_sums_accumulate_in_float32(backend, dtype):
    x, w, grad_output = _long_sum_tensors(dtype)
    skip_unless_supported(backend, ops.conv_problem(x, w))
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    exact_leaves = [t.double().requires_grad_() for t in (x, w)]
    exact = F.conv1d(*exact_leaves)
    exact_grads = torch.autograd.grad(exact, exact_leaves, grad_output.double())
    with ops.use_backend(backend):
        out = groupconv.conv1d(*leaves)
        grads = torch.autograd.grad(out, leaves, grad_output)
    _assert_within_roundings(out, exact.detach(), dtype, "forward")
    for name, grad, exact_grad in zip(("input", "weight"), grads, exact_grads, strict=True):
        what = f"grad {name}"
        _assert_within_roundings(grad, exact_grad, dtype, what, EXTRA_ROUNDINGS.get((backend, dtype, what), 1))


# ------------------------------------------------------------------ the Triton backend in its interpreter
# Without a GPU the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py) on CPU tensors
# once the backend's opt-in is set; the interpreter is slow, so a few seeded cases of the same random oracle,
# forward and gradients.


def _triton_interpreter_enabled() -> bool:
    from groupconv.ops.backends.triton import backend as triton_backend

    return triton_backend.interpreter_enabled()


# (On a GPU, tests/test_triton.py runs the backend on CUDA tensors.)
@pytest.mark.skipif(not _triton_interpreter_enabled(), reason="Triton's interpreter is not enabled")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@settings(max_examples=6, derandomize=True)
@given(case=conv_cases(dims=st.sampled_from([1, 2])))
def test_triton_matches_torch(dtype, case):
    from groupconv.ops.backends.triton import backend as triton_backend

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(triton_backend.ENV_ON_CPU, "1")
        check_against_oracle(case, dtype, "triton")


@pytest.mark.parametrize("backend", ["reference", "aten"])
def test_shuffled_conv_gradients_unshuffle_where_the_shuffle_is_not_its_own_inverse(backend):
    """6 channels in 3 groups: the shuffle (3, 2) -> (2, 3) and its inverse differ, so an input gradient shuffled
    instead of unshuffled is wrong (with C = g * g the two permutations coincide and would hide it)."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    expected = torch.autograd.grad(F.conv2d(F.channel_shuffle(x, 3), w, padding=1, groups=3), (x, w), grad)
    with ops.use_backend(backend):
        actual = torch.autograd.grad(groupconv.conv2d(x, w, padding=1, groups=3, shuffle_groups=3), (x, w), grad)
    for got, wanted in zip(actual, expected):
        torch.testing.assert_close(got, wanted)
