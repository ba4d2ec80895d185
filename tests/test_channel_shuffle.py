"""channel_shuffle against its definition, and the fused shuffle-then-conv against the two steps."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import groupconv
from groupconv import ops

from .conftest import skip_unless_supported

# Every backend, each test skipped where the backend refuses these problems: asking a backend builds the native
# kernels, which must not happen while tests are collected.
SHUFFLE_PROBLEM = ops.ShuffleProblem.build(torch.empty(2, 4, 3, dtype=torch.float64), 2)
FUSED_SHUFFLE_PROBLEM = ops.conv_problem(torch.empty(2, 4, 7, 6, dtype=torch.float64),
                                         torch.empty(4, 2, 3, 3, dtype=torch.float64), stride=2, padding=1, groups=2,
                                         shuffle_groups=2)


def shuffle_by_definition(x, groups):
    """Output channel j*g + i is input channel i*(C/g) + j (ShuffleNet, Fig. 1c)."""
    c = x.shape[1]
    out = torch.empty_like(x)
    for i in range(groups):
        for j in range(c // groups):
            out[:, j * groups + i] = x[:, i * (c // groups) + j]
    return out


@pytest.mark.parametrize("backend", ops.list_backends())
@given(
    rank=st.integers(3, 5),
    groups=st.integers(1, 6),
    per_group=st.integers(1, 5),
    batch=st.integers(1, 3),
    channels_last=st.booleans(),
)
def test_matches_definition_forward_and_backward(backend, rank, groups, per_group, batch, channels_last):
    skip_unless_supported(backend, SHUFFLE_PROBLEM)
    spatial = [3, 2, 2][: rank - 2]
    x = torch.randn(batch, groups * per_group, *spatial, dtype=torch.float64)
    if channels_last and rank > 3:
        x = x.contiguous(memory_format=torch.channels_last if rank == 4 else torch.channels_last_3d)
    x.requires_grad_()
    with ops.use_backend(backend):
        out = groupconv.channel_shuffle(x, groups)
    assert torch.equal(out, shuffle_by_definition(x.detach(), groups))
    assert torch.equal(out, torch.nn.ChannelShuffle(groups)(x.detach()))
    grad_output = torch.randn_like(out)
    with ops.use_backend(backend):
        (grad,) = torch.autograd.grad(out, x, grad_output)
    # The shuffle is a permutation, so its gradient is the inverse permutation of grad_output.
    assert torch.equal(shuffle_by_definition(grad, groups), grad_output)


def test_shuffle_with_c_over_g_groups_inverts_it():
    x = torch.randn(2, 12, 5)
    assert torch.equal(groupconv.channel_shuffle(groupconv.channel_shuffle(x, 3), 4), x)
    assert not torch.equal(groupconv.channel_shuffle(x, 3), x)


def test_module_matches_functional_and_torch():
    x = torch.randn(2, 24, 4, 4)
    layer = groupconv.nn.ChannelShuffle(3)
    assert torch.equal(layer(x), groupconv.channel_shuffle(x, 3))
    assert torch.equal(layer(x), torch.nn.ChannelShuffle(3)(x))
    assert "groups=3" in repr(layer)
    assert layer.parameter_count() == 0 and layer.multiply_adds((4, 4)) == 0


@pytest.mark.parametrize("backend", ops.list_backends())
@given(groups=st.sampled_from([1, 2, 3, 4]), per_group=st.integers(1, 4), kernel=st.sampled_from([1, 3]),
       stride=st.integers(1, 2))
def test_fused_shuffle_conv_equals_shuffle_then_conv(backend, groups, per_group, kernel, stride):
    skip_unless_supported(backend, FUSED_SHUFFLE_PROBLEM)
    channels = groups * per_group * 2
    x = torch.randn(2, channels, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(channels, channels // groups, kernel, kernel, dtype=torch.float64, requires_grad=True)
    # (native's NCHW kernels take groups of at most 2 channels; hypothesis draws others)
    assume(not ops.get_backend(backend).not_supported_reasons(ops.conv_problem(x, w, None, stride, kernel // 2,
                                                                               groups=groups, shuffle_groups=groups)))
    with ops.use_backend(backend):
        fused = groupconv.conv2d(x, w, None, stride, kernel // 2, 1, groups, shuffle_groups=groups)
        two_steps = groupconv.conv2d(groupconv.channel_shuffle(x, groups), w, None, stride, kernel // 2, 1, groups)
    torch.testing.assert_close(fused, two_steps)
    grad_output = torch.randn_like(fused)
    torch.testing.assert_close(
        torch.autograd.grad(fused, (x, w), grad_output), torch.autograd.grad(two_steps, (x, w), grad_output)
    )


def test_shuffled_grouped_conv2d_layer_equals_shuffle_then_conv():
    layer = groupconv.nn.ShuffledGroupedConv2d(24, 12, 3, padding=1, groups=3)
    x = torch.randn(2, 24, 8, 8)
    expected = F.conv2d(torch.nn.ChannelShuffle(3)(x), layer.weight, layer.bias, padding=1, groups=3)
    torch.testing.assert_close(layer(x), expected)
    assert "shuffle_groups=3" in repr(layer) and "groups=3" in repr(layer)
    # The shuffle reorders the input, so skipping it changes the answer whenever groups > 1.
    plain = F.conv2d(x, layer.weight, layer.bias, padding=1, groups=3)
    assert not torch.allclose(layer(x), plain)
    assert set(layer.state_dict()) == {"weight", "bias"}
