"""The `groupconv` command (also `python -m groupconv`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import models
from . import nn as gnn
from . import ops
from .allocator import keep_freed_memory
from .analysis import count_multiply_adds, count_parameters, layer_connectivity, median_seconds, render_connectivity
from .analysis import roofline as analysis_roofline
from .benchmark import ZOO_MODELS
from .analysis.cli import add_commands as add_analysis_commands
from .train.cli import add_commands as add_training_commands


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
    print("Seed 000: a grouped conv costs H*W*N*K^2*M/G multiply-adds, 1/G of the standard one.\n")

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
    print("Timings: median of several runs; the kernel issues make groupconv's column fast, see benchmarks/.")
    return 0


def run_backends(args: argparse.Namespace) -> int:
    """List the registered backends in dispatch order."""
    forced = ops.forced_backend()
    for name in ops.list_backends():
        mark = " (forced)" if name == forced else ""
        print(f"{name}{mark}: {ops.get_backend(name).description}")
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


BENCHMARKS = ["layers", "sweep", "shuffle", "models", "same-flops"]


def run_benchmark(args: argparse.Namespace) -> int:
    """groupconv against torch: machine ceilings, zoo layers, the group sweep, whole models; tables, CSV, plot."""
    from . import benchmark

    for option in ("batch", "repeats", "rounds"):
        if getattr(args, option) < 1:
            args.parser.error(f"--{option}={getattr(args, option)} must be at least 1")
    unknown = [name for name in args.models if not models.is_model(name)]
    if unknown:
        args.parser.error(f"--models: unknown model(s) {', '.join(unknown)}; see `groupconv models`")
    what = args.what or BENCHMARKS
    for name in what:
        if name not in BENCHMARKS:
            args.parser.error(f"{name!r} is not a benchmark: choose from {', '.join(BENCHMARKS)}")
    pair = benchmark.same_flops_pair(args.models)
    if "same-flops" in args.what and pair is None:
        args.parser.error(f"same-flops needs a ShuffleNet g=8 and the g=1 of its width in --models, got "
                          f"{' '.join(args.models)}")
    if args.device != "cpu":
        if args.device != "cuda" or not torch.cuda.is_available():
            args.parser.error(f"--device={args.device}: only cpu, or cuda where torch sees a CUDA GPU "
                              f"(torch.cuda.is_available() is {torch.cuda.is_available()})")
        if set(what) != {"models"}:
            args.parser.error(f"--device={args.device} times whole models only (`groupconv benchmark models`); "
                              "benchmarks/bench_triton.py times the layers on a GPU")
    out = Path(args.out)
    kept = args.keep_memory and keep_freed_memory()
    print(f"groupconv benchmark: {torch.get_num_threads()} threads, batch {args.batch}, median of {args.repeats} "
          f"runs (layers: more where short, up to {benchmark.MAX_REPEATS}), float32, freed memory "
          f"{'kept for reuse' if kept else 'returned to the system'} (both sides); "
          f"results in {out}/")
    if "layers" in what:
        ceilings = analysis_roofline.machine_ceilings(args.peak_gflops, args.bandwidth_gbs)
        print(f"ceilings: {ceilings.source}")
        shapes = benchmark.zoo_layer_shapes(args.models)[: args.limit]
        print(f"\n{len(shapes)} distinct grouped/depthwise/pointwise-grouped layers of {', '.join(args.models)} "
              f"(ms; CL = channels_last input; xfloor = best groupconv time / roofline floor)")
        print(benchmark.LAYER_HEADER)
        results = benchmark.layer_benchmark(shapes, args.batch, args.repeats, not args.forward_only, ceilings)
        print(benchmark.summarise_layers(results))
        benchmark.write_csv(out / "layers.csv", [r.record() for r in results])
    if "sweep" in what:
        print("\nOne 256->256 conv at 28x28, forward+backward, G = 1 ... 256 (depthwise):")
        points = benchmark.group_sweep(batch=args.batch, repeats=args.repeats)
        benchmark.write_csv(out / "sweep.csv", [vars(p) for p in points])
        benchmark.plot_sweep(points, out / "sweep.png")
    if "shuffle" in what:
        print("\nThe channel shuffle's cost: a ShuffleNet unit with and without it, forward+backward")
        results = benchmark.shuffle_cost(batch=args.batch, repeats=args.repeats)
        benchmark.write_csv(out / "shuffle.csv", [{**vars(r), "groupconv_overhead": round(r.groupconv_overhead, 4),
                                                   "torch_overhead": round(r.torch_overhead, 4)} for r in results])
    if "models" in what:
        print("\nWhole models: groupconv's layers against the same model from plain torch.nn layers")
        print(benchmark.MODEL_HEADER)
        names = [name for name in args.models if name in benchmark.MODEL_BENCHMARK_DEFAULTS] or args.models
        results = benchmark.model_benchmark(names, args.batch, args.repeats, args.image_size, device=args.device)
        print("(vs NCHW: groupconv in its faster layout over torch NCHW; vs best: over torch in its faster layout)")
        benchmark.write_csv(out / "models.csv", [r.record() for r in results])
    if "same-flops" in what and pair is not None:  # (by default, where --models holds such a pair)
        print("\nSame FLOPs: ShuffleNet g=8 trained with groupconv against stock torch's g=1")
        result = benchmark.same_flops_benchmark(*pair, args.batch, args.rounds, args.image_size)
        benchmark.write_csv(out / "same_flops.csv", [vars(result)])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groupconv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="cost and timing of a standard, a grouped and a shuffled-grouped conv")
    demo.add_argument("--channels", type=int, default=240, help="input and output channels (default: 240)")
    demo.add_argument("--groups", type=int, default=3, help="groups of the grouped convs (default: 3)")
    demo.add_argument("--size", type=int, default=28, help="input height and width (default: 28)")
    demo.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    demo.add_argument("--repeats", type=int, default=5, help="timed runs per layer; the median is shown (default: 5)")
    demo.set_defaults(run=run_demo, parser=demo)

    backends = commands.add_parser("backends", help="list the implementations the dispatcher can choose from")
    backends.set_defaults(run=run_backends)

    bench = commands.add_parser("benchmark", help="time groupconv against torch on the zoo's layers and models")
    # No argparse `choices`: Python 3.11 checks an empty nargs="*" list against them and refuses it.
    bench.add_argument("what", nargs="*", metavar="{" + ",".join(BENCHMARKS) + "}", help=f"which to run (default: all of {' '.join(BENCHMARKS)})")
    bench.add_argument("--models", nargs="+", default=list(ZOO_MODELS), metavar="NAME",
                       help=f"models whose layers (and which whole models) to time (default: {' '.join(ZOO_MODELS)})")
    bench.add_argument("--batch", type=int, default=32, help="batch size (default: 32, as baseline.md)")
    bench.add_argument("--repeats", type=int, default=5,
                       help="timed runs per measurement (layers: at least this many, more for short ones); the median "
                            "is kept")
    bench.add_argument("--rounds", type=int, default=11,
                       help="same-flops: rounds of the train steps in alternation; the ratio's median and quartiles "
                            "over them are kept (default: 11)")
    bench.add_argument("--limit", type=int, default=None, help="time only the first N distinct layers")
    bench.add_argument("--forward-only", action="store_true", help="layers: skip forward+backward")
    bench.add_argument("--image-size", type=int, default=None, help="models: input size (default: each model's own)")
    bench.add_argument("--peak-gflops", type=float, default=None, help="compute ceiling (default: measured now)")
    bench.add_argument("--bandwidth-gbs", type=float, default=None, help="memory ceiling (default: measured now)")
    bench.add_argument("--keep-memory", action=argparse.BooleanOptionalAction, default=True,
                       help="keep freed CPU memory for reuse (groupconv.allocator), for groupconv and torch alike; "
                            "--no-keep-memory measures glibc's default, a page fault per large tensor (default: on)")
    bench.add_argument("--device", default="cpu", help="models: cpu, or cuda to train and infer on the GPU (default: cpu)")
    bench.add_argument("--out", default="benchmark-results", help="directory for CSV files and the sweep plot")
    bench.set_defaults(run=run_benchmark, parser=bench)

    zoo = commands.add_parser("models", help="list the model zoo with parameters and multiply-adds")
    zoo.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'shufflenet_g3_*' (default: all)")
    zoo.add_argument("--markdown", action="store_true", help="print a markdown table")
    zoo.set_defaults(run=run_models)

    add_training_commands(commands)  # train, eval, experiment
    add_analysis_commands(commands)  # analyze, profile, correlate, draw, report
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
