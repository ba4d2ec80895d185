"""The layout a conv runs in follows torch's rule: channels_last when its input or its weight is. A model moved with
.to(memory_format=torch.channels_last) therefore runs channels_last throughout on contiguous inputs, the conversion
made once at its first conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

import groupconv
import groupconv.nn as gnn
from groupconv import models
from groupconv.ops.arguments import suggested_memory_format


def stride_patterns(shape):
    tensor = torch.randn(shape)
    channels_last = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    yield tensor
    yield tensor.transpose(-1, -2)
    yield tensor.contiguous(memory_format=channels_last)  # a no-op where the tensor is both already
    yield torch.empty(shape, memory_format=channels_last)  # channels_last strides for every dimension
    yield tensor.movedim(1, -1).contiguous().movedim(-1, 1)
    if shape[-1] > 1:
        yield tensor[..., ::2]


@pytest.mark.parametrize("shape", [(32, 16, 1, 1), (32, 1, 3, 3), (32, 4, 3, 3), (1, 1, 1, 1), (2, 3, 1, 1),
                                   (2, 1, 4, 4), (1, 8, 1, 5), (0, 3, 2, 2), (2, 3, 4, 5, 6), (2, 1, 1, 4, 4),
                                   (4, 2, 1, 1, 1)])
def test_suggested_memory_format_is_torchs(shape):
    for tensor in stride_patterns(shape):
        assert suggested_memory_format(tensor) == suggest_memory_format(tensor), (shape, tensor.stride())


# (in channels, out channels, kernel, groups): dense, 1x1, grouped, depthwise
CONVS = [(6, 8, 3, 1), (16, 32, 1, 1), (16, 32, 3, 4), (16, 16, 3, 16), (8, 16, 1, 4)]


@pytest.mark.parametrize("cin, cout, kernel, groups", CONVS)
@pytest.mark.parametrize("input_channels_last", [False, True])
@pytest.mark.parametrize("weight_channels_last", [False, True])
def test_output_layout_values_and_gradients_follow_torch(cin, cout, kernel, groups, input_channels_last,
                                                         weight_channels_last):
    torch.manual_seed(0)
    conv = gnn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups).double()
    if weight_channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(2, cin, 7, 6, dtype=torch.float64)
    if input_channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    mine = conv(x)
    expected = F.conv2d(x, conv.weight, conv.bias, padding=kernel // 2, groups=groups)
    assert mine.stride() == expected.stride()
    torch.testing.assert_close(mine, expected)
    grad = torch.randn_like(expected)
    mine_grads = torch.autograd.grad(mine, (x, conv.weight, conv.bias), grad)
    expected_grads = torch.autograd.grad(expected, (x, conv.weight, conv.bias), grad)
    for a, b in zip(mine_grads, expected_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["shufflenet_g3_wd4", "mobilenet_wd4"])
def test_a_model_moved_to_channels_last_converts_a_contiguous_input_once(name):
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=10, small_input=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    conv_inputs = []
    hooks = [module.register_forward_pre_hook(lambda module, args: conv_inputs.append(args[0]))
             for module in model.modules() if isinstance(module, groupconv.nn.base.GroupedConvMixin)]
    with torch.no_grad():
        actual = model(x)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert not conv_inputs[0].is_contiguous(memory_format=torch.channels_last)  # the contiguous input itself
    later = conv_inputs[1:]
    assert later and all(t.is_contiguous(memory_format=torch.channels_last) for t in later)


def test_accelerate_can_move_a_model_to_channels_last():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1, groups=4)).eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        expected = model(x)
        accelerated = groupconv.accelerate(model, channels_last=True)
        assert accelerated is model and model[0].weight.is_contiguous(memory_format=torch.channels_last)
        actual = model(x)
    assert actual.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="channels_last='yes'"):
        groupconv.accelerate(model, channels_last="yes")
