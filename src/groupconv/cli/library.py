"""The `groupconv` subcommands about the library itself: demo, backends and models."""

from __future__ import annotations

import argparse
import sys

import torch

from .. import environment, models
from .. import nn as gnn
from .. import ops
from ..analysis import count_multiply_adds, count_parameters, layer_connectivity, median_seconds, render_connectivity


def _demo_layers(channels: int, groups: int) -> dict[str, torch.nn.Module]:
    return {
        "standard conv": gnn.Conv2d(channels, channels, 3, padding=1, bias=False),
        f"grouped conv (G={groups})": gnn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False),
        f"shuffled grouped conv (G={groups})": gnn.ShuffledGroupedConv2d(
            channels, channels, 3, padding=1, groups=groups, bias=False
        ),
    }


def _time_forward_backward(layer: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    def step():
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()

    return median_seconds(step, repeats=repeats)


def run_demo(args: argparse.Namespace) -> int:
    """Build a standard, a grouped and a shuffled-grouped conv; print their cost and time them against torch."""
    for option in ("channels", "groups", "size", "batch", "repeats"):
        if getattr(args, option) < 1:
            args.parser.error(f"--{option}={getattr(args, option)} must be at least 1")
    if args.channels % args.groups:
        args.parser.error(f"--channels={args.channels} is not divisible by --groups={args.groups}")
    torch.manual_seed(0)
    channels, groups, size = args.channels, args.groups, args.size
    x = torch.randn(args.batch, channels, size, size)
    print(f"groupconv demo: 3x3 convs, {channels} -> {channels} channels, input {tuple(x.shape)}, "
          f"{torch.get_num_threads()} threads, backends {ops.list_backends()}")
    print("A grouped conv costs H*W*N*K^2*M/G multiply-adds, 1/G of the standard one.\n")

    header = f"{'layer':34} {'params':>9} {'MACs/img':>10} {'fwd+bwd ms':>11} {'torch ms':>9} {'torch/ours':>10}"
    print(header)
    print("-" * len(header))
    for name, layer in _demo_layers(channels, groups).items():
        ours = _time_forward_backward(layer, x, args.repeats)
        baseline = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=layer.groups, bias=False)
        baseline.load_state_dict(layer.state_dict())
        shuffle = torch.nn.ChannelShuffle(layer.shuffle_groups) if layer.shuffle_groups > 1 else torch.nn.Identity()
        theirs = _time_forward_backward(torch.nn.Sequential(shuffle, baseline), x, args.repeats)
        print(f"{name:34} {layer.parameter_count():>9,} {layer.multiply_adds(size) / 1e6:>9.1f}M "
              f"{ours * 1e3:>11.2f} {theirs * 1e3:>9.2f} {theirs / ours:>9.2f}x")

    print("\nWhich input channels (columns) each output channel (rows) reads, for 9 channels:")
    small = _demo_layers(9, 3)
    pictures = [render_connectivity(layer_connectivity(layer)).splitlines() for layer in small.values()]
    titles = list(small)
    print("   ".join(f"{t:28}" for t in titles))
    for rows in zip(*pictures):
        print("   ".join(f"{r:28}" for r in rows))
    print("\nThe shuffle lets each group read one channel from every group of the layer before (ShuffleNet).")
    print("Timings: median of several runs; `groupconv benchmark` times the zoo's layers and models against torch.")
    return 0


def run_backends(args: argparse.Namespace) -> int:
    """List the registered backends in dispatch order."""
    forced = ops.forced_backend()
    for name in ops.list_backends():
        mark = " (forced)" if name == forced else ""
        print(f"{name}{mark}: {ops.get_backend(name).description}")
    print(f"\nOpenMP's waiting workers: {environment.openmp_wait}")
    return 0


def model_costs(name: str) -> tuple[int, int]:
    """(parameters, multiply-adds of one image at the paper's input size), counted on the meta device."""
    with torch.device("meta"):
        model = models.create_model(name).eval()
        x = torch.empty(1, *models.model_entry(name).input_size)
    return count_parameters(model), count_multiply_adds(model, x)


def run_models(args: argparse.Namespace) -> int:
    """List the registered models with parameters and multiply-adds at their paper's input size."""
    names = models.list_models(args.pattern)
    if not names:
        print(f"groupconv models: error: no model matches {args.pattern!r}", file=sys.stderr)
        return 2
    rows = []
    for name in names:
        entry = models.model_entry(name)
        params, macs = model_costs(name)
        size = "x".join(map(str, entry.input_size[1:]))
        rows.append((name, entry.family, size, f"{params:,}", f"{macs / 1e6:,.1f}M" if macs >= 1e5 else f"{macs / 1e3:,.1f}K"))
    headers = ("model", "family", "input", "params", "MACs")
    if args.markdown:
        print("| " + " | ".join(headers) + " |")
        print("|" + "|".join(["---"] * 2 + ["---:"] * 3) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
        for row in [headers, *rows]:
            print("  ".join(f"{cell:<{w}}" if i < 3 else f"{cell:>{w}}" for i, (cell, w) in enumerate(zip(row, widths))))
    print("\nMACs: multiply-accumulates of one image (FLOPs = 2 x MACs), convolutions and linear layers.")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add demo and backends; each sets `run=` to a function(args) -> exit code."""
    demo = commands.add_parser("demo", help="cost and timing of a standard, a grouped and a shuffled-grouped conv")
    demo.add_argument("--channels", type=int, default=240, help="input and output channels (default: 240)")
    demo.add_argument("--groups", type=int, default=3, help="groups of the grouped convs (default: 3)")
    demo.add_argument("--size", type=int, default=28, help="input height and width (default: 28)")
    demo.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    demo.add_argument("--repeats", type=int, default=5, help="timed runs per layer; the median is shown (default: 5)")
    demo.set_defaults(run=run_demo, parser=demo)

    backends = commands.add_parser("backends", help="list the implementations the dispatcher can choose from")
    backends.set_defaults(run=run_backends)


def add_models_command(commands: argparse._SubParsersAction) -> None:
    """Add models, which lists the zoo."""
    zoo = commands.add_parser("models", help="list the model zoo with parameters and multiply-adds")
    zoo.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'shufflenet_g3_*' (default: all)")
    zoo.add_argument("--markdown", action="store_true", help="print a markdown table")
    zoo.set_defaults(run=run_models)
