"""Layers: drop-in for torch.nn.ConvNd, accelerate(), the grouped-conv family and its cost reports."""

import pytest
import torch
import torch.nn.functional as F

import groupconv
import groupconv.nn as gnn

TORCH_CONV = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
GROUPCONV_CONV = {1: gnn.Conv1d, 2: gnn.Conv2d, 3: gnn.Conv3d}

LAYER_CONFIGS = [
    dict(in_channels=8, out_channels=12, kernel_size=3, stride=2, padding=1, groups=4),
    dict(in_channels=6, out_channels=6, kernel_size=3, padding="same", dilation=2, groups=6, bias=False),
    dict(in_channels=4, out_channels=8, kernel_size=2, padding="valid", groups=2),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=2, padding_mode="reflect"),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, groups=1, padding_mode="circular"),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4, padding_mode="replicate"),
]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("config", LAYER_CONFIGS)
def test_state_dict_round_trip_and_same_outputs(dims, config):
    reference = TORCH_CONV[dims](**config)
    layer = GROUPCONV_CONV[dims](**config)
    assert isinstance(layer, TORCH_CONV[dims])
    assert layer.state_dict().keys() == reference.state_dict().keys()
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(2, config["in_channels"], *([7] * dims))
    torch.testing.assert_close(layer(x), reference(x))
    back = TORCH_CONV[dims](**config)
    back.load_state_dict(layer.state_dict())
    torch.testing.assert_close(back(x), reference(x))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_same_initialisation_as_torch(dims):
    config = dict(in_channels=8, out_channels=16, kernel_size=3, groups=4)
    torch.manual_seed(7)
    reference = TORCH_CONV[dims](**config)
    torch.manual_seed(7)
    layer = GROUPCONV_CONV[dims](**config)
    assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)


def test_constructor_arguments_match_torch():
    import inspect

    assert list(inspect.signature(gnn.Conv2d).parameters) == list(inspect.signature(torch.nn.Conv2d).parameters)


def test_full_padding_layer_and_padding_modes():
    layer = gnn.Conv1d(2, 3, 4, padding="full")
    x = torch.randn(1, 2, 10)
    assert layer(x).shape == (1, 3, 13)  # m + n - 1
    torch.testing.assert_close(layer(x), F.conv1d(x, layer.weight, layer.bias, padding=3))
    circular = gnn.Conv1d(2, 3, 4, padding="full", padding_mode="circular")
    torch.testing.assert_close(
        circular(x), F.conv1d(F.pad(x, (3, 3), mode="circular"), circular.weight, circular.bias)
    )


def test_repr_always_shows_groups():
    assert "groups=1" in repr(gnn.Conv2d(3, 8, 3))
    assert "groups=4" in repr(gnn.Conv2d(8, 8, 3, groups=4))
    assert "groups=8" in repr(gnn.DepthwiseConv2d(8, 3))
    assert "groups=2" in repr(gnn.PointwiseGroupedConv2d(8, 16, groups=2))
    assert "groups=32" in repr(gnn.DepthwiseSeparableConv2d(32, 64, 3))


def test_accelerate_keeps_outputs_gradients_and_parameters():
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False),
        torch.nn.Conv2d(16, 32, 1, groups=2),
        torch.nn.Flatten(2),
        torch.nn.Conv1d(32, 8, 3, groups=8),
    )
    model.eval()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    expected = model(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, *model.parameters()])
    parameters_before = [id(p) for p in model.parameters()]
    state_keys = list(model.state_dict())

    assert groupconv.accelerate(model) is model
    assert [type(m) for m in model if isinstance(m, torch.nn.modules.conv._ConvNd)] == [
        gnn.Conv2d, gnn.Conv2d, gnn.Conv2d, gnn.Conv1d
    ]
    assert type(model[1]) is gnn.BatchNormAct2d and not model[1].apply_act
    assert [id(p) for p in model.parameters()] == parameters_before
    assert list(model.state_dict()) == state_keys
    out = model(x)
    torch.testing.assert_close(out, expected)
    for grad, expected_grad in zip(torch.autograd.grad(out.square().sum(), [x, *model.parameters()]), expected_grads):
        torch.testing.assert_close(grad, expected_grad)


def test_accelerate_routes_through_groupconv_ops():
    model = groupconv.accelerate(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2)))
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 4, 5, 5))
    assert torch.ops.groupconv.conv_forward in counter.get_flop_counts()["Global"]


def test_accelerate_leaves_subclasses_alone():
    class CustomConv(torch.nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = torch.nn.Sequential(CustomConv(2, 2, 1))
    groupconv.accelerate(model)
    assert type(model[0]) is CustomConv
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        groupconv.accelerate("resnet")


# Cost reports: hand-computed values (a grouped conv costs H*W*N*K^2*M/G, ShuffleNet, Zhang et al. 2018).
def test_conv_costs_by_hand():
    layer = gnn.Conv2d(256, 256, 3, padding=1, groups=32, bias=False)
    assert layer.parameter_count() == 256 * 256 * 9 // 32
    assert layer.multiply_adds((28, 28)) == 28 * 28 * 256 * 9 * 256 // 32
    dense = gnn.Conv2d(256, 256, 3, padding=1, bias=False)
    assert dense.multiply_adds(28) == 32 * layer.multiply_adds(28)  # the 1/G promise, in MACs
    strided = gnn.Conv1d(6, 9, 5, stride=2, groups=3)
    assert strided.output_size(20) == (8,)
    assert strided.parameter_count() == 9 * 2 * 5 + 9
    assert strided.multiply_adds(20) == 8 * 9 * 2 * 5
    conv3d = gnn.Conv3d(4, 8, (3, 1, 1), groups=2, padding="full")
    assert conv3d.output_size((5, 6, 7)) == (7, 6, 7)
    assert conv3d.multiply_adds((5, 6, 7)) == 7 * 6 * 7 * 8 * 2 * 3


def test_costs_of_impossible_sizes_are_errors():
    layer = gnn.Conv2d(4, 4, 3, groups=2)
    for size in ((0, 0), (2, 5), 2):  # smaller than the kernel: no output at all, as torch's conv says
        with pytest.raises(ValueError, match=r"input size .* kernel size 3 .* larger than the padded input"):
            layer.multiply_adds(size)
        with pytest.raises(ValueError, match="larger than the padded input"):
            layer.output_size(size)
    with pytest.raises(ValueError, match=r"input_size=\(-1, 5\) must be non-negative"):
        layer.multiply_adds((-1, 5))
    padded = gnn.Conv2d(4, 4, 3, padding=1, groups=2)
    assert padded.output_size((1, 1)) == (1, 1) and padded.multiply_adds((1, 1)) == 4 * 2 * 9
    with pytest.raises(ValueError, match="larger than the padded input"):
        padded.multiply_adds((0, 0))


def test_family_costs_by_hand():
    c_in, c_out, k, h = 32, 64, 3, 14
    pointwise = gnn.PointwiseGroupedConv2d(c_in, c_out, groups=4, bias=False)
    assert pointwise.multiply_adds(h) == h * h * c_in * c_out // 4
    depthwise = gnn.DepthwiseConv2d(c_in, k, padding=1, bias=False)
    assert depthwise.parameter_count() == c_in * k * k
    assert depthwise.multiply_adds(h) == h * h * c_in * k * k
    separable = gnn.DepthwiseSeparableConv2d(c_in, c_out, k, padding=1, bias=False)
    # MobileNet's cost: D_K^2 * M * D_F^2 + M * N * D_F^2
    assert separable.multiply_adds(h) == k * k * c_in * h * h + c_in * c_out * h * h
    spatial = gnn.SpatialSeparableConv2d(c_in, c_out, k, padding=1, bias=False)
    assert spatial.parameter_count() == c_in * c_out * k + c_out * c_out * k
    assert spatial.multiply_adds(h) == h * h * (c_in * c_out * k + c_out * c_out * k)
    flattened = gnn.FlattenedConv2d(c_in, c_out, k, padding=1)
    assert flattened.parameter_count() == c_in * c_out + 2 * c_out * k + c_out
    assert flattened.multiply_adds(h) == h * h * (c_in * c_out + 2 * c_out * k)
    assert flattened.output_size(h) == (h, h)


def test_family_layers_compute_their_definitions():
    x = torch.randn(2, 8, 9, 9)
    separable = gnn.DepthwiseSeparableConv2d(8, 16, 3, stride=2, padding=1, depth_multiplier=2)
    expected = F.conv2d(F.conv2d(x, separable.depthwise.weight, None, 2, 1, groups=8),
                        separable.pointwise.weight, separable.pointwise.bias)
    torch.testing.assert_close(separable(x), expected)

    spatial = gnn.SpatialSeparableConv2d(8, 4, 3, stride=2, padding=1)
    expected = F.conv2d(F.conv2d(x, spatial.vertical.weight, None, (2, 1), (1, 0)),
                        spatial.horizontal.weight, spatial.horizontal.bias, (1, 2), (0, 1))
    torch.testing.assert_close(spatial(x), expected)
    assert spatial(x).shape == torch.nn.Conv2d(8, 4, 3, 2, 1)(x).shape

    flat = gnn.FlattenedConv2d(8, 4, 3, padding="same")
    lateral = F.conv2d(x, flat.lateral.weight)
    vertical = F.conv2d(lateral, flat.vertical.weight, padding=(1, 0), groups=4)
    expected = F.conv2d(vertical, flat.horizontal.weight, flat.horizontal.bias, padding=(0, 1), groups=4)
    torch.testing.assert_close(flat(x), expected)


def test_flattened_conv_equals_a_rank_one_dense_conv():
    """A rank-1 filter separates exactly into three 1-D filters."""
    flat = gnn.FlattenedConv2d(3, 2, 3, padding=1, bias=False)
    lateral = flat.lateral.weight[:, :, 0, 0]  # (M, C)
    vertical = flat.vertical.weight[:, 0, :, 0]  # (M, kh)
    horizontal = flat.horizontal.weight[:, 0, 0, :]  # (M, kw)
    dense = torch.einsum("mc,mh,mw->mchw", lateral, vertical, horizontal)
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(flat(x), F.conv2d(x, dense, padding=1), atol=1e-5, rtol=1e-4)


def test_depthwise_multiplier_and_modules_backward():
    layer = gnn.DepthwiseConv2d(4, 3, padding=1, depth_multiplier=3)
    assert layer.out_channels == 12 and layer.groups == 4
    out = layer(torch.randn(1, 4, 5, 5))
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
