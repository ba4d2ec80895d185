"""`groupconv benchmark dispatch`: the per-call cost of groupconv's dispatch against torch, and layer times.

groupconv's layers run behind argument checks, the dispatcher and (in eager mode) an autograd
Function; this measures what that costs on a tiny conv (the dispatch cost the fast kernels
must stay under), then times a few zoo layer shapes, groupconv and torch in one run, in alternation.

    groupconv benchmark dispatch [--batch 8] [--repeats 7]
"""

from __future__ import annotations

import torch

from .. import nn as gnn
from ..ops.tuning.timing import median_seconds_interleaved

# name: (in_channels, out_channels, kernel, groups, spatial size) of zoo layers
LAYERS = {
    "ShuffleNet g8 1x1 384->96 g8 28x28": (384, 96, 1, 8, 28),
    "ShuffleNet g8 1x1 96->384 g8 28x28": (96, 384, 1, 8, 28),
    "ShuffleNet g8 depthwise 3x3 96 28x28": (96, 96, 3, 96, 28),
    "ResNeXt-29 3x3 128 g32 32x32": (128, 128, 3, 32, 32),
    "MobileNet depthwise 3x3 128 56x56": (128, 128, 3, 128, 56),
}


def forward_only(layer, x):
    def run():
        with torch.no_grad():
            layer(x)

    return run


def forward_backward(layer, x):
    def run():
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()

    return run


def pair(in_channels, out_channels, kernel, groups):
    ours = gnn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, groups=groups, bias=False)
    theirs = torch.nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, groups=groups, bias=False)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


BATCH, REPEATS = 8, 7  # this benchmark's defaults


def dispatch_benchmark(batch: int = BATCH, repeats: int = REPEATS) -> None:
    """Print the dispatch cost on a tiny conv, then groupconv and torch times of LAYERS at `batch`."""
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, median of {repeats} runs")

    ours, theirs = pair(8, 8, 3, 2)
    tiny = torch.randn(1, 8, 8, 8)
    times = median_seconds_interleaved({"groupconv": forward_only(ours, tiny), "torch": forward_only(theirs, tiny)},
                                       repeats=200, warmup=20)
    ours_s, theirs_s = times["groupconv"], times["torch"]
    print(f"\nper-call overhead on a tiny conv (1x8x8x8, g=2): groupconv {ours_s * 1e6:.1f} us, "
          f"torch {theirs_s * 1e6:.1f} us, dispatch cost {(ours_s - theirs_s) * 1e6:+.1f} us")

    header = f"{'layer (batch %d)' % batch:40} {'pass':5} {'groupconv ms':>12} {'torch ms':>9} {'torch/groupconv':>15}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, (cin, cout, kernel, groups, size) in LAYERS.items():
        ours, theirs = pair(cin, cout, kernel, groups)
        x = torch.randn(batch, cin, size, size)
        for label, make in (("f", forward_only), ("fb", forward_backward)):
            times = median_seconds_interleaved({"groupconv": make(ours, x), "torch": make(theirs, x)},
                                               repeats=repeats, warmup=2)
            ours_s, theirs_s = times["groupconv"], times["torch"]
            print(f"{name:40} {label:5} {ours_s * 1e3:12.2f} {theirs_s * 1e3:9.2f} {theirs_s / ours_s:14.2f}x")
