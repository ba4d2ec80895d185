"""`groupconv benchmark batch-norm`: groupconv's fused BN (+ residual) (+ ReLU) against torch's separate ops, in one
run, on the zoo's shapes.

Every groupconv.nn.BatchNormAct2d of the models below is recorded (input shape, ReLU, residual) at
batch 32 in a forward pass; each distinct one is timed forward and forward+backward, as
torch.nn.BatchNorm2d -> (+ residual) -> ReLU (the stock model) and as groupconv's layer, in both
layouts, in alternation. Prints each row's speedup, and the geometric mean per layout.

    groupconv benchmark batch-norm [--batch 32] [--repeats 7] [--models shufflenet_g8_w1 ...] [--min-values 0]
"""

from __future__ import annotations

import torch

from .. import models
from .. import nn as gnn
from ..ops.backends.native import batch_norm as normalization
from ..ops.tuning.timing import median_seconds_interleaved
from .results import geometric_mean
from .twins import StockBatchNormAct2d

BATCH, REPEATS = 32, 7  # this benchmark's defaults
DEFAULT_MODELS = ("shufflenet_g8_w1", "shufflenet_g1_w1", "resnext29_32x4d", "mobilenet_w1")


def zoo_batch_norm_shapes(names, batch: int) -> list[tuple[tuple[int, ...], bool, bool]]:
    """(input shape, relu, residual) of every BatchNormAct2d call in the models' forward pass, first seen first."""
    seen = {}
    for name in names:
        model = models.create_model(name).eval()
        channels, height, width = models.model_entry(name).input_size

        def record(module, args, _output):
            key = (tuple(args[0].shape), module.apply_act, len(args) > 1 and args[1] is not None)
            seen.setdefault(key, name)

        hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, gnn.BatchNormAct2d)]
        with torch.no_grad():
            model(torch.randn(batch, channels, height, width))
        for hook in hooks:
            hook.remove()
    return list(seen)


def contenders(shape, relu, residual, memory_format):
    x = torch.randn(shape).contiguous(memory_format=memory_format).requires_grad_()
    r = torch.randn(shape).contiguous(memory_format=memory_format) if residual else None
    grad = torch.randn(shape).contiguous(memory_format=memory_format)
    ours = gnn.BatchNormAct2d(shape[1], apply_act=relu)
    theirs = gnn.BatchNormAct2d(shape[1], apply_act=relu)
    theirs.__class__ = StockBatchNormAct2d
    steps = {}
    for who, layer in (("torch", theirs), ("groupconv", ours)):
        def forward(layer=layer):
            with torch.no_grad():
                layer(x, r)

        def forward_backward(layer=layer):
            layer(x, r).backward(grad)
            x.grad = None

        steps[f"{who} fwd"], steps[f"{who} fb"] = forward, forward_backward
    return steps


def batch_norm_benchmark(names=DEFAULT_MODELS, batch: int = BATCH, repeats: int = REPEATS,
                         min_values: int | None = None) -> None:
    """Print each BN call's times and speedups, and the geometric mean per layout. `min_values`: run the fused
    op from this many values up (default: the library's NATIVE_MIN_VALUES); 0 times it on every shape, to
    place that threshold."""
    library_threshold = normalization.NATIVE_MIN_VALUES
    normalization.NATIVE_MIN_VALUES = library_threshold if min_values is None else min_values
    try:
        _time_batch_norms(names, batch, repeats)
    finally:
        normalization.NATIVE_MIN_VALUES = library_threshold


def _time_batch_norms(names, batch: int, repeats: int) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}; "
          f"fused op from {normalization.NATIVE_MIN_VALUES} values up")
    print(f"{'shape':22} {'relu':>4} {'res':>3} {'layout':>6} | {'fwd torch':>9} {'ours':>7} {'x':>5} | "
          f"{'fb torch':>9} {'ours':>7} {'x':>5}")
    speedups = {"NCHW": [], "CL": []}
    for shape, relu, residual in zoo_batch_norm_shapes(names, batch):
        for layout, memory_format in (("NCHW", torch.contiguous_format), ("CL", torch.channels_last)):
            t = median_seconds_interleaved(contenders(shape, relu, residual, memory_format), repeats=repeats,
                                           warmup=2)
            forward = t["torch fwd"] / t["groupconv fwd"]
            both = t["torch fb"] / t["groupconv fb"]
            speedups[layout].append(both)
            print(f"{'x'.join(map(str, shape)):22} {'y' if relu else '-':>4} {'y' if residual else '-':>3} "
                  f"{layout:>6} | {t['torch fwd'] * 1e3:9.2f} {t['groupconv fwd'] * 1e3:7.2f} {forward:5.2f} | "
                  f"{t['torch fb'] * 1e3:9.2f} {t['groupconv fb'] * 1e3:7.2f} {both:5.2f}")
    for layout, values in speedups.items():
        print(f"{layout}: forward+backward speedup over torch's BN/add/ReLU, geometric mean "
              f"{geometric_mean(values):.2f}x, min {min(values):.2f}x, max {max(values):.2f}x over {len(values)} shapes")
