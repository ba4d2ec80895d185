"""The `groupconv` subcommands of groupconv.analysis: analyze, profile, correlate, draw and report (the report
of a training run, through groupconv.train).

Every command's function takes the parsed arguments and returns an exit code. A user mistake
(an unknown model or layer, an input too small for the model, layers that do not line up) is a
ValueError somewhere below (the data and training packages' error types subclass it); it is printed
as `groupconv COMMAND: error: ...` with exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse

import torch

from ..analysis import (ConnectionLayout, MachineCeilings, analyze_model, default_pair, draw_connections,
                        draw_filters, draw_layer_connections, filter_correlation, layer_correlation,
                        machine_ceilings, plot_profile, profile_model, standard_layouts)
from ..analysis.layers import build_on_meta
from ..analysis.modules import conv_layers, find_layer
from ..analysis.sample_data import RANDOM, dataset_batches, random_batches
from ..analysis.tables import write_json
from ..models import create_model, model_entry
from ..train import load_run, load_run_with_data, report_run
from .errors import reported

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


# A bad layer name, channels that do not line up, a missing run directory: the user's mistake, not a bug.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)


def _reported(command: str, function):
    return reported(command, function, USER_ERRORS)


def _add_ceiling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peak-gflops", type=float, default=None, metavar="GFLOPS",
                        help="compute peak for the roofline, GFLOP/s (default: measured now, the best of 1024^3 and "
                             "2048^3 matmuls)")
    parser.add_argument("--bandwidth-gbs", type=float, default=None, metavar="GBS",
                        help="memory bandwidth for the roofline, GB/s read + written (default: measured now "
                             "with a 128 MiB copy)")


def _ceilings(args: argparse.Namespace) -> MachineCeilings:
    for option in ("peak_gflops", "bandwidth_gbs"):
        value = getattr(args, option)
        if value is not None and not value > 0:
            raise ValueError(f"--{option.replace('_', '-')}={value} must be a positive number")
    return machine_ceilings(args.peak_gflops, args.bandwidth_gbs)


def _add_input_options(parser: argparse.ArgumentParser, batch_default: int) -> None:
    parser.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                        help="input size: S (square), H W, or C H W (default: the size the model was built for)")
    parser.add_argument("--batch-size", type=int, default=batch_default,
                        help=f"batch size of the input (default: {batch_default})")


def _input_size(args: argparse.Namespace):
    if args.input_size is None:
        return None
    if len(args.input_size) > 3:
        raise ValueError(f"--input-size={' '.join(map(str, args.input_size))} must be S, H W or C H W")
    return args.input_size[0] if len(args.input_size) == 1 else tuple(args.input_size)


def _check_threads(threads) -> None:
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads={threads} must be at least 1")
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------
# analyze


def run_analyze(args: argparse.Namespace) -> int:
    table = analyze_model(args.model, _input_size(args), args.batch_size, args.small_input, _ceilings(args),
                          DTYPES[args.dtype], args.num_classes)
    if args.csv:
        table.write_csv(args.csv)
    if args.json:
        table.write_json(args.json)
    if not args.quiet:
        print(table.format(compute_only=args.compute_only))
    for path in (args.csv, args.json):
        if path:
            print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# profile


def run_profile(args: argparse.Namespace) -> int:
    _check_threads(args.threads)
    small_input = None if args.input_size is None and not args.native_input else False
    table = profile_model(args.model, args.batch_size, _input_size(args), small_input, _ceilings(args),
                          args.repeats, args.warmup, args.seed)
    print(table.format(all_layers=args.all_layers))
    if args.plot:
        plot_profile(table, args.plot)
        print(f"wrote {args.plot}")
    for path, write in ((args.csv, table.write_csv), (args.json, table.write_json)):
        if path:
            write(path)
            print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# correlate


def _model_and_data(args: argparse.Namespace):
    """(model, name, batches): from a run directory, or a registered model with random weights."""
    if args.run_dir:
        if args.model:
            raise ValueError(f"give a MODEL ({args.model!r}) or --run ({args.run_dir!r}), not both")
        model, config, data = load_run_with_data(args.run_dir, args.which, args.batch_size, args.batches)
        return model, config.model, data
    if not args.model:
        raise ValueError("give a MODEL name or --run RUN_DIR")
    entry = model_entry(args.model)
    kwargs = {"small_input": True} if entry.has_small_input else {}
    channels, *spatial = entry.small_input_size
    torch.manual_seed(args.seed)
    if args.data == RANDOM:
        data = random_batches((args.batch_size, channels, *spatial), args.batches, args.seed)
        return create_model(args.model, **kwargs), args.model, data
    image_size = spatial[-1] if len(spatial) == 2 else None
    data, dataset = dataset_batches(args.data, args.batch_size, args.batches, image_size, args.data_dir)
    model = create_model(args.model, num_classes=dataset.num_classes, in_chans=dataset.in_chans, **kwargs)
    return model, args.model, data


def run_correlate(args: argparse.Namespace) -> int:
    model, name, data = _model_and_data(args)
    if args.list_layers:
        for layer_name, layer in conv_layers(model).items():
            print(f"{layer_name}: {layer.in_channels} -> {layer.out_channels}, groups {layer.groups}")
        return 0
    input_shape = (1, *data[0].shape[1:])
    if args.layers:
        first, second = args.layers
        match_spatial = args.match_spatial
    else:
        pair = default_pair(model, input_shape, name)
        first, second = pair.first, pair.second
        match_spatial = args.match_spatial or not pair.same_spatial_size
        print(f"layers: {first} -> {second} (the first adjacent pair whose second layer is grouped; "
              "choose with --layers FIRST SECOND)")
    correlation = layer_correlation(model, data, first, second, whiten=args.whiten, statistic=args.statistic,
                                    match_spatial=match_spatial, blocks=args.blocks)
    print(correlation.summary())
    correlation.draw(args.output)
    print(f"wrote {args.output}")
    filters = filter_correlation(model, second)
    print(filters.summary())
    if args.filters_output:
        filters.draw(args.filters_output)
        print(f"wrote {args.filters_output}")
    if args.json:
        write_json(args.json, {"model": name, "layers": correlation.to_dict(),
                               "filters": {"layer": second, "block_energy": filters.block_energy,
                                           "unstructured_energy": filters.unstructured_energy},
                               "matrix": correlation.matrix.tolist()})
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# draw


def run_draw_connections(args: argparse.Namespace) -> int:
    if args.model or args.layer:
        if not (args.model and args.layer):
            raise ValueError("--model and --layer go together: the conv layer LAYER of registered model MODEL")
        layer = find_layer(build_on_meta(args.model), args.layer, "--layer")
        size = draw_layer_connections(layer, args.output, args.layer, max_channels=args.max_channels)
    else:
        out_channels = args.out_channels or args.channels
        if args.kind == "family":
            layouts = standard_layouts(args.channels, out_channels, args.groups, args.shuffle_groups)
        else:
            groups = {"standard": 1, "depthwise": args.channels}.get(args.kind, args.groups)
            shuffle = (args.shuffle_groups or groups) if args.kind == "shuffled" else 1
            kernel = 1 if args.kind in ("pointwise", "shuffled") else 3
            layouts = [ConnectionLayout(args.channels, out_channels, groups, shuffle, kernel)]
        size = draw_connections(layouts, args.output)
    print(f"wrote {args.output} ({size[0]}x{size[1]} pixels)")
    return 0


def run_draw_filters(args: argparse.Namespace) -> int:
    if args.run_dir:
        if args.model:
            raise ValueError(f"give a MODEL ({args.model!r}) or --run ({args.run_dir!r}), not both")
        model, _ = load_run(args.run_dir, which=args.which)
    elif args.model:
        torch.manual_seed(args.seed)
        model = create_model(args.model)
    else:
        raise ValueError("give a MODEL name or --run RUN_DIR")
    size = draw_filters(model, args.output, args.layer)
    print(f"wrote {args.output} ({size[0]}x{size[1]} pixels)")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# report


def run_report(args: argparse.Namespace) -> int:
    page = report_run(args.run_dir, args.which, args.batch_size, args.batches, _ceilings(args), args.whiten)
    print(f"wrote {page}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add this package's subcommands; each sets `run=` to a function(args) -> exit code."""
    analyze = commands.add_parser(
        "analyze", help="per-layer cost table of a registered model: shapes, params, MACs, memory traffic, roofline",
        description="Per-layer cost of one forward pass, computed on the meta device (instant even for "
                    "ResNeXt-101). MACs = multiply-accumulates, FLOPs = 2 x MACs; traffic = bytes of inputs + "
                    "outputs + weights (ShuffleNet V2's memory access cost).")
    analyze.add_argument("model", help="registered model name (groupconv models lists them)")
    _add_input_options(analyze, batch_default=1)
    analyze.add_argument("--small-input", action="store_true",
                         help="analyse the model's small-input (32x32) variant")
    analyze.add_argument("--num-classes", type=int, default=None,
                         help="classifier outputs (default: the model's own, 1000 for ImageNet models)")
    analyze.add_argument("--dtype", choices=list(DTYPES), default="float32",
                         help="dtype for the traffic bytes (default: float32)")
    analyze.add_argument("--compute-only", action="store_true",
                         help="show only conv and linear rows in the terminal table (totals still count everything)")
    analyze.add_argument("--csv", metavar="PATH", help="also write the table as CSV (one row per layer call + TOTAL)")
    analyze.add_argument("--json", metavar="PATH", help="also write the table, totals and units as JSON")
    analyze.add_argument("--quiet", action="store_true", help="do not print the table (with --csv / --json)")
    _add_ceiling_options(analyze)
    analyze.set_defaults(run=_reported("analyze", run_analyze))

    profile = commands.add_parser(
        "profile", help="measured forward/backward time per layer next to its roofline floor, and a plot",
        description="Times every layer of a registered model (random weights and input) forward and backward "
                    "and divides by its roofline time: where the 1/G promise breaks on this machine.")
    profile.add_argument("model", help="registered model name")
    _add_input_options(profile, batch_default=8)
    profile.add_argument("--native-input", action="store_true",
                         help="use the model's native input size instead of its small (32x32) variant")
    profile.add_argument("--repeats", type=int, default=5, help="timed steps; medians are shown (default: 5)")
    profile.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    profile.add_argument("--threads", type=int, default=None,
                         help="torch threads (default: torch's choice; 1 gives steadier numbers on a shared machine)")
    profile.add_argument("--seed", type=int, default=0, help="seed of the weights and the input (default: 0)")
    profile.add_argument("--all-layers", action="store_true", help="show every layer, not just conv/linear ones")
    profile.add_argument("--plot", metavar="PNG", default="profile.png",
                         help="roofline and time-per-layer plot (default: profile.png; '' for none)")
    profile.add_argument("--csv", metavar="PATH", help="also write one row per layer as CSV")
    profile.add_argument("--json", metavar="PATH", help="also write the profile as JSON")
    _add_ceiling_options(profile)
    profile.set_defaults(run=_reported("profile", run_profile))

    correlate = commands.add_parser(
        "correlate", help="correlation between two adjacent layers' responses (Deep Roots) and between filters",
        description="Each pixel of each image is one sample of a layer's channel response. Reports how much "
                    "of the (optionally ZCA-whitened) cross-correlation lies in the group-diagonal blocks.")
    correlate.add_argument("model", nargs="?", help="registered model name (random weights); or use --run")
    correlate.add_argument("--run", dest="run_dir", metavar="RUN_DIR",
                           help="a training run directory: its model and test data")
    correlate.add_argument("--which", choices=("best", "last"), default="best",
                           help="checkpoint of the run (default: best)")
    correlate.add_argument("--data", default="random",
                           help="with MODEL: 'random' or a dataset name of groupconv.data (digits, mnist1d, ...) "
                                "(default: random)")
    correlate.add_argument("--data-dir", default=None, help="where a dataset on disk lives (cifar10, folder)")
    correlate.add_argument("--layers", nargs=2, metavar=("FIRST", "SECOND"),
                           help="the two conv layers (SECOND reads FIRST's output); default: the first pair "
                                "whose second layer is grouped")
    correlate.add_argument("--list-layers", action="store_true", help="list the conv layers and exit")
    correlate.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=True,
                           help="ZCA-whiten both layers' responses first, as Deep Roots (default: on)")
    correlate.add_argument("--statistic", choices=("correlation", "covariance"), default="correlation",
                           help="normalised correlation or raw covariance (default: correlation)")
    correlate.add_argument("--match-spatial", action="store_true",
                           help="average-pool the larger map when the two layers' maps differ in size")
    correlate.add_argument("--blocks", type=int, default=None,
                           help="measure against this many diagonal blocks instead of SECOND's groups "
                                "(e.g. for a dense model)")
    correlate.add_argument("--batch-size", type=int, default=32, help="inputs per batch (default: 32)")
    correlate.add_argument("--batches", type=int, default=4, help="batches of inputs (default: 4)")
    correlate.add_argument("--seed", type=int, default=0, help="seed of random weights and data (default: 0)")
    correlate.add_argument("--output", "-o", default="correlation.png", help="heatmap PNG (default: correlation.png)")
    correlate.add_argument("--filters-output", metavar="PNG", default=None,
                           help="also draw SECOND's filter-to-filter correlation here")
    correlate.add_argument("--json", metavar="PATH", help="also write the matrix and energies as JSON")
    correlate.set_defaults(run=_reported("correlate", run_correlate))

    draw = commands.add_parser("draw", help="pictures: channel connections of conv layers, first-layer filters")
    drawings = draw.add_subparsers(dest="drawing", required=True, metavar="DRAWING")
    connections = drawings.add_parser(
        "connections", help="lines between input and output channels, coloured by group",
        description="Without --model: the family figure (standard, grouped, pointwise grouped, shuffled, "
                    "depthwise) or one --kind. With --model and --layer: that layer (scaled down if large).")
    connections.add_argument("--kind", default="family",
                             choices=("family", "standard", "grouped", "pointwise", "shuffled", "depthwise"),
                             help="which conv to draw (default: family, all of them side by side)")
    connections.add_argument("--channels", type=int, default=12, help="input channels (default: 12)")
    connections.add_argument("--out-channels", type=int, default=None, help="output channels (default: --channels)")
    connections.add_argument("--groups", type=int, default=3, help="groups of the grouped convs (default: 3)")
    connections.add_argument("--shuffle-groups", type=int, default=None,
                             help="groups of the channel shuffle before a shuffled conv (default: --groups)")
    connections.add_argument("--model", help="a registered model, with --layer")
    connections.add_argument("--layer", help="a conv layer of --model (as in model.named_modules())")
    connections.add_argument("--max-channels", type=int, default=48,
                             help="with --layer: draw at most about this many channels a side (default: 48)")
    connections.add_argument("--output", "-o", default="connections.png", help="PNG (default: connections.png)")
    connections.set_defaults(run=_reported("draw", run_draw_connections))
    filters = drawings.add_parser("filters", help="grid of a conv layer's filters, bordered by group colour")
    filters.add_argument("model", nargs="?", help="registered model name (random weights); or use --run")
    filters.add_argument("--run", dest="run_dir", metavar="RUN_DIR", help="a training run directory: its trained model")
    filters.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint (default: best)")
    filters.add_argument("--layer", default=None, help="conv layer to draw (default: the first)")
    filters.add_argument("--seed", type=int, default=0, help="seed of random weights (default: 0)")
    filters.add_argument("--output", "-o", default="filters.png", help="PNG (default: filters.png)")
    filters.set_defaults(run=_reported("draw", run_draw_filters))

    report = commands.add_parser(
        "report", help="HTML report of a training run: curves, cost table, correlation maps, filters",
        description="Writes RUN_DIR/report/report.html with its PNGs and cost.csv.")
    report.add_argument("run_dir", help="a training run directory (config.json, metrics.csv, checkpoints)")
    report.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint (default: best)")
    report.add_argument("--batch-size", type=int, default=64, help="test inputs per batch (default: 64)")
    report.add_argument("--batches", type=int, default=4, help="batches of test inputs (default: 4)")
    report.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=True,
                        help="ZCA-whiten the responses of the correlation map (default: on)")
    _add_ceiling_options(report)
    report.set_defaults(run=_reported("report", run_report))
