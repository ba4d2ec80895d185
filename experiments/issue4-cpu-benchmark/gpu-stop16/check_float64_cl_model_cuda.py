"""Which half of groupconv's ShuffleNet leaves torch's gradients in float64 channels_last on CUDA
(check_fusions_cuda.py): the model with only its BNs made torch's, and with only its convs made torch's, each against
the CPU float64 reference; the worst gradients.

    PYTHONPATH=src GROUPCONV_NATIVE=0 python3 experiments/issue4-cpu-benchmark/gpu-stop16/check_float64_cl_model_cuda.py
"""

import copy

import torch

from groupconv import models
from groupconv import nn as gnn
from groupconv.benchmark import StockBatchNormAct2d, to_torch_layers

device = "cuda"


def relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()


def step(network, x):
    leaf = x.clone().requires_grad_()
    loss = network(leaf).square().mean()
    return loss, torch.autograd.grad(loss, [leaf, *network.parameters()])


def stock_batch_norms(model):
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, gnn.BatchNormAct2d):
            module.__class__ = StockBatchNormAct2d
    return model


def torch_convs(model):
    twin = to_torch_layers(model)  # then the BNs back to groupconv's
    for module in twin.modules():
        if isinstance(module, StockBatchNormAct2d):
            module.__class__ = gnn.BatchNormAct2d
    return twin


torch.manual_seed(0)
model = models.create_model("shufflenet_g8_wd4", num_classes=10, small_input=True)
x = torch.randn(4, 3, 32, 32)
reference_loss, reference_grads = step(to_torch_layers(model).double(), x.double())
names = ["input"] + [name for name, _ in model.named_parameters()]
for dtype in (torch.float64, torch.float32):
    for layout in (torch.channels_last, torch.contiguous_format):
        on_device = model.to(device, dtype, memory_format=layout)
        xd = x.to(device, dtype).contiguous(memory_format=layout)
        for who, network in (("groupconv", on_device), ("groupconv convs, torch BN", stock_batch_norms(on_device)),
                             ("torch convs, groupconv BN", torch_convs(on_device)), ("torch", to_torch_layers(on_device))):
            loss, grads = step(network, xd)
            errors = sorted(((relative_error(a.double().cpu(), b), name) for name, a, b in
                             zip(names, grads, reference_grads) if b.abs().max() > 1e-10), reverse=True)
            print(f"{who:26} {dtype} {str(layout):22} loss {loss.item():.8f} ({reference_loss.item():.8f}) worst: "
                  + "; ".join(f"{name} {error:.1e}" for error, name in errors[:3]))
        model = model.cpu().float()
