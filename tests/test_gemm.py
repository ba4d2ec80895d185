"""The gemm backend beyond the oracle tests: the channels_last weight gradient, the one op it runs in that layout."""

import pytest
import torch
import torch.nn.functional as F

import groupconv
from groupconv import ops


@pytest.mark.parametrize("channels, out_channels, groups", [(24, 12, 4), (12, 36, 3), (8, 8, 1), (16, 16, 16)])
def test_channels_last_weight_gradient_matches_torch(channels, out_channels, groups):
    x = torch.randn(3, channels, 5, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(out_channels, channels // groups, 1, 1, dtype=torch.float64, requires_grad=True)
    grad_output = torch.randn(3, out_channels, 5, 7, dtype=torch.float64)
    problem = ops.ConvProblem.build("conv_backward_weight", x.shape, w.shape, ops.conv_problem(x, w, groups=groups)
                                    .arguments, x)
    assert ops.get_backend("gemm").not_supported_reasons(problem) == []
    with ops.use_backend("gemm"):
        ours = torch.ops.groupconv.conv_backward_weight(grad_output, x, list(w.shape), [1, 1], [0, 0], [1, 1],
                                                        groups, 1)
    (expected,) = torch.autograd.grad(F.conv2d(x, w, groups=groups), w, grad_output)
    torch.testing.assert_close(ours, expected)


def test_channels_last_forward_and_input_gradient_stay_refused():
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 2, 1, 1)
    reasons = ops.get_backend("gemm").not_supported_reasons(ops.conv_problem(x, w, groups=4))
    assert any("channels_last for the weight gradient" in reason for reason in reasons)
    with ops.use_backend("gemm"), pytest.raises(ValueError, match="gemm.*channels_last"):
        groupconv.conv2d(x, w, groups=4)
