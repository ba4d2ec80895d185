"""`groupconv benchmark sweep`: one conv at G = 1, 2, 4, ... against the ideal t(G=1) / G line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .layers import layer_step, time_layers
from .shapes import LayerShape


@dataclass
class SweepPoint:
    kernel: int
    groups: int
    torch_nchw_ms: float
    torch_channels_last_ms: float
    groupconv_ms: float


def group_sweep(channels: int = 256, size: int = 28, kernels=(3, 1), batch: int = 32, repeats: int = 5,
                progress=print) -> list[SweepPoint]:
    """Forward+backward of one conv at G = 1, 2, 4, ..., channels (depthwise): the 1/G line, measured."""
    points = []
    for kernel in kernels:
        groups = 1
        while groups <= channels:
            shape = LayerShape("sweep", "conv", channels, channels, (kernel, kernel), (1, 1), (kernel // 2,) * 2,
                               groups, 1, size, size)
            torch.manual_seed(0)
            ours = shape.groupconv_layer()
            theirs = shape.torch_layer(ours)
            x = torch.randn(batch, channels, size, size)
            ms = time_layers({"torch_nchw_ms": layer_step(theirs, x, True),
                              "torch_channels_last_ms": layer_step(
                                  theirs, x.contiguous(memory_format=torch.channels_last), True),
                              "groupconv_ms": layer_step(ours, x, True)}, repeats)
            point = SweepPoint(kernel, groups, **ms)
            points.append(point)
            if progress:
                progress(f"{kernel}x{kernel} G={groups:<4} torch {point.torch_nchw_ms:8.2f} ms  torch CL "
                         f"{point.torch_channels_last_ms:8.2f} ms  groupconv {point.groupconv_ms:8.2f} ms")
            groups *= 2
    return points


def plot_sweep(points: list[SweepPoint], path: str | Path) -> None:
    """Time against G on log-log axes for each kernel size, with the ideal t(G=1) / G line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernels = sorted({p.kernel for p in points}, reverse=True)
    figure, axes = plt.subplots(1, len(kernels), figsize=(6 * len(kernels), 4.5), squeeze=False)
    for axis, kernel in zip(axes[0], kernels):
        chosen = [p for p in points if p.kernel == kernel]
        groups = [p.groups for p in chosen]
        for label, values, style in (("torch NCHW", [p.torch_nchw_ms for p in chosen], "o-"),
                                     ("torch channels_last", [p.torch_channels_last_ms for p in chosen], "s-"),
                                     ("groupconv", [p.groupconv_ms for p in chosen], "^-")):
            axis.plot(groups, values, style, label=label)
        best_dense = min(chosen[0].torch_nchw_ms, chosen[0].torch_channels_last_ms, chosen[0].groupconv_ms)
        axis.plot(groups, [best_dense / g for g in groups], "k--", label="ideal: t(G=1) / G")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("groups G")
        axis.set_ylabel("forward+backward ms")
        axis.set_title(f"{kernel}x{kernel} conv, forward+backward")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
