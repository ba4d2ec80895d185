"""The grouped-convolution family: pointwise grouped, depthwise, and the separable/flattened
factorisations of a standard convolution.

Composite layers are nn.Sequential subclasses with named stages, so their state_dict keys say
what each weight is (`depthwise.weight`, `pointwise.weight`, ...). As in Keras' SeparableConv2D,
a composite layer's bias (if any) sits on its last stage only.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from ..ops.arguments import expand_tuple
from .base import SequentialCost
from .conv import Conv2d


class PointwiseGroupedConv2d(Conv2d):
    """1x1 grouped convolution (ShuffleNet): mixes channels within each of `groups` groups."""

    def __init__(self, in_channels, out_channels, groups=1, stride=1, bias=True, device=None, dtype=None):
        super().__init__(in_channels, out_channels, 1, stride, 0, 1, groups, bias, device=device, dtype=dtype)


class DepthwiseConv2d(Conv2d):
    """Depthwise convolution: one k x k filter per input channel (groups = in_channels).

    `depth_multiplier` filters per channel give in_channels * depth_multiplier outputs.
    """

    def __init__(self, in_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True, padding_mode="zeros",
                 depth_multiplier=1, device=None, dtype=None):
        if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, int) or depth_multiplier <= 0:
            raise ValueError(f"depth_multiplier={depth_multiplier!r} must be a positive integer")
        super().__init__(in_channels, in_channels * depth_multiplier, kernel_size, stride, padding, dilation,
                         in_channels, bias, padding_mode, device=device, dtype=dtype)


class DepthwiseSeparableConv2d(SequentialCost, torch.nn.Sequential):
    """Depthwise k x k conv then pointwise 1x1 conv (MobileNet, Xception); no norm or activation between."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 padding_mode="zeros", depth_multiplier=1, pointwise_groups=1, device=None, dtype=None):
        depthwise = DepthwiseConv2d(in_channels, kernel_size, stride, padding, dilation, False, padding_mode,
                                    depth_multiplier, device=device, dtype=dtype)
        pointwise = PointwiseGroupedConv2d(in_channels * depth_multiplier, out_channels, pointwise_groups,
                                           bias=bias, device=device, dtype=dtype)
        super().__init__(OrderedDict(depthwise=depthwise, pointwise=pointwise))


def _split_spatial(value, name):
    """Split a 2-D argument into its (height, width) parts; strings like 'same' apply to both."""
    if isinstance(value, str):
        return value, value
    return expand_tuple(value, 2, name)


class SpatialSeparableConv2d(SequentialCost, torch.nn.Sequential):
    """A k x k conv factorised into k x 1 then 1 x k (Inception v3's spatial separable convolution).

    `vertical` maps in_channels -> out_channels, `horizontal` out_channels -> out_channels; both
    use `groups`.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None):
        kh, kw = expand_tuple(kernel_size, 2, "kernel_size")
        sh, sw = expand_tuple(stride, 2, "stride")
        ph, pw = _split_spatial(padding, "padding")
        dh, dw = expand_tuple(dilation, 2, "dilation")
        factory = dict(device=device, dtype=dtype)
        vertical = Conv2d(in_channels, out_channels, (kh, 1), (sh, 1), ph if isinstance(ph, str) else (ph, 0),
                          (dh, 1), groups, False, padding_mode, **factory)
        horizontal = Conv2d(out_channels, out_channels, (1, kw), (1, sw), pw if isinstance(pw, str) else (0, pw),
                            (1, dw), groups, bias, padding_mode, **factory)
        super().__init__(OrderedDict(vertical=vertical, horizontal=horizontal))


class FlattenedConv2d(SequentialCost, torch.nn.Sequential):
    """The flattened convolution (Jin et al. 2014): a k x k x C filter bank replaced by three 1-D ones.

    `lateral`: 1x1 across channels (in_channels -> out_channels); `vertical`: k x 1 depthwise;
    `horizontal`: 1 x k depthwise. Parameters C*M + 2*k*M instead of k*k*C*M.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None):
        kh, kw = expand_tuple(kernel_size, 2, "kernel_size")
        sh, sw = expand_tuple(stride, 2, "stride")
        ph, pw = _split_spatial(padding, "padding")
        dh, dw = expand_tuple(dilation, 2, "dilation")
        factory = dict(device=device, dtype=dtype)
        lateral = PointwiseGroupedConv2d(in_channels, out_channels, bias=False, **factory)
        vertical = DepthwiseConv2d(out_channels, (kh, 1), (sh, 1), ph if isinstance(ph, str) else (ph, 0), (dh, 1),
                                   False, padding_mode, **factory)
        horizontal = DepthwiseConv2d(out_channels, (1, kw), (1, sw), pw if isinstance(pw, str) else (0, pw),
                                     (1, dw), bias, padding_mode, **factory)
        super().__init__(OrderedDict(lateral=lateral, vertical=vertical, horizontal=horizontal))
