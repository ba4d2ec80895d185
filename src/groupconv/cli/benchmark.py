"""`groupconv benchmark [SECTION ...]`: groupconv against torch, one section per module of groupconv.benchmarks."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from .. import environment, models
from ..ops.allocator import keep_freed_memory
from ..analysis import roofline
from ..benchmarks import batch_norm, dispatch, hidden_shapes, inference, inference_memory, triton
from ..benchmarks.layers import LAYER_HEADER, MAX_REPEATS, layer_benchmark, summarise_layers
from ..benchmarks.models import MODEL_BENCHMARK_DEFAULTS, MODEL_HEADER, model_benchmark
from ..benchmarks.results import write_csv
from ..benchmarks.same_flops import same_flops_benchmark, same_flops_pair
from ..benchmarks.shapes import ZOO_MODELS, zoo_layer_shapes
from ..benchmarks.shuffle import shuffle_cost
from ..benchmarks.sweep import group_sweep, plot_sweep
from ..distributed.benchmark import benchmark_group_parallel, format_benchmark

BENCHMARKS = ["layers", "sweep", "shuffle", "models", "same-flops"]  # run by default, in this order
# run only when named
NAMED_ONLY = ["dispatch", "batch-norm", "triton", "group-parallel", "inference", "inference-memory"]
SECTIONS = BENCHMARKS + NAMED_ONLY
BATCH, REPEATS = 32, 5  # the defaults of the BENCHMARKS sections
# group-parallel: AlexNet, the model the split comes from (Krizhevsky et al. 2012), on small inputs by default
GROUP_PARALLEL_MODELS, GROUP_PARALLEL_BATCH, GROUP_PARALLEL_STEPS, GROUP_PARALLEL_CLASSES = ["alexnet"], 8, 3, 10


def group_parallel_benchmark(names: list[str], group_parallel: int, batch: int, steps: int, image_size: int | None,
                             out: Path) -> None:
    """Each model trained in one process, with DDP and with its filters split over `group_parallel` processes:
    a table per model and group_parallel.csv (one row per model, way and rank)."""
    records = []
    for name in names:
        entry = models.model_entry(name)
        options = {"num_classes": GROUP_PARALLEL_CLASSES, **({"small_input": True} if entry.has_small_input else {})}
        input_size = (entry.input_size[0], image_size, image_size) if image_size else None
        measurements = benchmark_group_parallel(name, group_parallel, batch, input_size, options, steps=steps)
        print(f"\n{name}, global batch {batch}, median of {steps} steps")
        print(format_benchmark(measurements))
        records += [{"model": name, **{key: value for key, value in dataclasses.asdict(m).items()
                                       if key not in ("collectives", "records")}} for m in measurements]
    write_csv(out / "group_parallel.csv", records)


def run_benchmark(args: argparse.Namespace) -> int:
    """groupconv against torch: machine ceilings, zoo layers, the group sweep, whole models; tables, CSV, plot."""
    for option in ("batch", "repeats", "rounds", "group_parallel", "hidden_shapes"):
        value = getattr(args, option)
        if value is not None and value < 1:
            args.parser.error(f"--{option.replace('_', '-')}={value} must be at least 1")
    if args.models:  # (names separated by spaces or commas)
        args.models = [name for item in args.models for name in item.split(",") if name]
    unknown = [name for name in args.models or () if not models.is_model(name)]
    if unknown:
        args.parser.error(f"--models: unknown model(s) {', '.join(unknown)}; see `groupconv models`")
    what = args.what or BENCHMARKS
    for name in what:
        if name not in SECTIONS:
            args.parser.error(f"{name!r} is not a benchmark: choose from {', '.join(SECTIONS)}")
    if args.hidden_shapes and "layers" not in what:
        args.parser.error(f"--hidden-shapes={args.hidden_shapes} draws layer shapes: name the layers section")
    group_parallel_batch = args.batch or GROUP_PARALLEL_BATCH
    if "group-parallel" in what and group_parallel_batch % args.group_parallel:
        args.parser.error(f"group-parallel: --batch={group_parallel_batch} must divide by --group-parallel="
                          f"{args.group_parallel} (the DDP side splits the batch)")
    zoo = args.models or list(ZOO_MODELS)
    pair = same_flops_pair(zoo)
    if "same-flops" in args.what and pair is None:
        args.parser.error(f"same-flops needs a ShuffleNet g=8 and the g=1 of its width in --models, got "
                          f"{' '.join(zoo)}")
    if args.device != "cpu":
        if args.device != "cuda" or not torch.cuda.is_available():
            args.parser.error(f"--device={args.device}: only cpu, or cuda where torch sees a CUDA GPU "
                              f"(torch.cuda.is_available() is {torch.cuda.is_available()})")
        if set(what) != {"models"}:
            args.parser.error(f"--device={args.device} times whole models only (`groupconv benchmark models`); "
                              "`groupconv benchmark triton` times the layers on a GPU")
    batch_sizes = _batch_sizes(args)
    out = Path(args.out)
    kept = args.keep_memory and keep_freed_memory()
    batch, repeats = args.batch or BATCH, args.repeats or REPEATS
    if set(what) & set(BENCHMARKS):
        print(f"groupconv benchmark: {torch.get_num_threads()} threads, batch {batch}, median of {repeats} "
              f"runs (layers: more where short, up to {MAX_REPEATS}), float32, freed memory "
              f"{'kept for reuse' if kept else 'returned to the system'} (both sides); "
              f"results in {out}/")
    if "layers" in what and args.hidden_shapes:
        shapes = hidden_shapes.hidden_shapes(args.hidden_shapes, args.seed)
        print(f"\n{len(shapes)} random grouped/depthwise/pointwise-grouped layers not in the zoo (seed {args.seed}), "
              f"each with its own batch, every problem tuned afresh (ms; CL = channels_last; ratios: torch's time "
              f"over groupconv's, best = each in its faster layout)")
        print(hidden_shapes.HEADER)
        results = hidden_shapes.hidden_shapes_benchmark(shapes, repeats, not args.forward_only)
        print(hidden_shapes.summarise(results))
        write_csv(out / "hidden_shapes.csv", [r.record() for r in results])
    elif "layers" in what:
        ceilings = roofline.machine_ceilings(args.peak_gflops, args.bandwidth_gbs)
        print(f"ceilings: {ceilings.source}")
        shapes = zoo_layer_shapes(zoo)[: args.limit]
        print(f"\n{len(shapes)} distinct grouped/depthwise/pointwise-grouped layers of {', '.join(zoo)} "
              f"(ms; CL = channels_last input; xfloor = best groupconv time / roofline floor)")
        print(LAYER_HEADER)
        results = layer_benchmark(shapes, batch, repeats, not args.forward_only, ceilings)
        print(summarise_layers(results))
        write_csv(out / "layers.csv", [r.record() for r in results])
    if "sweep" in what:
        print("\nOne 256->256 conv at 28x28, forward+backward, G = 1 ... 256 (depthwise):")
        points = group_sweep(batch=batch, repeats=repeats)
        write_csv(out / "sweep.csv", [vars(p) for p in points])
        plot_sweep(points, out / "sweep.png")
    if "shuffle" in what:
        print("\nThe channel shuffle's cost: a ShuffleNet unit with and without it, forward+backward")
        results = shuffle_cost(batch=batch, repeats=repeats)
        write_csv(out / "shuffle.csv", [{**vars(r), "groupconv_overhead": round(r.groupconv_overhead, 4),
                                         "torch_overhead": round(r.torch_overhead, 4)} for r in results])
    if "models" in what:
        print("\nWhole models: groupconv's layers against the same model from plain torch.nn layers")
        print(MODEL_HEADER)
        names = [name for name in zoo if name in MODEL_BENCHMARK_DEFAULTS] or zoo
        results = model_benchmark(names, batch, repeats, args.image_size, device=args.device)
        print("(vs NCHW: groupconv in its faster layout over torch NCHW; vs best: over torch in its faster layout)")
        write_csv(out / "models.csv", [r.record() for r in results])
    if "same-flops" in what and pair is not None:  # (by default, where --models holds such a pair)
        print("\nSame FLOPs: ShuffleNet g=8 trained with groupconv against stock torch's g=1")
        result = same_flops_benchmark(*pair, batch, args.rounds, args.image_size)
        write_csv(out / "same_flops.csv", [vars(result)])
    if "dispatch" in what:
        print("\nDispatch: groupconv's per-call cost and a few layers, against torch")
        dispatch.dispatch_benchmark(args.batch or dispatch.BATCH, args.repeats or dispatch.REPEATS)
    if "batch-norm" in what:
        print("\nBatch norm: groupconv's fused BN (+ residual) (+ ReLU) against torch's separate ops")
        batch_norm.batch_norm_benchmark(args.models or batch_norm.DEFAULT_MODELS, args.batch or batch_norm.BATCH,
                                        args.repeats or batch_norm.REPEATS, args.min_values)
    if "triton" in what:
        print("\nTriton: the triton backend against cuDNN on the zoo's layers")
        triton.triton_benchmark(zoo, args.batch or triton.BATCH, args.dtype, args.forward_only)
    if "group-parallel" in what:
        print(f"\nGroup parallelism: filters split over {args.group_parallel} processes (Krizhevsky et al. 2012) "
              f"against one process and DDP over as many, on spawned CPU processes (gloo); per rank, the rank "
              f"that limits the run")
        group_parallel_benchmark(args.models or GROUP_PARALLEL_MODELS, args.group_parallel, group_parallel_batch,
                                 args.repeats or GROUP_PARALLEL_STEPS, args.image_size, out)
    if "inference" in what:
        inference_section(args.models or list(inference.INFERENCE_MODELS), batch_sizes,
                          args.repeats or inference.REPEATS, args.image_size,
                          roofline.machine_ceilings(args.peak_gflops, args.bandwidth_gbs), out)
    if "inference-memory" in what:
        inference_memory_section(args.models or list(inference.INFERENCE_MODELS), batch_sizes, args.image_size, out)
    return 0


def _batch_sizes(args: argparse.Namespace) -> tuple[int, ...]:
    """--batch-sizes as ints (inference's default where not given); a parser error naming the option otherwise."""
    if args.batch_sizes is None:
        return tuple(inference.BATCH_SIZES)
    try:
        sizes = tuple(int(size) for size in args.batch_sizes.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(size < 1 for size in sizes):
        args.parser.error(f"--batch-sizes={args.batch_sizes!r} must be positive integers separated by commas, "
                          "e.g. 1,32")
    return sizes


def inference_section(names: list[str], batch_sizes: tuple[int, ...], repeats: int, image_size: int | None,
                      ceilings: roofline.MachineCeilings, out: Path) -> None:
    """Eval-mode forwards of each model at each batch size, up to seven ways in alternation: a table per model and
    batch, inference.csv (one row per model, batch and way)."""
    print(f"\nInference: eval-mode forwards, {torch.get_num_threads()} threads, median of {repeats} runs in "
          f"alternation; vs ORT = time over ONNX Runtime's (below 1: faster); of peak = the model's FLOPs per "
          f"second as a fraction of the compute ceiling ({ceilings.source}); each way in a process of its own; "
          f"OpenMP: {environment.openmp_wait}")
    results = inference.inference_benchmark(names, batch_sizes, repeats, image_size,
                                            progress=lambda result: print(inference.format_result(result, ceilings)))
    print("\n" + inference.summary(results))
    write_csv(out / "inference.csv", [record for result in results for record in result.records(ceilings)])


def inference_memory_section(names: list[str], batch_sizes: tuple[int, ...], image_size: int | None,
                             out: Path) -> None:
    """Peak memory of loading and running each model at each batch size, each way in a process of its own: a table
    per model and batch, inference_memory.csv (one row per model, batch and way)."""
    print(f"\nInference memory: peak resident memory of loading the model and running {inference_memory.REPEATS} "
          f"forwards (peak), and of the forwards after the first (steady), each way in a process of its own, over "
          f"that process's memory before; vs ORT = over ONNX Runtime's (below 1: less)")
    results = inference_memory.inference_memory_benchmark(names, batch_sizes, image_size,
                                                          progress=lambda result: print(
                                                              inference_memory.format_result(result)))
    write_csv(out / "inference_memory.csv", [record for result in results for record in result.records()])


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add benchmark; it sets `run=` to a function(args) -> exit code."""
    bench = commands.add_parser("benchmark", help="time groupconv against torch on the zoo's layers and models")
    # No argparse `choices`: Python 3.11 checks an empty nargs="*" list against them and refuses it.
    bench.add_argument("what", nargs="*", metavar="{" + ",".join(SECTIONS) + "}",
                       help=f"which to run (default: all of {' '.join(BENCHMARKS)}; {', '.join(NAMED_ONLY)} run "
                            "only when named)")
    bench.add_argument("--models", nargs="+", default=None, metavar="NAME",
                       help=f"models (separated by spaces or commas) whose layers (and which whole models) to time (default: {' '.join(ZOO_MODELS)}; "
                            f"batch-norm: {' '.join(batch_norm.DEFAULT_MODELS)}; group-parallel: "
                            f"{' '.join(GROUP_PARALLEL_MODELS)})")
    bench.add_argument("--batch", type=int, default=None,
                       help=f"batch size (default: {BATCH}, dispatch: {dispatch.BATCH}; "
                            f"group-parallel: the global batch, {GROUP_PARALLEL_BATCH})")
    bench.add_argument("--batch-sizes", default=None, metavar="B1,B2",
                       help="inference, inference-memory: batch sizes, separated by commas (default: "
                            f"{','.join(map(str, inference.BATCH_SIZES))})")
    bench.add_argument("--repeats", type=int, default=None,
                       help=f"timed runs per measurement (layers: at least this many, more for short ones); the median "
                            f"is kept (default: {REPEATS}; dispatch and batch-norm: {dispatch.REPEATS}; group-parallel: "
                            f"training steps, {GROUP_PARALLEL_STEPS})")
    bench.add_argument("--rounds", type=int, default=11,
                       help="same-flops: rounds of the train steps in alternation; the ratio's median and quartiles "
                            "over them are kept (default: 11)")
    bench.add_argument("--limit", type=int, default=None, help="time only the first N distinct layers")
    bench.add_argument("--hidden-shapes", type=int, default=None, metavar="N",
                       help="layers: time N random layer shapes that the zoo does not have, each with its own batch, "
                            "tuned afresh, instead of the zoo's layers")
    bench.add_argument("--seed", type=int, default=0,
                       help="layers --hidden-shapes: which shapes are drawn (default: 0)")
    bench.add_argument("--forward-only", action="store_true", help="layers, triton: skip forward+backward")
    bench.add_argument("--image-size", type=int, default=None, help="models, group-parallel: input size (default: each model's own; group-parallel: "
                            "its small-input variant's where it has one)")
    bench.add_argument("--peak-gflops", type=float, default=None, help="compute ceiling (default: measured now)")
    bench.add_argument("--bandwidth-gbs", type=float, default=None, help="memory ceiling (default: measured now)")
    bench.add_argument("--keep-memory", action=argparse.BooleanOptionalAction, default=True,
                       help="keep freed CPU memory for reuse (groupconv.ops.allocator), for groupconv and torch alike; "
                            "--no-keep-memory measures glibc's default, a page fault per large tensor (default: on)")
    bench.add_argument("--device", default="cpu", help="models: cpu, or cuda to train and infer on the GPU (default: cpu)")
    bench.add_argument("--dtype", choices=list(triton.DTYPES), default="float32", help="triton: dtype (default: float32)")
    bench.add_argument("--min-values", type=int, default=None,
                       help="batch-norm: run the fused op from this many values up (default: the library's "
                            "NATIVE_MIN_VALUES); 0 times it on every shape, to place that threshold")
    bench.add_argument("--group-parallel", type=int, default=2, metavar="P",
                       help="group-parallel: processes the filters are split over, and DDP's processes (default: 2)")
    bench.add_argument("--out", default="benchmark-results", help="directory for CSV files and the sweep plot")
    bench.set_defaults(run=run_benchmark, parser=bench)
