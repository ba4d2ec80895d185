"""torch.compile of groupconv models: one graph (no graph break) that serves every batch size, with no recompile
caused by groupconv's own state (caches, the native library's loading) changing while dynamo traces."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import groupconv
from groupconv.models import create_model


def _compiled_matches_eager(model, batches, backend, in_channels=3, size=16, rtol=1e-4, atol=1e-4):
    """Compiles a copy of `model` once (dynamic sizes, one graph) and checks it against `model` in eager mode on each
    batch size: the outputs, the parameters' gradients and the running statistics, with no recompile."""
    compiled_model = copy.deepcopy(model)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(compiled_model, fullgraph=True, dynamic=True, backend=backend)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for batch in batches:
            x = torch.randn(batch, in_channels, size, size)
            expected, got = model(x), compiled(x)
            torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
            (expected * torch.linspace(-1, 1, expected.numel()).view_as(expected)).sum().backward()
            (got * torch.linspace(-1, 1, got.numel()).view_as(got)).sum().backward()
            for (name, eager), (_, traced) in zip(model.named_parameters(), compiled_model.named_parameters()):
                torch.testing.assert_close(traced.grad, eager.grad, rtol=rtol, atol=atol, msg=lambda message, name=name: f"{name}: {message}")
            for (name, eager), (_, traced) in zip(model.named_buffers(), compiled_model.named_buffers()):
                torch.testing.assert_close(traced, eager, rtol=rtol, atol=atol, msg=lambda message, name=name: f"{name}: {message}")
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]


@pytest.mark.parametrize("training", [False, True])
def test_a_compiled_model_serves_new_batch_sizes_without_recompiling(training):
    torch.manual_seed(0)
    model = create_model("shufflenet_g3_wd4", num_classes=10, small_input=True).train(training)
    _compiled_matches_eager(model, (2, 3, 5), backend="eager")


class _ConvBatchNormBlock(torch.nn.Module):
    """A grouped conv, then batch norm fused with the shortcut's add and the ReLU (groupconv.nn.BatchNormAct2d)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = groupconv.nn.Conv2d(4, channels, 3, padding=1, groups=2, bias=False)  # (as before a batch norm)
        self.bn = groupconv.nn.BatchNormAct2d(channels)
        self.widen = groupconv.nn.Conv2d(4, channels, 1, groups=2)

    def forward(self, x):
        return self.bn(self.conv(x), self.widen(x))


# 8 channels: torch's ops run the batch norm (too few values for the fused kernel); 64 channels: the fused kernel runs it.
# (Batches of 5 and more: inductor's CPU code itself guards on a batch norm's batch x height x width above 4096.)
@pytest.mark.parametrize("channels", [8, 64])
@pytest.mark.parametrize("training", [False, True])
def test_a_block_with_fused_batch_norm_compiles_with_inductor_for_every_batch_size(training, channels):
    torch.manual_seed(0)
    model = _ConvBatchNormBlock(channels).train(training)
    _compiled_matches_eager(model, (5, 6, 7), backend="inductor", in_channels=4, size=32)


def test_a_compiled_conv_sees_new_signatures_of_eager_calls_without_recompiling():
    """Eager calls between compiled ones fill the argument checks' cache; the compiled code must not guard on it."""
    w = torch.randn(4, 2, 3, 3)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: groupconv.conv2d(x, w, padding=1, groups=2), fullgraph=True, dynamic=True,
                             backend="eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for batch in (6, 7, 9):  # (sizes of 1, or equal to another dimension's (w's 3, x's 4 and 5), are specialised)
            x = torch.randn(batch, 4, 5, 5)
            groupconv.conv2d(torch.randn(batch, 4, 7 + batch, 5), w, padding=1, groups=2)  # a new eager signature
            torch.testing.assert_close(compiled(x), torch.nn.functional.conv2d(x, w, padding=1, groups=2))
