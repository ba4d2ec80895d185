"""torch's own ops of a ShuffleNet downsampling unit's shortcut and head on CUDA in channels_last against the CPU in
float64 (check_float64_cl_model_cuda.py found torch's own model off in float32 channels_last): 3x3 stride-2 average
pool, ReLU in place, concatenation, global average pool; gradients as relative errors.

    python3 experiments/issue4-cpu-benchmark/gpu-stop16/check_pools_cl_cuda.py
"""

import torch
import torch.nn.functional as F


def relative_error(actual, expected):
    return ((actual.double().cpu() - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


def shortcut_and_branch(x, branch):
    pooled = F.relu(F.avg_pool2d(x, 3, 2, 1), inplace=True)
    return torch.cat((branch, pooled), 1)


cases = {
    "avg_pool2d 3x3 s2": (lambda x: F.avg_pool2d(x, 3, 2, 1), [(4, 24, 16, 16)]),
    "avg_pool2d + relu_ + cat": (shortcut_and_branch, [(4, 24, 16, 16), (4, 72, 8, 8)]),
    "adaptive_avg_pool2d(1)": (lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1), [(4, 96, 4, 4)]),
    "batch_norm train + relu_": (lambda x: F.relu(F.batch_norm(x, None, None, None, None, True), inplace=True),
                                 [(4, 24, 8, 8)]),
}
for name, (f, shapes) in cases.items():
    torch.manual_seed(0)
    inputs = [torch.randn(s, dtype=torch.float64) for s in shapes]

    def gradients(*tensors, grad_layout=None):
        leaves = [t.clone().requires_grad_() for t in tensors]
        out = f(*leaves)
        # one draw in float64 for every run (the same values), in the layout asked for (default: the output's)
        grad = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        grad = grad.to(out.device, out.dtype)
        if grad_layout == "output":
            grad = grad.contiguous(memory_format=torch.channels_last) if out.dim() == 4 and out.is_contiguous(
                memory_format=torch.channels_last) else grad
        return (out, *torch.autograd.grad(out, leaves, grad))

    reference = gradients(*inputs)
    row = []
    for dtype in (torch.float32, torch.float64):
        for layout in (torch.contiguous_format, torch.channels_last):
            for grad_layout in (None, "output"):
                got = gradients(*[t.to("cuda", dtype).contiguous(memory_format=layout) for t in inputs],
                                grad_layout=grad_layout)
                row.append(f"{str(dtype)[6:]} {'CL' if layout == torch.channels_last else 'NCHW'}"
                           f"{' (grad NCHW)' if grad_layout is None else ' (grad as output)'} "
                           + "/".join(f"{relative_error(a, b):.0e}" for a, b in zip(got, reference)))
    print(f"{name:26}: " + "  ".join(row))
