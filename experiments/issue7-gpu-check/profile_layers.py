"""Where a Triton layer's time goes on a GPU: kernel time (torch.profiler, CUDA activity) against host time
(cProfile of the Python path), for two layers that bench_triton.py found far behind cuDNN:

- depthwise 3x3 384 g384 shuffle8 7x7, channels_last, forward+backward: 0.60 ms against cuDNN's 0.12, and
  every small layer's forward+backward took 0.5-0.8 ms whatever its size (a fixed cost?);
- grouped 3x3 128->128 g32 32x32 (4 channels a group: the direct kernel), forward: 0.63 ms against 0.04.

    PYTHONPATH=src GROUPCONV_NATIVE=0 python3 experiments/issue7-gpu-check/profile_layers.py
"""

import cProfile
import io
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

import groupconv.nn as gnn
from groupconv import ops

STEPS = 30


def case(in_channels, out_channels, groups, size, shuffle, channels_last, backward):
    torch.manual_seed(0)
    layer = gnn.ShuffledGroupedConv2d(in_channels, out_channels, 3, padding=1, groups=groups, bias=False,
                       shuffle_groups=shuffle).cuda()
    x = torch.randn(32, in_channels, size, size, device="cuda")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(backward)
    grad = torch.randn_like(layer(x))

    def step():
        with ops.use_backend("triton"):
            if backward:
                x.grad = None
                layer.weight.grad = None
                layer(x).backward(grad)
            else:
                with torch.no_grad():
                    layer(x)
    return step


def report(name, step):
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    host = (time.perf_counter() - start) / STEPS
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / STEPS
    print(f"\n===== {name}: {1e3 * host:.3f} ms a step on the host (launches returned), {1e3 * wall:.3f} ms to the end")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(STEPS):
        step()
    torch.cuda.synchronize()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
    print(text.getvalue()[-6000:])


report("depthwise 384 g384 shuffle8 7x7 CL fb", case(384, 384, 384, 7, 8, True, True))
report("grouped 128 g32 32x32 NCHW forward", case(128, 128, 32, 32, 1, False, False))
