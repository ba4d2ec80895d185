"""torch's own grouped and depthwise convs in channels_last on CUDA against the CPU in float64, on the conv shapes of
shufflenet_g8_wd4 at 32x32 (check_float64_cl_model_cuda.py found torch's own model off there in float32): the output
and both gradients, relative errors.

    python3 experiments/issue4-cpu-benchmark/gpu-stop16/check_conv_cl_cuda.py
"""

import torch
import torch.nn.functional as F

from groupconv import models
from groupconv import nn as gnn

shapes = {}
model = models.create_model("shufflenet_g8_wd4", num_classes=10, small_input=True)


def record(module, args, output):
    shapes.setdefault((tuple(args[0].shape), tuple(module.weight.shape), module.stride, module.padding, module.groups,
                       getattr(module, "shuffle_groups", 1)), None)


for module in model.modules():
    if isinstance(module, gnn.Conv2d):
        module.register_forward_hook(record)
with torch.no_grad():
    model(torch.randn(4, 3, 32, 32))


def relative_error(actual, expected):
    return ((actual.double().cpu() - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


for (x_shape, w_shape, stride, padding, groups, shuffle) in shapes:
    torch.manual_seed(0)
    x, w = torch.randn(x_shape, dtype=torch.float64), torch.randn(w_shape, dtype=torch.float64)
    grad = torch.randn(F.conv2d(x, w, None, stride, padding, 1, groups).shape, dtype=torch.float64)

    def gradients(x, w, grad):
        x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = F.conv2d(x, w, None, stride, padding, 1, groups)
        return (out, *torch.autograd.grad(out, (x, w), grad))

    reference = gradients(x, w, grad)
    row = []
    for dtype in (torch.float32, torch.float64):
        for layout in (torch.contiguous_format, torch.channels_last):
            got = gradients(x.to("cuda", dtype).contiguous(memory_format=layout), w.to("cuda", dtype),
                            grad.to("cuda", dtype).contiguous(memory_format=layout))
            row.append(f"{str(dtype)[6:]} {'CL' if layout == torch.channels_last else 'NCHW'} "
                       + "/".join(f"{relative_error(a, b):.0e}" for a, b in zip(got, reference)))
    print(f"x{x_shape} w{w_shape} s{stride[0]} g{groups}: " + "  ".join(row))
