"""Stop 16's fused paths on a CUDA device (one device call): where the CPU kernels do not run, the fusions fall back to
torch's ops and plain sums; the results must not change. Prints relative errors against the unfused formulations.

    PYTHONPATH=src GROUPCONV_NATIVE=0 python3 experiments/issue4-cpu-benchmark/gpu-stop16/check_fusions_cuda.py
"""

import torch

from groupconv import models, ops
from groupconv import nn as gnn
from groupconv.benchmark import to_torch_layers

torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # (compare float32 to float32)
device = "cuda"
print(torch.__version__, torch.cuda.get_device_name(0))


def relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


# 1. ShuffleNet g=8 (with_shortcut, BN concat, the shuffle read through) on CUDA, groupconv's model and its torch twin,
# each against the twin computed on the CPU in float64 (the reference): the loss and the worst gradients.
def step(network, x, backend=None):
    leaf = x.clone().requires_grad_()
    with ops.use_backend(backend):
        loss = network(leaf).square().mean()
        return loss, torch.autograd.grad(loss, [leaf, *network.parameters()])


def plain_unit_forward(self, x):
    """ShuffleUnit.forward before stop 16: no with_shortcut, no BN concat (x used twice, torch.cat)."""
    branch = self.dw_bn2(self.dw_conv2(self.compress_bn1(self.compress_conv1(x))))
    if self.downsample:
        return torch.cat((self.expand_bn3(self.expand_conv3(branch)), self.activ(self.avgpool(x))), dim=1)
    return self.expand_bn3(self.expand_conv3(branch), x)


from groupconv.models.shufflenet import ShuffleUnit  # noqa: E402

fused_unit_forward = ShuffleUnit.forward
for dtype, backend, unit_forward in ((torch.float32, None, fused_unit_forward), (torch.float64, None, fused_unit_forward),
                                     (torch.float64, "aten", fused_unit_forward),
                                     (torch.float64, None, plain_unit_forward)):
    ShuffleUnit.forward = unit_forward
    print(f"-- units: {unit_forward.__doc__.split(':')[0] if unit_forward.__doc__ else 'stop 16 (fused)'}")
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = models.create_model("shufflenet_g8_wd4", num_classes=10, small_input=True)
        x = torch.randn(4, 3, 32, 32)
        reference_loss, reference_grads = step(to_torch_layers(model).double(), x.double())
        names = ["input"] + [name for name, _ in model.named_parameters()]
        model = model.to(device, dtype, memory_format=layout)
        x = x.to(device, dtype).contiguous(memory_format=layout)
        for who, network, chosen in (("groupconv", model, backend), ("torch twin", to_torch_layers(model), None)):
            loss, grads = step(network, x, chosen)
            errors = sorted(((relative_error(a.double().cpu(), b), name, b.abs().max().item()) for name, a, b in
                             zip(names, grads, reference_grads)), reverse=True)
            print(f"{who:10} {dtype} backend={chosen} {layout}: loss {loss.item():.8f} (CPU float64 "
                  f"{reference_loss.item():.8f}); worst relative gradient errors of {len(grads)} tensors: "
                  + "; ".join(f"{name} {error:.1e} (|grad| {scale:.1e})" for error, name, scale in errors[:3]))

ShuffleUnit.forward = fused_unit_forward

# 2. ops.conv_with_shortcut against conv(x) and x used again, on every backend that runs the call.
for backend in (None, "triton", "aten"):
    torch.manual_seed(0)
    x = torch.randn(2, 48, 8, 8, device=device, requires_grad=True)
    w = torch.randn(24, 6, 1, 1, device=device, requires_grad=True)
    g, gs = torch.randn(2, 24, 8, 8, device=device), torch.randn(2, 48, 8, 8, device=device)
    grads = []
    with ops.use_backend(backend):
        for fused in (True, False):
            out, shortcut = ops.conv_with_shortcut(x, w, groups=8) if fused else (ops.conv2d(x, w, groups=8), x)
            grads.append(torch.autograd.grad((out * g).sum() + (shortcut.relu() * gs).sum(), (x, w)))
    print(f"conv_with_shortcut backend={backend}: relative errors "
          f"{[f'{relative_error(a, b):.1e}' for a, b in zip(*grads)]}")

# 3. BatchNormAct2d(concat=) (torch's ops on CUDA) against BN, ReLU and torch.cat.
torch.manual_seed(0)
bn = gnn.BatchNormAct2d(16).to(device)
x = torch.randn(4, 16, 8, 8, device=device, requires_grad=True)
other = torch.randn(4, 5, 8, 8, device=device, requires_grad=True)
out = bn(x, concat=other)
expected = torch.cat((torch.relu(torch.nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, True)), other), 1)
print(f"BatchNormAct2d(concat=): output error {relative_error(out, expected):.1e}, shape {tuple(out.shape)}")
