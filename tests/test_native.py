"""The compiled CPU kernels beyond the oracle tests: model-size shapes, thread-count independence, graceful absence."""
# The oracle tests (test_conv_oracle.py) force every backend, this one included, on random configurations.

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import groupconv
from groupconv import ops
from groupconv.ops.backends.native import backend as native
from groupconv.ops.backends.via_channels_last import VIA_CHANNELS_LAST, ViaChannelsLast

pytestmark = pytest.mark.native  # (skipped where the kernels are unavailable: conftest.py)


def run(x, w, stride, shuffle_groups, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = x.detach().requires_grad_()
        w = w.detach().requires_grad_()
        with ops.use_backend("native"):
            out = groupconv.conv2d(x, w, None, stride, 1, 1, w.shape[0], shuffle_groups=shuffle_groups)
            grad_x, grad_w = torch.autograd.grad(out, (x, w), torch.ones_like(out) * torch.arange(out.numel()).view_as(
                out).remainder(7).to(out.dtype))
        return out, grad_x, grad_w
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_shufflenet_unit_depthwise_matches_torch(channels_last, stride):
    """ShuffleNet 1x g=8, stage 2: 96 channels at 28x28 read through the 8-group shuffle."""
    x = torch.randn(3, 96, 28, 28)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(96, 1, 3, 3)
    out, grad_x, grad_w = run(x, w, stride, 8, torch.get_num_threads())
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    expected = F.conv2d(torch.nn.functional.channel_shuffle(xr, 8), wr, None, stride, 1, 1, 96)
    weights = torch.ones_like(expected) * torch.arange(expected.numel()).view_as(expected).remainder(7).float()
    expected_grads = torch.autograd.grad(expected, (xr, wr), weights)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad_x, expected_grads[0])
    torch.testing.assert_close(grad_w, expected_grads[1], rtol=1e-4, atol=1e-3)  # sums of 3 x 28 x 28 products
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("stride", [1, 2])
def test_nchw_narrow_grouped_conv_matches_torch(stride):
    """The NCHW kernels at their widest groups: 128 channels in 64 groups of 2."""
    x = torch.randn(2, 128, 16, 16, requires_grad=True)
    w = torch.randn(128, 2, 3, 3, requires_grad=True)
    weights = torch.randn(2, 128, 16 // stride, 16 // stride)
    with ops.use_backend("native"):
        out = groupconv.conv2d(x, w, None, stride, 1, 1, 64)
        grads = torch.autograd.grad(out, (x, w), weights)
    expected = F.conv2d(x, w, None, stride, 1, 1, 64)
    expected_grads = torch.autograd.grad(expected, (x, w), weights)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0], expected_grads[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[1], expected_grads[1], rtol=1e-4, atol=1e-3)


def test_nchw_groups_wider_than_two_channels_are_left_to_the_others():
    """ResNeXt's 4-channel groups in NCHW: the NCHW kernels refuse them (oneDNN is faster there), channels_last runs."""
    x, w = torch.randn(2, 128, 16, 16), torch.randn(128, 4, 3, 3)
    native_backend = ops.get_backend("native")
    for op in ("conv_forward", "conv_backward"):
        assert native_backend.not_supported_reasons(ops.conv_problem(x, w, padding=1, groups=32, op=op)) == [
            "4 input channels per group in layout contiguous (at most 2: oneDNN is faster on wider groups; "
            "channels_last runs up to 16)"]
        assert not native_backend.not_supported_reasons(ops.conv_problem(
            x.contiguous(memory_format=torch.channels_last), w, padding=1, groups=32, op=op))
    ops.set_tuning(False)  # priority order, where native comes first
    try:
        assert ops.select_backend(ops.conv_problem(x, w, padding=1, groups=32, op="conv_backward")).name == "aten"
    finally:
        ops.set_tuning(None)


def test_without_tuning_torchs_kernels_run_where_the_nchw_kernels_lose():
    """Priority order puts native first; its NCHW kernels step aside, untuned, where they measured slower than
    oneDNN (gradients; forwards with output planes under 28x28). Forcing them still works."""
    w = torch.randn(64, 1, 3, 3)
    small, large = torch.randn(2, 64, 14, 14), torch.randn(2, 64, 28, 28)
    ops.set_tuning(False)
    try:
        chosen = lambda x, op, **kw: ops.select_backend(ops.conv_problem(x, w, padding=1, groups=64, op=op, **kw)).name
        assert chosen(large, "conv_forward") == "native" and chosen(small, "conv_forward") == "aten"
        assert chosen(large, "conv_forward", stride=2) == "aten"  # a 14x14 output
        assert chosen(large, "conv_backward") == chosen(large, "conv_backward_input") == "aten"
        as_channels_last = small.contiguous(memory_format=torch.channels_last)
        assert chosen(as_channels_last, "conv_forward") == chosen(as_channels_last, "conv_backward") == "native"
        with ops.use_backend("native"):
            assert ops.select_backend(ops.conv_problem(small, w, padding=1, groups=64, op="conv_backward")).name \
                == "native"
    finally:
        ops.set_tuning(None)


@pytest.mark.parametrize("channels_last", [False, True])
def test_results_do_not_depend_on_the_thread_count(channels_last):
    x = torch.randn(4, 24, 13, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(24, 1, 3, 3)
    one = run(x, w, 2, 3, threads=1)
    two = run(x, w, 2, 3, threads=2)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_without_the_kernels_everything_still_works():
    """GROUPCONV_NATIVE=0 (or a failed build): the backend says why and the others run every call."""
    code = (
        "import torch, groupconv\n"
        "from groupconv import ops\n"
        "x, w = torch.randn(2, 8, 6, 6), torch.randn(8, 1, 3, 3)\n"
        "print(ops.explain_conv(x, w, padding=1, groups=8))\n"
        "out = groupconv.conv2d(x, w, padding=1, groups=8)\n"
        "assert torch.allclose(out, torch.nn.functional.conv2d(x, w, padding=1, groups=8), atol=1e-6)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "GROUPCONV_NATIVE": "0"})
    assert result.returncode == 0, result.stderr
    assert "native: turned off by GROUPCONV_NATIVE=0" in result.stdout
    assert "-> aten: can run" in result.stdout


def shuffled(x, groups):
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


# (size, stride, dilation, padding): every margin a 3x3 kernel can have, on planes from 1x1 up, where it fits.
PADDED_PLANE_CASES = [
    (size, stride, dilation, padding)
    for size in [(1, 1), (2, 5), (7, 7), (9, 16)] for stride in [1, 2] for dilation in [1, 2]
    for padding in sorted({0, 1, 2, 2 * dilation})  # 2 * dilation: 'full'
    if all(s + 2 * padding >= 2 * dilation + 1 for s in size)
]


@pytest.mark.parametrize("size, stride, dilation, padding", PADDED_PLANE_CASES)
@pytest.mark.parametrize("in_per_group, multiplier, shuffle_groups", [(1, 1, 1), (1, 1, 4), (1, 2, 1), (2, 1, 2)])
def test_3x3_padded_plane_path_matches_torch(size, stride, dilation, padding, in_per_group, multiplier,
                                             shuffle_groups):
    """The NCHW 3x3 kernels read a zero-padded copy of each plane: every margin, stride, dilation and group width
    (the oracle tests draw this case too rarely to rely on them), forward and both gradients, in float64."""
    groups = 4
    x = torch.randn(2, groups * in_per_group, *size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(groups * multiplier, in_per_group, 3, 3, dtype=torch.float64, requires_grad=True)
    with ops.use_backend("native"):
        ours = groupconv.conv2d(x, w, None, stride, padding, dilation, groups, shuffle_groups=shuffle_groups)
    expected = F.conv2d(shuffled(x, shuffle_groups), w, None, stride, padding, dilation, groups)
    torch.testing.assert_close(ours, expected)
    grad_output = torch.randn_like(expected)
    with ops.use_backend("native"):
        ours_grads = torch.autograd.grad(ours, (x, w), grad_output)
    for mine, theirs in zip(ours_grads, torch.autograd.grad(expected, (x, w), grad_output)):
        torch.testing.assert_close(mine, theirs)


def check_native_channels_last_against_torch(x, w, b, grad_output, stride=1, padding=0, groups=1,
                                             input_gradient=True, shuffle_groups=1):
    """The native backend's forward and gradients (the input's where `input_gradient`, the weight's, the bias's)
    against torch's (a materialised shuffle first), and a channels_last output."""
    def shuffled_conv(x, *args):
        return F.conv2d(shuffled(x, shuffle_groups), *args)

    def native_conv(*args):
        return groupconv.conv2d(*args, shuffle_groups=shuffle_groups)

    results = []
    for conv, backend in ((native_conv, "native"), (shuffled_conv, None)):
        leaves = [t.detach().requires_grad_(i > 0 or input_gradient) for i, t in enumerate((x, w, b)) if t is not None]
        with ops.use_backend(backend):
            out = conv(leaves[0], leaves[1], leaves[2] if b is not None else None, stride, padding, 1, groups)
            results.append((out, torch.autograd.grad(out, [leaf for leaf in leaves if leaf.requires_grad],
                                                     grad_output)))
    (out, grads), (expected, expected_grads) = results
    assert out.is_contiguous(memory_format=torch.channels_last)
    tolerance = {torch.float32: 1e-4, torch.float64: 1e-11}[x.dtype]
    torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=tolerance, atol=tolerance)


# (in, out, groups): ShuffleNet g8/g3 layers (12 or 20 outputs per group: one vector, padded), ResNeXt-like wide groups
# (4-vector chunks), 1x1s that widen (192 outputs per group: 4 + 4 + 4 vectors), and odd widths (17, 33: a padded
# last vector after 2- and 1-vector chunks); channels per group that end in a half vector (float32: 24, a vector and a
# half; 8, a half alone; 20, 40 and 5, a half used in part), out (the forward) and in (the gradients); 5x7 pixels and
# batch 3: a pixel remainder after the 8-pixel blocks; dense 1x1s (groups = 1, ShuffleNet's narrow ones).
@pytest.mark.parametrize("in_channels,out_channels,groups", [(96, 96, 8), (60, 240, 3), (384, 96, 8), (256, 512, 4),
                                                              (16, 384, 2), (34, 66, 2), (51, 99, 3), (96, 192, 8),
                                                              (48, 96, 2), (64, 64, 8), (80, 40, 2), (6, 10, 2),
                                                              (24, 96, 1), (144, 36, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_channels_last_pointwise_matches_torch(in_channels, out_channels, groups, dtype, with_bias):
    """csrc/pointwise.cpp: forward and both gradients."""
    generator = torch.Generator().manual_seed(in_channels + out_channels)
    x = torch.randn(3, in_channels, 5, 7, generator=generator, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(out_channels, in_channels // groups, 1, 1, generator=generator, dtype=dtype)
    b = torch.randn(out_channels, generator=generator, dtype=dtype) if with_bias else None
    grad_output = torch.randn(3, out_channels, 5, 7, generator=generator, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    check_native_channels_last_against_torch(x, w, b, grad_output, groups=groups)
    problem = ops.conv_problem(x, w, b, groups=groups)
    assert not ops.get_backend("native").not_supported_reasons(problem)


# (in channels, out channels, groups, shuffle groups): half-vector and odd group widths, dense, shuffles that do and do
# not match the groups
EPILOGUE_CASES = [(96, 96, 8, 8), (60, 240, 3, 3), (384, 96, 8, 8), (34, 66, 2, 17), (51, 99, 3, 1), (24, 96, 1, 4),
                  (80, 40, 2, 5), (6, 10, 2, 3)]


@pytest.mark.parametrize("in_channels,out_channels,groups,shuffle_groups", EPILOGUE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu, with_residual", [(False, True), (True, False), (True, True)])
@pytest.mark.parametrize("packed_once", [False, True])
def test_channels_last_pointwise_epilogue_matches_torch(in_channels, out_channels, groups, shuffle_groups, dtype,
                                                        relu, with_residual, packed_once):
    """csrc/pointwise.cpp's inference epilogue: relu(conv(channel_shuffle(x)) + residual), batch 1 and 3, with the
    weights packed at each call or once (PointwiseKernel)."""
    generator = torch.Generator().manual_seed(in_channels * out_channels + shuffle_groups)
    for batch in (1, 3):
        x = torch.randn(batch, in_channels, 5, 7, generator=generator, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(out_channels, in_channels // groups, 1, 1, generator=generator, dtype=dtype)
        b = torch.randn(out_channels, generator=generator, dtype=dtype)
        residual = torch.randn(batch, out_channels, 5, 7, generator=generator, dtype=dtype) if with_residual else None
        expected = F.conv2d(torch.channel_shuffle(x, shuffle_groups) if shuffle_groups > 1 else x, w, b,
                            groups=groups)
        expected = expected + residual if with_residual else expected
        expected = expected.relu() if relu else expected
        if packed_once:
            actual = native.load().PointwiseKernel(w, b, groups, relu, shuffle_groups)(x, residual)
        else:
            actual = native.load().pointwise_forward_nhwc(x, w, b, groups, residual, relu, shuffle_groups)
        assert actual.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(actual, expected)
    with pytest.raises(RuntimeError, match="the tensor added must have the output's shape"):
        native.load().pointwise_forward_nhwc(x, w, b, groups, torch.zeros(1, out_channels, 1, 1, dtype=dtype))


def test_a_pointwise_kernel_packed_once_refuses_what_it_was_not_packed_for():
    kernel_class = native.load().PointwiseKernel
    w = torch.randn(12, 4, 1, 1)
    kernel = kernel_class(w, None, 3, False, 1)
    x = torch.randn(2, 12, 3, 3).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(kernel(x), F.conv2d(x, w, groups=3))
    with pytest.raises(RuntimeError, match="input must have 12 channels, the weight's dtype Float"):
        kernel(torch.randn(2, 8, 3, 3).contiguous(memory_format=torch.channels_last))
    with pytest.raises(RuntimeError, match="input must have 12 channels, the weight's dtype Float"):
        kernel(x.double())
    with pytest.raises(RuntimeError, match="input must be a channels_last 4-D tensor"):
        kernel(torch.randn(2, 12, 3, 3))
    with pytest.raises(RuntimeError, match=r"weight must be a 1x1 conv's \(M, C/groups, 1, 1\)"):
        kernel_class(torch.randn(12, 4, 3, 3), None, 3, False, 1)
    with pytest.raises(RuntimeError, match="groups=5 must divide the weight's 12 output channels"):
        kernel_class(w, None, 5, False, 1)
    with pytest.raises(RuntimeError, match="shuffle_groups=5 must divide the input's 12 channels"):
        kernel_class(w, None, 3, False, 5)
    with pytest.raises(RuntimeError, match="bias must be a vector of the weight's 12 output channels"):
        kernel_class(w, torch.randn(5), 3, False, 1)


def test_dense_pointwise_runs_on_the_native_kernel_only_where_tuned():
    """A dense channels_last 1x1 is a contender for the tuner, but an untuned dispatch keeps oneDNN's (wide ones run
    2x faster there); a grouped one runs natively untuned."""
    x = torch.randn(2, 24, 5, 5).contiguous(memory_format=torch.channels_last)
    native = ops.get_backend("native")
    dense, grouped = ops.conv_problem(x, torch.randn(96, 24, 1, 1)), ops.conv_problem(x, torch.randn(96, 3, 1, 1),
                                                                                        groups=8)
    assert not native.not_supported_reasons(dense) and not native.not_supported_reasons(grouped)
    assert not native.runs_untuned(dense) and native.runs_untuned(grouped)
    assert "\n-> aten: can run" in ops.explain_conv(x, torch.randn(96, 24, 1, 1))  # (tests run untuned: conftest.py)
    assert "\n-> native: can run" in ops.explain_conv(x, torch.randn(96, 3, 1, 1), groups=8)


@pytest.mark.parametrize("in_channels,out_channels", [(8, 32), (32, 8)], ids=["widening", "narrowing"])
def test_channels_last_pointwise_streams_outputs_larger_than_the_cache(in_channels, out_channels):
    """Outputs over 32 MiB (csrc/pointwise.cpp's STREAMING_MIN_BYTES) are written with streaming stores: the forward's
    where the conv widens, the input gradient's where it narrows (37.7 MB: 2 x 32 x 384 x 384 floats)."""
    generator = torch.Generator().manual_seed(in_channels)
    x = torch.randn(2, in_channels, 384, 384, generator=generator).contiguous(memory_format=torch.channels_last)
    w = torch.randn(out_channels, in_channels // 2, 1, 1, generator=generator)
    grad_output = torch.randn(2, out_channels, 384, 384, generator=generator).contiguous(
        memory_format=torch.channels_last)
    assert max(x.numel(), grad_output.numel()) * 4 > 32 << 20
    check_native_channels_last_against_torch(x, w, None, grad_output, groups=2)


def native_conv_on_threads(threads, x, w, **conv_arguments):
    """The native backend's output and both gradients (of the sum of the output) on `threads` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        leaves = (x.detach().requires_grad_(), w.detach().requires_grad_())
        with ops.use_backend("native"):
            out = groupconv.conv2d(*leaves, **conv_arguments)
            return (out, *torch.autograd.grad(out, leaves, torch.ones_like(out)))
    finally:
        torch.set_num_threads(previous)


def test_channels_last_pointwise_does_not_depend_on_the_thread_count():
    x = torch.randn(4, 48, 9, 11).contiguous(memory_format=torch.channels_last)
    w = torch.randn(24, 12, 1, 1)
    for one, two in zip(*(native_conv_on_threads(threads, x, w, groups=4) for threads in (1, 2))):
        assert torch.equal(one, two)


# (channels, channels per group, kernel height, stride, padding, size): ResNeXt's 3x3 convs (groups of 4, 8 and 16, at
# stride 1 and 2), MobileNet's depthwise ones, and the edges of csrc/narrow_nhwc.cpp: groups of 2, kernel heights 1
# and 5, a stride along one axis only, padding 0 and 2, rows whose width leaves 4- and 1-column remainders after the
# 8-column blocks, 1-pixel rows; at stride 2, the input gradient's odd and even padding and partial blocks.
NARROW_CASES = [
    (32, 4, 3, (1, 1), (1, 1), (9, 15)),
    (32, 4, 3, (2, 2), (1, 1), (9, 15)),
    (64, 8, 3, (1, 1), (1, 1), (6, 13)),
    (64, 16, 3, (2, 2), (1, 1), (7, 12)),
    (16, 2, 3, (1, 1), (0, 0), (5, 8)),
    (48, 4, 5, (1, 2), (2, 1), (7, 11)),
    (32, 8, 1, (2, 1), (0, 2), (4, 5)),
    (16, 16, 3, (1, 1), (2, 2), (2, 1)),
    (32, 1, 3, (1, 1), (1, 1), (9, 13)),  # depthwise: MobileNet's layers
    (48, 1, 3, (2, 2), (1, 1), (10, 9)),
    (32, 8, 3, (2, 2), (0, 0), (8, 11)),  # stride 2 without padding, and with more than the kernel's
    (16, 1, 3, (2, 2), (2, 2), (7, 10)),
    (48, 4, 5, (2, 2), (2, 1), (9, 12)),
    (32, 2, 3, (2, 2), (1, 1), (18, 21)),  # more than one 8-column block
]


@pytest.mark.parametrize("channels, per_group, kernel_height, stride, padding, size", NARROW_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_channels_last_narrow_groups_match_torch(channels, per_group, kernel_height, stride, padding, size, dtype,
                                                 with_bias):
    """csrc/narrow_nhwc.cpp: forward and both gradients, on each of its group widths (1: depthwise) and strides."""
    if per_group * dtype.itemsize > native.VECTOR_BYTES:
        pytest.skip(f"{per_group} channels per group exceed a vector of {dtype}")
    generator = torch.Generator().manual_seed(channels * per_group + kernel_height)
    groups = channels // per_group
    x = torch.randn(2, channels, *size, generator=generator, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, per_group, kernel_height, 3, generator=generator, dtype=dtype)
    b = torch.randn(channels, generator=generator, dtype=dtype) if with_bias else None
    problem = ops.conv_problem(x, w, b, stride, padding, groups=groups)
    assert problem.layout == "channels_last" and not ops.get_backend("native").not_supported_reasons(problem)
    assert native.runs_narrow("conv_forward", x, w.shape, problem.arguments)  # this kernel, not another
    grad_output = torch.randn(F.conv2d(x, w, b, stride, padding, 1, groups).shape, generator=generator, dtype=dtype)
    check_native_channels_last_against_torch(x, w, b, grad_output, stride, padding, groups=groups,
                                             input_gradient=stride in ((1, 1), (2, 2)))  # else aten's serves it


@pytest.mark.parametrize("channels, stride, size", [(36, (1, 1), (9, 10)), (72, (2, 2), (11, 8)), (60, (2, 1), (6, 13)),
                                                    (120, (1, 1), (7, 7)), (4, (2, 2), (5, 9)), (24, (1, 2), (8, 17))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_channels_last_depthwise_forward_takes_any_channel_count(channels, stride, size, dtype, with_bias):
    """The channels after the last whole vector of a depthwise conv (ShuffleNet g=1's 36 and 72) in narrow_nhwc.cpp's
    forward; its gradients go to the other kernels, which take any count."""
    generator = torch.Generator().manual_seed(channels)
    x = torch.randn(3, channels, *size, generator=generator, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, 1, 3, 3, generator=generator, dtype=dtype)
    b = torch.randn(channels, generator=generator, dtype=dtype) if with_bias else None
    args = ops.conv_problem(x, w, b, stride, 1, groups=channels).arguments
    assert native.runs_narrow("conv_forward", x, w.shape, args)
    lanes = native.VECTOR_BYTES // dtype.itemsize
    assert native.runs_narrow("conv_backward_weight", x, w.shape, args) == (channels % lanes == 0)
    grad_output = torch.randn(F.conv2d(x, w, b, stride, 1, 1, channels).shape, generator=generator, dtype=dtype)
    check_native_channels_last_against_torch(x, w, b, grad_output, stride, 1, groups=channels,
                                             input_gradient=stride in ((1, 1), (2, 2)))


@pytest.mark.parametrize("channels, per_group, stride, padding, size", [
    (36, 1, (1, 1), (1, 1), (9, 10)), (120, 1, (2, 2), (1, 1), (7, 7)), (5, 1, (2, 1), (0, 1), (6, 13)),
    (32, 4, (1, 1), (1, 1), (8, 9)), (48, 16, (2, 2), (1, 1), (11, 8)), (16, 1, (1, 2), (2, 0), (5, 17))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu", [False, True])
def test_a_narrow_kernel_packed_once_matches_torch(channels, per_group, stride, padding, size, dtype, relu):
    """NarrowKernel (narrow_nhwc.cpp's forward with its filters packed once and the ReLU applied as it writes), on
    batches 1 and 2, depthwise with any channel count and narrow groups."""
    if per_group * dtype.itemsize > native.VECTOR_BYTES:
        pytest.skip(f"{per_group} channels per group exceed a vector of {dtype}")
    generator = torch.Generator().manual_seed(channels * per_group + size[0])
    w = torch.randn(channels, per_group, 3, 3, generator=generator, dtype=dtype)
    b = torch.randn(channels, generator=generator, dtype=dtype)
    kernel = native.load().NarrowKernel(w, b, list(stride), list(padding), relu)
    for batch in (1, 2):
        x = torch.randn(batch, channels, *size, generator=generator, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        expected = F.conv2d(x, w, b, stride, padding, 1, channels // per_group)
        actual = kernel(x)
        assert actual.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(actual, expected.relu() if relu else expected)


def test_a_narrow_kernel_packed_once_refuses_what_it_was_not_packed_for():
    kernel_class = native.load().NarrowKernel
    w = torch.randn(32, 4, 3, 3)
    kernel = kernel_class(w, None, [1, 1], [1, 1], False)
    with pytest.raises(RuntimeError, match="input must be a channels_last Float CPU tensor of 32 channels"):
        kernel(torch.randn(1, 16, 5, 5).contiguous(memory_format=torch.channels_last))
    with pytest.raises(RuntimeError, match="input must be a channels_last Float CPU tensor of 32 channels"):
        kernel(torch.randn(1, 32, 5, 5))
    with pytest.raises(RuntimeError, match="is smaller than the filter"):
        kernel_class(w, None, [1, 1], [0, 0], False)(torch.randn(1, 32, 2, 2).contiguous(
            memory_format=torch.channels_last))
    with pytest.raises(RuntimeError, match="channels per group must be a power of two up to 16, got 3"):
        kernel_class(torch.randn(48, 3, 3, 3), None, [1, 1], [1, 1], False)
    with pytest.raises(RuntimeError, match="40 channels are not a multiple of 16"):
        kernel_class(torch.randn(40, 4, 3, 3), None, [1, 1], [1, 1], False)
    with pytest.raises(RuntimeError, match=r"stride must be \(sh, 1 or 2\), got \[1, 3\]"):
        kernel_class(w, None, [1, 3], [1, 1], False)
    with pytest.raises(RuntimeError, match="bias must be a vector of the weight's 32 channels"):
        kernel_class(w, torch.randn(31), [1, 1], [1, 1], False)


@pytest.mark.parametrize("channels, shuffle_groups, stride, size", [(96, 8, (1, 1), (9, 10)), (48, 3, (2, 2), (11, 8)),
                                                                   (32, 4, (2, 1), (6, 13))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_depthwise_reading_through_a_shuffle_matches_torch(channels, shuffle_groups, stride, size,
                                                                         dtype):
    """ShuffleNet's depthwise convs on narrow_nhwc.cpp: the shuffle paid on the output, forward and all gradients."""
    generator = torch.Generator().manual_seed(channels + shuffle_groups)
    x = torch.randn(2, channels, *size, generator=generator, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, 1, 3, 3, generator=generator, dtype=dtype)
    b = torch.randn(channels, generator=generator, dtype=dtype)
    args = ops.conv_problem(x, w, b, stride, 1, groups=channels, shuffle_groups=shuffle_groups).arguments
    assert native.runs_narrow("conv_forward", x, w.shape, args)  # this kernel, not cpu_kernels.cpp's
    grad_output = torch.randn(F.conv2d(x, w, b, stride, 1, 1, channels).shape, generator=generator, dtype=dtype)
    check_native_channels_last_against_torch(x, w, b, grad_output, stride, 1, groups=channels,
                                             input_gradient=stride in ((1, 1), (2, 2)), shuffle_groups=shuffle_groups)


def test_channels_last_narrow_groups_refuse_what_they_cannot_run():
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 4, 3, 3)
    native_backend = ops.get_backend("native")
    backward_input = ops.conv_problem(x, w, None, (2, 1), 1, groups=8, op="conv_backward_input")
    assert native_backend.not_supported_reasons(backward_input) == [
        "channels_last: the input gradient of stride (2, 1) (1 or 2, the same both ways)"]
    assert not native_backend.not_supported_reasons(ops.conv_problem(x, w, None, (2, 1), 1, groups=8,
                                                                     op="conv_backward_weight"))
    dilated = ops.conv_problem(x, w, None, 1, 2, 2, groups=8)
    assert native_backend.not_supported_reasons(dilated) == ["channels_last: dilation (2, 2) (1 only)"]
    three_per_group = ops.conv_problem(torch.randn(1, 48, 4, 4).contiguous(memory_format=torch.channels_last),
                                       torch.randn(48, 3, 3, 3), groups=16)
    assert native_backend.not_supported_reasons(three_per_group) == [
        "channels_last: 3 channels per group (a power of two up to 16)"]
    # Automatic dispatch still runs such a training step: each gradient on a backend that can compute it.
    x.requires_grad_()
    w.requires_grad_()
    out = groupconv.conv2d(x, w, None, (2, 1), 1, 1, 8)
    grads = torch.autograd.grad(out, (x, w), torch.ones_like(out))
    expected = torch.autograd.grad(F.conv2d(x, w, None, (2, 1), 1, 1, 8), (x, w), torch.ones_like(out))
    for grad, expected_grad in zip(grads, expected):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("per_group", [4, 1])
def test_channels_last_narrow_groups_do_not_depend_on_the_thread_count(per_group):
    # 40 output rows: 5 chunks of the weight gradient's 8-row minimum, split unevenly between 2 threads.
    x = torch.randn(4, 32, 10, 9).contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, per_group, 3, 3)
    results = (native_conv_on_threads(threads, x, w, padding=1, groups=32 // per_group) for threads in (1, 2))
    for one, two in zip(*results):
        assert torch.equal(one, two)


@pytest.mark.parametrize("shape", [(2, 16, 5, 33), (3, 7, 17, 9), (1, 32, 4, 4), (2, 3, 1, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_memory_format_conversion_matches_torch(shape, dtype):
    """The tiled transpose (whole 16x16 or 8x8 tiles, and the edge rows and columns past them), both ways."""
    x = torch.randn(shape, dtype=dtype)
    as_channels_last = native.to_memory_format(x, torch.channels_last)
    assert as_channels_last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(as_channels_last, x)
    back = native.to_memory_format(as_channels_last, torch.contiguous_format)
    assert back.is_contiguous() and torch.equal(back, x)
    assert native.to_memory_format(x, torch.contiguous_format) is x  # already there: no copy


# An NCHW conv computed in channels_last: ResNeXt's narrow groups (the native channels_last kernels inside), a
# stride-2 one (the input gradient on aten's channels_last path), a depthwise conv reading through a shuffle.
VIA_CHANNELS_LAST_CASES = [((2, 32, 9, 10), (32, 4, 3, 3), 1, 8, 1), ((2, 32, 9, 10), (32, 4, 3, 3), 2, 8, 1),
                           ((2, 24, 7, 7), (24, 1, 3, 3), 1, 24, 3)]


@pytest.mark.parametrize("input_shape, weight_shape, stride, groups, shuffle_groups", VIA_CHANNELS_LAST_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_via_channels_last_matches_torch(input_shape, weight_shape, stride, groups, shuffle_groups, dtype):
    """Each op of the strategy the tuner may pick for NCHW convs, against torch, results back in NCHW."""
    from groupconv.ops.arguments import ConvArguments

    x = torch.randn(input_shape, dtype=dtype)
    w = torch.randn(weight_shape, dtype=dtype)
    b = torch.randn(weight_shape[0], dtype=dtype)
    args = ConvArguments((stride, stride), (1, 1), (1, 1), groups, shuffle_groups)
    for op in ("conv_forward", "conv_backward_input", "conv_backward_weight", "conv_backward"):
        problem = ops.conv_problem(x, w, b, stride, 1, 1, groups, shuffle_groups=shuffle_groups, op=op)
        assert ViaChannelsLast.applies(problem)
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    expected = F.conv2d(shuffled(xr, shuffle_groups), wr, br, stride, 1, 1, groups)
    grad_output = torch.randn(expected.shape, dtype=dtype)
    expected_grads = torch.autograd.grad(expected, (xr, wr), grad_output)
    via = VIA_CHANNELS_LAST
    out = via.conv_forward(x, w, b, args)
    grad_input = via.conv_backward_input(grad_output, w, x.shape, args)
    grad_weight = via.conv_backward_weight(grad_output, x, w.shape, args)
    both = via.conv_backward(grad_output, x, w, args)
    tolerance = {torch.float32: 1e-4, torch.float64: 1e-11}[dtype]
    for result, reference in ((out, expected), (grad_input, expected_grads[0]), (grad_weight, expected_grads[1]),
                              (both[0], expected_grads[0]), (both[1], expected_grads[1])):
        assert result.is_contiguous()
        torch.testing.assert_close(result, reference, rtol=tolerance, atol=tolerance)


def test_via_channels_last_applies_only_where_the_conversion_changes_the_layout():
    w = torch.randn(8, 2, 3, 3)
    applies = lambda x, **kw: ViaChannelsLast.applies(ops.conv_problem(x, w, padding=1, groups=4, **kw))
    assert applies(torch.randn(2, 8, 5, 5))
    assert not applies(torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last))  # already there
    assert not applies(torch.randn(2, 8, 1, 1), stride=2)  # 1x1 pixels in and out: NCHW is channels_last too
    assert not ViaChannelsLast.applies(ops.conv_problem(torch.randn(2, 8, 5, 5, dtype=torch.bfloat16),
                                                                w.bfloat16(), padding=1, groups=4))  # no kernels
    assert not ViaChannelsLast.applies(ops.conv_problem(torch.randn(2, 8, 5), torch.randn(8, 2, 3),
                                                                groups=4))  # 1-D


# (channels, kernel, stride, padding, ceil_mode, size): whole vectors, a half vector, a remainder, windows cut by the
# padding and by the input's edge, uneven kernels and strides.
MAX_POOL_CASES = [(24, 3, 2, 1, False, (112, 112)), (64, 3, 2, 1, False, (9, 10)), (37, 2, 2, 0, False, (7, 9)),
                  (8, 3, 1, 1, False, (5, 6)), (1, (3, 2), (2, 1), (1, 0), False, (6, 7)),
                  (40, 3, 2, 0, True, (10, 13)), (17, 5, 3, 2, True, (11, 8))]


@pytest.mark.parametrize("channels, kernel, stride, padding, ceil_mode, size", MAX_POOL_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3])
def test_channels_last_max_pooling_matches_torch(channels, kernel, stride, padding, ceil_mode, size, dtype, batch):
    generator = torch.Generator().manual_seed(channels + batch)
    x = torch.randn(batch, channels, *size, generator=generator, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    out = native.load().max_pool2d_nhwc(x, pair(kernel), pair(stride), pair(padding), ceil_mode)
    expected = F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("channels, kernel, stride, padding, ceil_mode, size", MAX_POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_average_pooling_matches_torch(channels, kernel, stride, padding, ceil_mode, size,
                                                     count_include_pad, dtype):
    generator = torch.Generator().manual_seed(channels)
    x = torch.randn(2, channels, *size, generator=generator, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    out = native.load().avg_pool2d_nhwc(x, pair(kernel), pair(stride), pair(padding), ceil_mode, count_include_pad)
    expected = F.avg_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    assert out.is_contiguous(memory_format=torch.channels_last)
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)


def test_channels_last_max_pooling_propagates_nans_and_refuses_other_layouts():
    x = torch.randn(1, 24, 6, 6).contiguous(memory_format=torch.channels_last)
    x[0, 3, 2, 2] = float("nan")
    x[0, 20, 0, 0] = float("nan")
    out = native.load().max_pool2d_nhwc(x, [3, 3], [2, 2], [1, 1], False)
    torch.testing.assert_close(out, F.max_pool2d(x, 3, 2, 1), equal_nan=True, rtol=0, atol=0)
    assert out[0, 3, 1, 1].isnan() and out[0, 20, 0, 0].isnan() and not out[0, 4].isnan().any()
    with pytest.raises(RuntimeError, match="input must be a channels_last 4-D tensor"):
        native.load().max_pool2d_nhwc(x.contiguous(), [3, 3], [2, 2], [1, 1], False)
    with pytest.raises(RuntimeError, match="padding .* must be between 0 and half the kernel size"):
        native.load().max_pool2d_nhwc(x, [3, 3], [2, 2], [2, 2], False)


@pytest.mark.parametrize("batch, in_features, out_features", [(1, 576, 1000), (3, 17, 7), (8, 64, 5), (2, 5, 130)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_small_batch_linear_matches_torch(batch, in_features, out_features, dtype, with_bias):
    generator = torch.Generator().manual_seed(in_features + out_features)
    x = torch.randn(in_features, batch, generator=generator, dtype=dtype).t()  # (a transposed input: copied first)
    w = torch.randn(out_features, in_features, generator=generator, dtype=dtype)
    b = torch.randn(out_features, generator=generator, dtype=dtype) if with_bias else None
    tolerance = {torch.float32: 1e-4, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(native.load().linear_small_batch(x, w, b), F.linear(x, w, b), rtol=tolerance,
                               atol=tolerance)


# (in channels, out channels, kernel, stride, padding, size): an image's 3 channels into ShuffleNet's 24 and
# MobileNet's 32 first channels, strides, paddings, kernels wider than 3, output channels off the vector width.
FEW_CHANNELS_CASES = [(3, 24, 3, 2, 1, (23, 18)), (3, 32, 3, 2, 1, (16, 16)), (1, 5, 5, 1, 2, (9, 13)),
                      (4, 64, (3, 2), (1, 2), (1, 0), (11, 12)), (2, 17, 7, 2, 3, (19, 21)), (3, 8, 3, 1, 0, (3, 40))]


@pytest.mark.parametrize("in_channels, out_channels, kernel, stride, padding, size", FEW_CHANNELS_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["NCHW", "channels_last"])
def test_few_channel_conv_matches_torch_in_either_input_layout(in_channels, out_channels, kernel, stride, padding,
                                                               size, dtype, layout):
    if out_channels * dtype.itemsize > 4 * native.VECTOR_BYTES:
        pytest.skip(f"{out_channels} output channels exceed 4 vectors of {dtype}")
    generator = torch.Generator().manual_seed(in_channels * out_channels)
    x = torch.randn(2, in_channels, *size, generator=generator, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    kernel_size = (kernel, kernel) if isinstance(kernel, int) else kernel
    w = torch.randn(out_channels, in_channels, *kernel_size, generator=generator, dtype=dtype)
    b = torch.randn(out_channels, generator=generator, dtype=dtype)
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    tolerance = {torch.float32: 1e-4, torch.float64: 1e-12}[dtype]
    for bias, relu in ((b, True), (None, False)):
        out = native.load().few_channels_conv_nhwc(x, w, bias, pair(stride), pair(padding), relu)
        expected = F.conv2d(x, w, bias, stride, padding)
        expected = expected.relu() if relu else expected
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)


def test_few_channel_conv_refuses_what_it_cannot_run():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(RuntimeError, match="at most 64 output channels, got 65"):
        native.load().few_channels_conv_nhwc(x, torch.randn(65, 3, 3, 3), None, [1, 1], [1, 1], False)
    with pytest.raises(RuntimeError, match="weight .* expected"):
        native.load().few_channels_conv_nhwc(x, torch.randn(8, 4, 3, 3), None, [1, 1], [1, 1], False)
