"""Group parallelism against one process and against data parallelism (DDP): memory and time per rank, and the bytes
each collective moves, measured on spawned CPU processes in a gloo process group.

Three ways to train one model on one global batch of B images:
- one process: the whole model, the whole batch;
- DDP over P processes: the whole model on each, B / P images each, gradients all-reduced;
- group parallelism over P processes: 1/P of every layer's channels on each, all B images each.

Per rank: parameter bytes; activation bytes (what the forward saves for backward, parameters excluded); peak bytes
(the most that tensors held at one time during one whole step, forward, backward and optimizer step, counted by
groupconv's native allocator hook when it is built, above what existed before the step); the median step time; and
the bytes this rank receives per step from collectives (group parallelism: each layer's all-gathers and all-to-alls,
forward and backward; DDP: the ring all-reduce of the gradients, 2 (P - 1) / P of their bytes).

`benchmark_group_parallel(...)` runs the three and returns their measurements; `format_benchmark` prints them.
Timings on a shared machine are only indicative: run it alone for numbers to quote.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from .. import models
from ..models.common import check_positive_int
from ..ops.tuning import can_measure, peak_allocated_bytes
from .collectives import CollectiveRecord, record_collectives
from .launch import run_ranks
from .sharding import parallelize_groups

MODES = ("one process", "DDP", "group parallel")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class RankMeasurement:
    mode: str
    rank: int
    ranks: int
    batch_size: int  # images this rank computes per step
    parameter_bytes: int
    activation_bytes: int
    peak_bytes: int | None  # None: the native module (the counting allocator) is not built
    step_seconds: float  # median over the timed steps
    collective_bytes: int  # received by this rank per step, forward and backward
    collectives: dict[str, int] = field(default_factory=dict)  # the same, per kind of collective
    records: tuple[CollectiveRecord, ...] = ()  # the same, per layer and collective (group parallelism)


def _saved_activation_bytes(model: torch.nn.Module, run_forward) -> int:
    """Bytes of the distinct tensors the forward saves for backward, parameters excluded."""
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run_forward()
    return sum(storages.values())


def _peak_bytes(step) -> int | None:
    """Peak bytes held during one step, or None where the counting allocator is not built."""
    return peak_allocated_bytes(step) if can_measure() else None


def _measure_modes(rank: int, world_size: int, one_process_threads: int | None, *arguments) -> list[RankMeasurement]:
    """On P processes: one process on rank 0 (the others wait), then DDP, then group parallelism on all of them."""
    threads = torch.get_num_threads()
    measurements = []
    if rank == 0:
        torch.set_num_threads(one_process_threads or threads * world_size)
        measurements.append(_measure(rank, 1, "one process", *arguments))
        torch.set_num_threads(threads)
    dist.barrier()
    for mode in MODES[1:]:
        measurements.append(_measure(rank, world_size, mode, *arguments))
    return measurements


def _measure(rank: int, world_size: int, mode: str, model_name: str, model_options: dict, input_size: tuple,
             batch_size: int, dtype_name: str, steps: int, warmup: int) -> RankMeasurement:
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    model = models.create_model(model_name, **model_options).to(dtype)
    local_batch = batch_size // world_size if mode == "DDP" else batch_size
    if mode == "group parallel":
        parallelize_groups(model)
    elif mode == "DDP":
        model = DistributedDataParallel(model)
    parameters = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch.manual_seed(1 + (rank if mode == "DDP" else 0))
    inputs = torch.randn(local_batch, *input_size, dtype=dtype)
    targets = torch.randint(0, model_options.get("num_classes", 10), (local_batch,))

    def forward():
        return F.cross_entropy(model(inputs), targets)

    def step():
        optimizer.zero_grad(set_to_none=True)
        forward().backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    with record_collectives() as records:
        step()
    activations = _saved_activation_bytes(model, forward)
    optimizer.zero_grad(set_to_none=True)
    peak = _peak_bytes(step)
    times = []
    for _ in range(steps):
        if world_size > 1:
            dist.barrier()  # (all ranks start each step together; a step ends with the slowest rank's collectives)
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    by_kind: dict[str, int] = {}
    for record in records:
        by_kind[record.kind] = by_kind.get(record.kind, 0) + record.forward_bytes + record.backward_bytes
    if mode == "DDP" and world_size > 1:
        by_kind["all-reduce of gradients"] = 2 * (world_size - 1) * parameters // world_size
    return RankMeasurement(mode, rank, world_size, local_batch, parameters, activations, peak,
                           statistics.median(times), sum(by_kind.values()), by_kind, tuple(records))


def benchmark_group_parallel(model_name: str, group_parallel: int = 2, batch_size: int = 8,
                             input_size: tuple[int, int, int] | None = None, model_options: dict | None = None,
                             dtype: str = "float32", steps: int = 3, warmup: int = 1, timeout: float = 600.0,
                             one_process_threads: int | None = None) -> list[RankMeasurement]:
    """Measure `model_name` trained on batches of `batch_size` in one process, with DDP over `group_parallel`
    processes and with group parallelism over as many (one spawned group of `group_parallel` processes runs all three:
    one process on its rank 0 with all the machine's CPU threads, then DDP and group parallelism with threads = cores /
    processes each). Returns every rank's measurement, one process first. `input_size` defaults to the model's small
    input where model_options asks for it (small_input=True), else its own. `one_process_threads` overrides the one
    process's threads: on a machine shared with other work, OpenMP threads that wait for each other at every
    parallel region can make one process with all cores several times slower than with one (measured: 4x on 2
    busy cores), which a comparison per core avoids."""
    entry = models.model_entry(model_name)
    model_options = dict(model_options or {})
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {tuple(DTYPES)}")
    for name, value in (("group_parallel", group_parallel), ("batch_size", batch_size), ("steps", steps)):
        check_positive_int(value, name)
    if one_process_threads is not None:
        check_positive_int(one_process_threads, "one_process_threads")
    if batch_size % group_parallel:
        raise ValueError(f"batch_size={batch_size} must divide by group_parallel={group_parallel} (DDP splits it)")
    if input_size is None:
        input_size = entry.small_input_size if model_options.get("small_input") else entry.input_size
    per_rank = run_ranks(_measure_modes, group_parallel, (one_process_threads, model_name, model_options,
                                                          tuple(input_size), batch_size, dtype, steps, warmup),
                         timeout=timeout, process_group_timeout=timeout)
    return sorted((m for measurements in per_rank for m in measurements), key=lambda m: (MODES.index(m.mode), m.rank))


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def format_benchmark(measurements: list[RankMeasurement]) -> str:
    """One line per mode: the largest per-rank figures (the rank that limits the run), and each against one
    process."""
    lines = [f"{'mode':<15} {'ranks':>5} {'batch/rank':>10} {'params MiB':>10} {'activ. MiB':>10} {'peak MiB':>9} "
             f"{'step ms':>8} {'comm MiB/step':>13}"]
    baseline = None
    for mode in MODES:
        rows = [m for m in measurements if m.mode == mode]
        if not rows:
            continue
        peaks = [row.peak_bytes for row in rows]
        worst = RankMeasurement(mode, 0, rows[0].ranks, rows[0].batch_size,
                                max(row.parameter_bytes for row in rows), max(row.activation_bytes for row in rows),
                                None if None in peaks else max(peaks), max(row.step_seconds for row in rows),
                                max(row.collective_bytes for row in rows))
        baseline = baseline or worst
        lines.append(f"{mode:<15} {worst.ranks:>5} {worst.batch_size:>10} {_mib(worst.parameter_bytes):>10} "
                     f"{_mib(worst.activation_bytes):>10} {_mib(worst.peak_bytes):>9} "
                     f"{worst.step_seconds * 1e3:>8.1f} {_mib(worst.collective_bytes):>13}")
        if worst is not baseline:
            ratios = [f"params {worst.parameter_bytes / baseline.parameter_bytes:.2f}x",
                      f"activations {worst.activation_bytes / max(1, baseline.activation_bytes):.2f}x",
                      f"step time {worst.step_seconds / baseline.step_seconds:.2f}x"]
            if worst.peak_bytes is not None and baseline.peak_bytes:
                ratios.insert(2, f"peak {worst.peak_bytes / baseline.peak_bytes:.2f}x")
            lines.append(f"{'':<15} vs one process: " + ", ".join(ratios))
        kinds: dict[str, int] = {}
        for row in rows:
            for kind, value in row.collectives.items():
                kinds[kind] = max(kinds.get(kind, 0), value)
        if kinds:
            lines.append(f"{'':<15} per rank per step: " + ", ".join(f"{kind} {_mib(value)} MiB"
                                                                     for kind, value in kinds.items()))
    return "\n".join(lines)
