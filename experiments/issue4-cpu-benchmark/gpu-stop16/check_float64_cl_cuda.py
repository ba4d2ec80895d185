"""Where groupconv's float64 channels_last gradients on CUDA leave torch's (found by check_fusions_cuda.py): each op of
a ShuffleNet unit alone, groupconv against torch, forward and every gradient, relative errors.

    PYTHONPATH=src GROUPCONV_NATIVE=0 python3 experiments/issue4-cpu-benchmark/gpu-stop16/check_float64_cl_cuda.py
"""

import torch
import torch.nn.functional as F

from groupconv import nn as gnn
from groupconv import ops

device = "cuda"


def relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


def compare(name, ours, theirs, shapes, dtype, layout):
    torch.manual_seed(0)
    inputs = [torch.randn(s, device=device, dtype=dtype).contiguous(memory_format=layout if len(s) == 4 else
                                                                     torch.contiguous_format) for s in shapes]
    results = []
    for f in (ours, theirs):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = f(*leaves)
        grad = torch.randn(out.shape, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(1))
        results.append((out, torch.autograd.grad(out, leaves, grad)))
    (out, grads), (expected, expected_grads) = results
    print(f"{name:28} {dtype} {str(layout):22} output {relative_error(out, expected):.1e} gradients "
          + " ".join(f"{relative_error(a, b):.1e}" for a, b in zip(grads, expected_grads)))


for dtype in (torch.float32, torch.float64):
    for layout in (torch.contiguous_format, torch.channels_last):
        bn = gnn.BatchNormAct2d(16).to(device, dtype)
        compare("BatchNormAct2d + residual", lambda x, r, w, b: ops.batch_norm(x, None, None, w, b, True, residual=r,
                                                                                relu=True),
                lambda x, r, w, b: F.relu(F.batch_norm(x, None, None, w, b, True) + r),
                [(4, 16, 8, 8), (4, 16, 8, 8), (16,), (16,)], dtype, layout)
        compare("pointwise 1x1 g4", lambda x, w: ops.conv2d(x, w, groups=4), lambda x, w: F.conv2d(x, w, groups=4),
                [(4, 16, 8, 8), (32, 4, 1, 1)], dtype, layout)
        compare("depthwise 3x3 shuffle4", lambda x, w: ops.conv2d(x, w, padding=1, groups=16, shuffle_groups=4),
                lambda x, w: F.conv2d(torch.channel_shuffle(x, 4), w, padding=1, groups=16),
                [(4, 16, 8, 8), (16, 1, 3, 3)], dtype, layout)
        compare("depthwise 3x3 s2 shuffle4", lambda x, w: ops.conv2d(x, w, stride=2, padding=1, groups=16,
                                                                     shuffle_groups=4),
                lambda x, w: F.conv2d(torch.channel_shuffle(x, 4), w, stride=2, padding=1, groups=16),
                [(4, 16, 8, 8), (16, 1, 3, 3)], dtype, layout)
        compare("channel_shuffle", lambda x: ops.channel_shuffle(x, 4), lambda x: torch.channel_shuffle(x, 4),
                [(4, 16, 8, 8)], dtype, layout)
        compare("dense 3x3 stem", lambda x, w: ops.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1),
                [(4, 3, 8, 8), (16, 3, 3, 3)], dtype, layout)
