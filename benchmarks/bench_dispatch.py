"""groupconv against torch in one run: the per-call cost of groupconv's dispatch, and layer times.

groupconv's layers run behind argument checks, the dispatcher and (in eager mode) an autograd
Function; this measures what that costs on a tiny conv (the "dispatch cost" the kernel issues
promise never to exceed), then times a few layer shapes of ../shared/reference/baseline.md.

    .venv/bin/python benchmarks/bench_dispatch.py [--batch 8] [--repeats 7]
"""

from __future__ import annotations

import argparse

import torch

import groupconv.nn as gnn
from groupconv.analysis import median_seconds

# name: (in_channels, out_channels, kernel, groups, spatial size) from baseline.md
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="batch size of the layer shapes (default: 8)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs; the median is kept (default: 7)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, median of {args.repeats} runs")

    ours, theirs = pair(8, 8, 3, 2)
    tiny = torch.randn(1, 8, 8, 8)
    ours_s = median_seconds(forward_only(ours, tiny), repeats=200, warmup=20)
    theirs_s = median_seconds(forward_only(theirs, tiny), repeats=200, warmup=20)
    print(f"\nper-call overhead on a tiny conv (1x8x8x8, g=2): groupconv {ours_s * 1e6:.1f} us, "
          f"torch {theirs_s * 1e6:.1f} us, dispatch cost {(ours_s - theirs_s) * 1e6:+.1f} us")

    header = f"{'layer (batch %d)' % args.batch:40} {'pass':5} {'groupconv ms':>12} {'torch ms':>9} {'torch/groupconv':>15}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, (cin, cout, kernel, groups, size) in LAYERS.items():
        ours, theirs = pair(cin, cout, kernel, groups)
        x = torch.randn(args.batch, cin, size, size)
        for label, make in (("f", forward_only), ("fb", forward_backward)):
            ours_s = median_seconds(make(ours, x), repeats=args.repeats)
            theirs_s = median_seconds(make(theirs, x), repeats=args.repeats)
            print(f"{name:40} {label:5} {ours_s * 1e3:12.2f} {theirs_s * 1e3:9.2f} {theirs_s / ours_s:14.2f}x")


if __name__ == "__main__":
    main()
