"""A batch of one: its batch stride (and any size-one dimension's stride) is never stepped along, so layout checks
must not compare it. Every zoo family runs at batch 1 in both layouts, with the fused batch norm's kernel on."""

from __future__ import annotations

import copy

import pytest
import torch

from groupconv import ops
from groupconv.models import create_model, list_models
from groupconv.ops.backends.native import build

from .test_models import FAMILY_REPRESENTATIVES, real_input_shape, small_input_options

needs_native = pytest.mark.skipif(build.unavailable_reason() is not None, reason="native kernels not built")
MODELS = sorted({*FAMILY_REPRESENTATIVES.values(), "shufflenet_g8_w1"})



@needs_native
def test_residual_of_a_batch_of_one_may_have_any_batch_stride(fused_kernel_on_small_inputs):
    # Both channels_last; one has batch stride C*H*W, the other C (as some of torch's kernels leave it).
    x = torch.randn(1, 8, 4, 4).to(memory_format=torch.channels_last)
    residual = torch.empty_strided((1, 8, 4, 4), (8, 1, 32, 8)).normal_()
    assert x.stride(0) != residual.stride(0) and residual.is_contiguous(memory_format=torch.channels_last)
    mean, var = torch.zeros(8), torch.ones(8)
    for training in (False, True):
        with ops.use_backend("native"):
            out = ops.batch_norm(x, mean.clone(), var.clone(), training=training, residual=residual, relu=True)
        expected = torch.relu(torch.nn.functional.batch_norm(x, mean.clone(), var.clone(), training=training) +
                              residual)
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_every_family_runs_a_batch_of_one(name, channels_last, training, fused_kernel_on_small_inputs):
    if channels_last and name in list_models(tag="1d"):
        pytest.skip("channels_last is a layout of 4-D image batches")
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **small_input_options(name)).train(training)
    x = torch.randn(1, *real_input_shape(name)[1:])
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    with ops.use_backend("aten"):
        try:
            torch.manual_seed(1)  # (the same dropout masks in both runs)
            expected = twin(x)
        except ValueError as error:  # a batch norm over one value per channel: illegal in training, as in torch
            assert training and "more than one value per channel" in str(error)
            return
    torch.manual_seed(1)
    out = model(x)
    # (float32 rounding through a deep net, batch statistics of a single image in training)
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)
    out.sum().backward()
