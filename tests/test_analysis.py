"""Cost counting of whole models and channel connectivity."""

import torch
from torch.utils.flop_counter import FlopCounterMode

import groupconv
import groupconv.nn as gnn
from groupconv.analysis import channel_connectivity, count_multiply_adds, layer_connectivity


def test_count_multiply_adds_matches_layer_reports_and_torch_flop_counter():
    model = torch.nn.Sequential(
        gnn.Conv2d(3, 24, 3, stride=2, padding=1),
        gnn.ShuffledGroupedConv2d(24, 24, 1, groups=3),
        gnn.DepthwiseSeparableConv2d(24, 48, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(48, 10),
    )
    x = torch.randn(2, 3, 32, 32)
    by_layer = sum(model[i].multiply_adds(16 if i else 32) for i in range(3)) + 48 * 10
    assert count_multiply_adds(model, x) == 2 * by_layer
    # The same model with torch's layers, counted by torch's own counter.
    torch_model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 24, 3, stride=2, padding=1), torch.nn.Conv2d(24, 24, 1, groups=3),
        torch.nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False), torch.nn.Conv2d(24, 48, 1),
    )
    with FlopCounterMode(display=False) as counter:
        torch_model(x)
    assert count_multiply_adds(torch.nn.Sequential(*model[:3]), x) == counter.get_total_flops() // 2


def test_count_multiply_adds_on_the_meta_device():
    with torch.device("meta"):
        model = gnn.Conv2d(256, 256, 3, padding=1, groups=32, bias=False)
        x = torch.empty(1, 256, 56, 56)
    assert count_multiply_adds(model, x) == 56 * 56 * 256 * 8 * 9


def output_reads_input(layer, in_channels, size=5):
    """Which inputs each output depends on, measured from the layer's Jacobian with random weights."""
    x = torch.randn(1, in_channels, size, size, dtype=torch.float64)
    layer = layer.double()

    def per_channel(x):
        return layer(x).abs().sum(dim=(0, 2, 3))

    jacobian = torch.autograd.functional.jacobian(per_channel, x)  # (out, 1, in, h, w)
    return jacobian.abs().sum(dim=(1, 3, 4)) > 0


def test_connectivity_is_what_the_layer_computes():
    for layer in (
        gnn.Conv2d(12, 6, 3, padding=1, groups=3),
        gnn.ShuffledGroupedConv2d(12, 12, 1, groups=4),
        gnn.ShuffledGroupedConv2d(12, 6, 3, padding=1, groups=2, shuffle_groups=3),
        gnn.DepthwiseConv2d(6, 3, padding=1),
    ):
        assert torch.equal(layer_connectivity(layer), output_reads_input(layer, layer.in_channels)), repr(layer)


def test_shuffled_connectivity_mixes_every_group():
    connectivity = channel_connectivity(9, 9, groups=3, shuffle_groups=3)
    blocks = connectivity.reshape(3, 3, 3, 3).any(dim=(1, 3))  # output group x input group
    assert blocks.all()
    assert not channel_connectivity(9, 9, groups=3).reshape(3, 3, 3, 3).any(dim=(1, 3)).fill_diagonal_(False).any()
