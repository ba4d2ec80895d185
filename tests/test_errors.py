"""Every bad input raises ValueError or TypeError naming the argument and its value."""

import pytest
import torch

import groupconv
import groupconv.nn as gnn
from groupconv.ops.cache import BoundedCache

x4 = torch.randn(2, 8, 6, 6)
w4 = torch.randn(8, 2, 3, 3)

FUNCTIONAL_ERRORS = [
    # (call, exception, message pattern)
    (lambda: groupconv.conv2d(torch.randn(1, 60, 5, 5), torch.randn(8, 7, 3, 3), groups=8), ValueError,
     r"input channels \(input.shape\[1\]\)=60 is not divisible by groups=8"),
    (lambda: groupconv.conv2d(x4, w4, groups=0), ValueError, r"groups=0 must be a positive integer"),
    (lambda: groupconv.conv2d(x4, w4, groups=-2), ValueError, r"groups=-2 must be a positive integer"),
    (lambda: groupconv.conv2d(x4, w4, groups=2.0), TypeError, r"groups=2.0 must be an int"),
    (lambda: groupconv.conv2d(x4, w4, groups=2), ValueError,
     r"weight.shape\[1\]=2 times groups=2 must equal the input channels input.shape\[1\]=8"),
    (lambda: groupconv.conv2d(x4, torch.randn(6, 2, 3, 3), groups=4), ValueError,
     r"out channels \(weight.shape\[0\]\)=6 is not divisible by groups=4"),
    (lambda: groupconv.conv2d(torch.randn(2, 8, 6, 6, 6), w4, groups=4), ValueError,
     r"conv2d expects input of rank 3 \(unbatched\) or 4 \(batched\), got input.dim\(\)=5"),
    (lambda: groupconv.conv2d(x4, torch.randn(8, 2, 3), groups=4), ValueError, r"weight.dim\(\)=3"),
    (lambda: groupconv.conv1d(x4, w4, groups=4), ValueError, r"conv1d expects input of rank 2 .* or 3"),
    (lambda: groupconv.conv2d(x4, w4.double(), groups=4), TypeError,
     r"input.dtype=torch.float32 and weight.dtype=torch.float64 must be the same"),
    (lambda: groupconv.conv2d(x4.to(torch.int64), w4.to(torch.int64), groups=4), TypeError,
     r"input.dtype=torch.int64 is not supported"),
    (lambda: groupconv.conv2d(x4, w4.to("meta"), groups=4), ValueError,
     r"input.device=cpu and weight.device=meta must be the same"),
    (lambda: groupconv.conv2d(x4, w4, torch.randn(3), groups=4), ValueError, r"bias.shape=\(3,\) must be \(8,\)"),
    (lambda: groupconv.conv2d(x4, w4, torch.randn(8).double(), groups=4), TypeError, r"bias.dtype=torch.float64"),
    (lambda: groupconv.conv2d(x4, torch.randn(8, 2, 9, 3), groups=4), ValueError,
     r"kernel size 9 .* larger than the padded input size 6 .* in spatial dimension 0"),
    (lambda: groupconv.conv2d(x4, w4, groups=4, dilation=(1, 4)), ValueError,
     r"kernel size 3 \(dilation 4, effective size 9\) is larger than the padded input size 6"),
    (lambda: groupconv.conv2d(x4, w4, groups=4, stride=0), ValueError, r"stride=\(0, 0\) must be positive"),
    (lambda: groupconv.conv2d(x4, w4, groups=4, padding=-1), ValueError, r"padding=\(-1, -1\) must be non-negative"),
    (lambda: groupconv.conv2d(x4, w4, groups=4, padding="circular"), ValueError,
     r"padding='circular' must be one of \('valid', 'same', 'full'\)"),
    (lambda: groupconv.conv2d(x4, w4, groups=4, padding="same", stride=2), ValueError,
     r"padding='same' is not supported for strided convolutions \(stride=\(2, 2\)\)"),
    (lambda: groupconv.conv2d(x4, w4, groups=4, stride=(1, 2, 3)), TypeError, r"stride=\(1, 2, 3\) must be an int or a tuple of 2 ints"),
    (lambda: groupconv.conv2d(x4, w4, groups=4, shuffle_groups=3), ValueError,
     r"input channels \(input.shape\[1\]\)=8 is not divisible by shuffle groups=3"),
    (lambda: groupconv.conv2d(x4.numpy(), w4, groups=4), TypeError, r"input must be a torch.Tensor, got ndarray"),
    (lambda: groupconv.channel_shuffle(torch.randn(2, 10, 4), 3), ValueError,
     r"input channels \(input.shape\[1\]\)=10 is not divisible by shuffle groups=3"),
    (lambda: groupconv.channel_shuffle(torch.randn(2, 10), 2), ValueError,
     r"channel_shuffle expects input of rank 3 to 5 .* got input.dim\(\)=2"),
    (lambda: groupconv.channel_shuffle(torch.randn(2, 10, 4), 0), ValueError, r"groups=0 must be a positive integer"),
]


@pytest.mark.parametrize("call, exception, pattern", FUNCTIONAL_ERRORS)
def test_functional_bad_input(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


MODULE_ERRORS = [
    (lambda: gnn.Conv2d(60, 64, 3, groups=8), ValueError, r"in_channels=60 is not divisible by groups=8"),
    (lambda: gnn.Conv2d(64, 60, 3, groups=8), ValueError, r"out_channels=60 is not divisible by groups=8"),
    (lambda: gnn.Conv1d(8, 8, 3, groups=0), ValueError, r"groups=0 must be a positive integer"),
    (lambda: gnn.Conv3d(0, 8, 3), ValueError, r"in_channels=0 must be a positive integer"),
    (lambda: gnn.ChannelShuffle(0), ValueError, r"groups=0 must be a positive integer"),
    (lambda: gnn.ShuffledGroupedConv2d(12, 12, 1, groups=3, shuffle_groups=5), ValueError,
     r"in_channels=12 is not divisible by shuffle_groups=5"),
    (lambda: gnn.DepthwiseConv2d(8, 3, depth_multiplier=0), ValueError, r"depth_multiplier=0 must be a positive"),
    (lambda: gnn.PointwiseGroupedConv2d(10, 12, groups=4), ValueError, r"in_channels=10 is not divisible by groups=4"),
]


@pytest.mark.parametrize("call, exception, pattern", MODULE_ERRORS)
def test_module_bad_input(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


def test_module_forward_with_wrong_channels_names_them():
    layer = gnn.Conv2d(8, 8, 3, groups=4)
    with pytest.raises(ValueError, match=r"weight.shape\[1\]=2 times groups=4 must equal the input channels "
                                         r"input.shape\[1\]=12"):
        layer(torch.randn(1, 12, 5, 5))
    with pytest.raises(ValueError, match="kernel size 3 .* larger than the padded input size 2"):
        layer(torch.randn(1, 8, 2, 5))


def test_a_call_signature_that_passed_the_checks_is_not_checked_again_but_a_bad_one_always_is(monkeypatch):
    from groupconv.ops import arguments

    monkeypatch.setattr(arguments, "_PASSED_CHECKS", BoundedCache())
    checked = []
    original = arguments.check_conv_call
    monkeypatch.setattr(arguments, "check_conv_call", lambda *a: checked.append(a[3]) or original(*a))
    for _ in range(2):
        groupconv.conv2d(x4, w4, groups=4, stride=[2, 1])
        groupconv.conv2d(x4, w4, groups=4, stride=(2, 1))  # a tuple of the same ints: the same signature
    assert checked == [[2, 1]]
    for _ in range(2):  # an int's stand-ins are never mistaken for it
        with pytest.raises(TypeError, match=r"stride=True must be an int or a tuple of 2 ints, not a bool"):
            groupconv.conv2d(x4, w4, groups=4, stride=True)
        with pytest.raises(TypeError, match=r"stride=\(2.0, 1\) must be an int or a tuple of 2 ints"):
            groupconv.conv2d(x4, w4, groups=4, stride=(2.0, 1))
    with pytest.raises(ValueError, match=r"input.device=cpu and weight.device=meta must be the same"):
        groupconv.conv2d(x4, w4.to("meta"), groups=4, stride=[2, 1])  # the same shapes, another device
    assert checked == [[2, 1]] + [True, (2.0, 1)] * 2 + [[2, 1]]
