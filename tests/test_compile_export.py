"""torch.compile(fullgraph=True) and torch.export through models built from groupconv layers."""

import pytest
import torch

import groupconv
import groupconv.nn as gnn


class ShuffleUnit(torch.nn.Module):
    """A small ShuffleNet-style network touching every op: grouped, fused-shuffle, depthwise, 1-D."""

    def __init__(self):
        super().__init__()
        self.stem = gnn.Conv2d(3, 12, 3, padding=1)
        self.pointwise = gnn.PointwiseGroupedConv2d(12, 12, groups=3, bias=False)
        self.shuffled = gnn.ShuffledGroupedConv2d(12, 12, 3, padding=1, groups=12, bias=False, shuffle_groups=3)
        self.separable = gnn.DepthwiseSeparableConv2d(12, 12, 3, padding="same")
        self.flattened = gnn.FlattenedConv2d(12, 6, 3, padding=1)
        self.shuffle = gnn.ChannelShuffle(2)
        self.head = gnn.Conv1d(6, 4, 3, groups=2, padding="full")

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.shuffled(torch.relu(self.pointwise(x)))
        x = self.flattened(self.separable(x))
        x = self.shuffle(x)
        return self.head(x.flatten(2)).mean(-1)


@pytest.fixture
def model_and_input():
    torch.manual_seed(0)
    return ShuffleUnit(), torch.randn(2, 3, 8, 8)


def test_compile_fullgraph_forward_and_backward(model_and_input):
    model, x = model_and_input
    expected = model(x)
    expected_grads = torch.autograd.grad(expected.sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    grads = torch.autograd.grad(out.sum(), list(model.parameters()))
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-4)


def test_compile_channels_last(model_and_input):
    model, x = model_and_input
    x = x.contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x))


def test_export_and_run(model_and_input):
    model, x = model_and_input
    exported = torch.export.export(model, (x,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert "groupconv.conv_forward.default" in targets
    assert "groupconv.channel_shuffle.default" in targets
    torch.testing.assert_close(exported.module()(x), model(x))
    other = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(exported.module()(other), model(other))


def test_export_with_dynamic_batch(model_and_input):
    model, x = model_and_input
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    bigger = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(exported.module()(bigger), model(bigger))


def test_accelerated_model_compiles():
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, groups=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1, groups=4))
    x = torch.randn(1, 4, 6, 6)
    expected = model(x)
    groupconv.accelerate(model)
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), expected, atol=1e-5, rtol=1e-4)
