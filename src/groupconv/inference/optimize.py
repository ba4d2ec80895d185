"""optimize_for_inference: a model prepared once for fast eval-mode forwards on the CPU.

The steps, each kept because it measured faster (docs/inference.md has the numbers):

1. The model is traced into a torch.fx graph (tracing.py; parts that do not trace run as they were).
2. Every batch norm that reads a conv's output alone is folded into that conv (folding.py).
3. A channel shuffle read by a depthwise conv moves to the 1x1 conv after it, whose kernel makes it by the order of
   its reads (shuffles.py).
4. Every groupconv conv layer becomes a PlannedConv: the dispatcher's choice for the example input's shapes is made
   now, and each call runs the chosen kernel directly. Pooling and linear layers (torch.nn.MaxPool2d, AvgPool2d and
   Linear) likewise run the faster of torch's kernel and groupconv's (PlannedPool, PlannedLinear).
5. Weights and activations stay channels_last, the input converted once (an image that only planned convs read is
   left as it comes: the first conv's kernel reads either layout); forwards run under torch.inference_mode.
6. Each input signature runs on torch's threads or on one, whichever its first forwards measure faster, and then as
   a straight-line program that calls each planned layer's chosen kernel directly (programs.py).
7. The process keeps freed memory for the next allocations (groupconv.ops.allocator), as ONNX Runtime's and
   OpenVINO's arenas do: a forward's large tensors then cost no page faults after the first call.

The result is checked against the eval-mode model on the example input; a graph whose output differs (a model whose
traced graph would not be the same computation) is dropped for the model as it was.
"""

from __future__ import annotations

import copy
import warnings
from typing import Sequence

import torch
from torch import fx

from .. import environment
from ..nn.base import GroupedConvMixin
from ..ops.allocator import keep_freed_memory as keep_freed_memory_in_process, release_free_memory
from ..ops.tuning.timing import median_seconds_interleaved
from .folding import fold_batch_norms
from .layers import FEW_CHANNELS, ConvEpilogue, PlannedConv, PlannedLinear, PlannedPool
from .programs import straight_line_program
from .shuffles import move_shuffles_to_pointwise_reads
from .tracing import trace

# The check against the eval-mode model: folding reorders float32 arithmetic (rounding only), so the outputs agree
# to a few float32 ulps of their magnitude; a wrong graph differs at the scale of the values themselves.
CHECK_RELATIVE_TOLERANCE = 1e-3
# Choosing the thread count of an input signature: timed forwards per count, and how much faster one thread must be.
THREAD_CHOICE_REPEATS = 5
THREAD_CHOICE_MARGIN = 0.9


class InferenceModel(torch.nn.Module):
    """An eval-mode model prepared by optimize_for_inference. Call it like the model (same arguments, same outputs
    within float32 rounding). Its outputs are inference tensors (torch.inference_mode): they carry no autograd
    history and cannot be used in autograd later. Its kernels read weights packed when each input signature was
    first seen: to change the weights, change the model and optimise it again.

    `folded_batch_norms`: how many BNs were folded into their convs; `moved_shuffles`: how many channel shuffles
    moved from a depthwise conv to the 1x1 conv after it; `traced`: whether the model traced into a graph (else it
    runs as it was, in the chosen layout and inference mode); `opaque_modules`: the submodules left as they were
    because they did not trace; `threads_chosen`: per input signature (the tensors' shapes, dtypes and devices and
    torch's thread count), the threads its forwards run on; `inputs_as_they_come`: the names of the forward's
    arguments left in their layout (read only by planned convs, which take any)."""

    def __init__(self, model: torch.nn.Module, memory_format: torch.memory_format, traced: bool,
                 folded_batch_norms: int, opaque_modules: Sequence[str], moved_shuffles: int = 0,
                 choose_threads: bool = True, input_names: Sequence[str] = (),
                 inputs_as_they_come: Sequence[str] = ()):
        super().__init__()
        self.input_names = tuple(input_names)  # the forward's argument names, in order (where the model traced)
        self.inputs_as_they_come = frozenset(inputs_as_they_come)
        self.model = model
        self.memory_format = memory_format
        self.traced = traced
        self.folded_batch_norms = folded_batch_norms
        self.moved_shuffles = moved_shuffles
        self.opaque_modules = tuple(opaque_modules)
        self.choose_threads = choose_threads
        self.threads_chosen: dict[tuple, int] = {}
        # Per input signature: its threads and its straight-line program (programs.py).
        self._programs: dict[tuple, tuple[int, torch.nn.Module]] = {}

    def _converted(self, value, name: str | None):
        if (isinstance(value, torch.Tensor) and value.dim() == 4 and self.memory_format != torch.contiguous_format
                and name not in self.inputs_as_they_come):
            return value.contiguous(memory_format=self.memory_format)
        return value

    def forward(self, *args, **kwargs):
        names = self.input_names
        args = [self._converted(a, names[i] if i < len(names) else None) for i, a in enumerate(args)]
        kwargs = {key: self._converted(value, key) for key, value in kwargs.items()}
        available = torch.get_num_threads()
        key = (*(_signature(value) for value in args), *((k, _signature(v)) for k, v in kwargs.items()), available)
        with torch.inference_mode():
            entry = self._programs.get(key)
            if entry is None:
                threads = available
                if self.choose_threads and available > 1:
                    threads = self.threads_chosen[key] = self._fastest_threads(args, kwargs, available)
                    release_free_memory()  # (what the timed forwards left free: see optimize_for_inference's end)
                # A forward on the chosen threads leaves each planned layer's plan for this signature as its last.
                output = _on_threads(threads, lambda: self.model(*args, **kwargs))
                program = straight_line_program(self.model) if self.traced else self.model
                self._programs[key] = (threads, program)
                return output
            threads, program = entry
            return _on_threads(threads, lambda: program(*args, **kwargs))

    def __getstate__(self):
        # The programs call the kernels of this model's layers: a copy plans its own.
        return {**super().__getstate__(), "_programs": {}}

    def _fastest_threads(self, args, kwargs, available: int) -> int:
        """All of torch's threads or one: at batch 1 a forward's layers are small (tens of microseconds each), and
        waking a second thread for each can cost more than it brings. Timed in alternation, after a warm-up that
        lets each thread count choose its kernels."""
        runs = {threads: (lambda threads=threads: _on_threads(threads, lambda: self.model(*args, **kwargs)))
                for threads in (available, 1)}
        seconds = median_seconds_interleaved(runs, repeats=THREAD_CHOICE_REPEATS, warmup=2)
        # (more threads kept unless one is clearly faster: timing noise should not halve a large batch's speed)
        return 1 if seconds[1] < THREAD_CHOICE_MARGIN * seconds[available] else available

    def extra_repr(self) -> str:
        return (f"traced={self.traced}, folded_batch_norms={self.folded_batch_norms}, "
                f"moved_shuffles={self.moved_shuffles}, memory_format={self.memory_format}, "
                f"threads_chosen={sorted(set(self.threads_chosen.values()))}")


def _signature(value) -> tuple | type:
    return (tuple(value.shape), value.dtype, value.device) if isinstance(value, torch.Tensor) else type(value)


def _on_threads(threads: int, run):
    """run() on `threads` of torch's threads (the count set back after)."""
    previous = torch.get_num_threads()
    if threads == previous:
        return run()
    torch.set_num_threads(threads)
    try:
        return run()
    finally:
        torch.set_num_threads(previous)


def _check_arguments(model, example_inputs, channels_last, fold_batch_norm, plan_convs, choose_threads,
                     keep_freed_memory) -> tuple:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if (not isinstance(inputs, tuple | list) or not inputs
            or not all(isinstance(value, torch.Tensor) for value in inputs)):
        raise TypeError(f"example_inputs must be a tensor or a non-empty tuple of tensors (the model's positional "
                        f"arguments), got {type(example_inputs).__name__}")
    for name, value in (("channels_last", channels_last), ("fold_batch_norm", fold_batch_norm),
                        ("plan_convs", plan_convs), ("choose_threads", choose_threads),
                        ("keep_freed_memory", keep_freed_memory)):
        if not isinstance(value, bool):
            raise TypeError(f"{name}={value!r} must be a bool")
    return tuple(inputs)


def _plan_convs(graph_module: fx.GraphModule, opaque_modules: set[str]) -> None:
    """Every groupconv conv layer the graph calls becomes a PlannedConv (in place), taking in the epilogue of a BN
    folded into it (ConvEpilogue: its ReLU, residual and concat) where the conv's output goes there alone."""
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or node.target in opaque_modules:
            continue
        module = graph_module.get_submodule(node.target)
        if not isinstance(module, GroupedConvMixin) or len(node.args) != 1 or node.kwargs:
            continue
        relu = False
        (user,) = node.users if len(node.users) == 1 else (None,)
        if (user is not None and user.op == "call_module" and user.args[0] is node
                and isinstance(graph_module.get_submodule(user.target), ConvEpilogue)):
            # The epilogue's node becomes the conv's call (it comes after everything both read).
            relu = graph_module.get_submodule(user.target).relu
            graph_module.delete_submodule(user.target)
            user.target, user.args = node.target, (node.args[0], *user.args[1:])
            graph_module.graph.erase_node(node)
        parent, _, name = node.target.rpartition(".")
        setattr(graph_module.get_submodule(parent), name, PlannedConv(module, relu))
    graph_module.graph.lint()
    graph_module.recompile()


# The layers whose forward PlannedPool and PlannedLinear take over: these classes exactly (a subclass may change
# what its forward does).
_PLANNED_LAYERS = {torch.nn.MaxPool2d: PlannedPool, torch.nn.AvgPool2d: PlannedPool,
                   torch.nn.Linear: PlannedLinear}


def _plan_pools_and_linears(graph_module: fx.GraphModule, opaque_modules: set[str]) -> None:
    """Every torch.nn.MaxPool2d, AvgPool2d and Linear the graph calls becomes a PlannedPool or PlannedLinear (in
    place)."""
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or node.target in opaque_modules or len(node.args) != 1 or node.kwargs:
            continue
        module = graph_module.get_submodule(node.target)
        planned = _PLANNED_LAYERS.get(type(module))
        if planned is not None:
            parent, _, name = node.target.rpartition(".")
            setattr(graph_module.get_submodule(parent), name, planned(module))


def _inputs(graph_module: fx.GraphModule, example_inputs: Sequence) -> tuple[list[str], list[str]]:
    """The graph's inputs (its forward's argument names, in order), and those left in the layout they come in: an
    image (at most FEW_CHANNELS channels in `example_inputs`) that only planned convs read, whose first-layer kernel
    reads either layout, is not converted to channels_last first."""
    names, as_they_come = [], []
    for node in graph_module.graph.nodes:
        if node.op != "placeholder":
            continue
        names.append(node.target)
        example = example_inputs[len(names) - 1] if len(names) <= len(example_inputs) else None
        if not (isinstance(example, torch.Tensor) and example.dim() == 4 and example.shape[1] <= FEW_CHANNELS):
            continue
        if node.users and all(user.op == "call_module" and user.args and user.args[0] is node
                              and node not in user.args[1:] and node not in user.kwargs.values()
                              and isinstance(graph_module.get_submodule(user.target), PlannedConv)
                              for user in node.users):
            as_they_come.append(node.target)
    return names, as_they_come


def _same_outputs(expected, actual) -> bool:
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor) or expected.shape != actual.shape:
            return False
        scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
        return bool((expected - actual).abs().max() <= CHECK_RELATIVE_TOLERANCE * scale) if expected.numel() else True
    if isinstance(expected, tuple | list):
        return (isinstance(actual, tuple | list) and len(expected) == len(actual)
                and all(_same_outputs(e, a) for e, a in zip(expected, actual)))
    if isinstance(expected, dict):
        return (isinstance(actual, dict) and expected.keys() == actual.keys()
                and all(_same_outputs(expected[k], actual[k]) for k in expected))
    return True


def optimize_for_inference(model: torch.nn.Module, example_inputs, *, channels_last: bool = True,
                           fold_batch_norm: bool = True, plan_convs: bool = True,
                           choose_threads: bool = True, keep_freed_memory: bool = True) -> InferenceModel:
    """An eval-mode copy of `model` prepared for fast forwards (the module docstring lists the steps); `model`
    itself is not changed.

    model: any torch.nn.Module (a zoo model, a torch model after groupconv.accelerate(), one's own); parts that
        torch.fx cannot trace run as they were.
    example_inputs: a tensor, or a tuple of the forward's positional tensors, of the shapes to expect: the conv
        backends are chosen for them (other shapes work too, their choice made on first use) and the result is
        checked against the eval-mode model on them.
    channels_last, fold_batch_norm, plan_convs: each step can be turned off (to measure what it brings).
    choose_threads: on each new input signature, time the forward on torch's threads and on one, and keep the faster
        (off: always torch's threads).
    keep_freed_memory: keep freed memory in this process for the next allocations (the process's resident memory
        stays at its peak, as with ONNX Runtime's arena; off, or GROUPCONV_KEEP_FREED_MEMORY=0: malloc's default,
        which hands large blocks back to the system and pays page faults to take them again).
    """
    inputs = _check_arguments(model, example_inputs, channels_last, fold_batch_norm, plan_convs, choose_threads,
                              keep_freed_memory)
    _warn_if_workers_sleep()
    if keep_freed_memory:
        keep_freed_memory_in_process()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    reference = copy.deepcopy(model).eval()
    prepared = copy.deepcopy(model).eval().requires_grad_(False)
    traced = trace(prepared)
    folded, moved, opaque = 0, 0, set()
    if traced is not None:
        prepared, opaque = traced
        if fold_batch_norm:
            folded = fold_batch_norms(prepared)
        if plan_convs:
            moved = move_shuffles_to_pointwise_reads(prepared)
            _plan_convs(prepared, opaque)
            _plan_pools_and_linears(prepared, opaque)
    prepared = prepared.to(memory_format=memory_format)
    input_names, as_they_come = _inputs(prepared, inputs) if traced is not None else ((), ())
    result = InferenceModel(prepared, memory_format, traced is not None, folded, sorted(opaque), moved, choose_threads,
                            input_names, as_they_come)
    with torch.inference_mode():
        expected = reference(*inputs)
    if traced is not None and not _same_outputs(expected, result(*inputs)):
        warnings.warn(f"the traced graph of {type(model).__name__} does not compute the model's outputs on "
                      "example_inputs; it runs as it was", stacklevel=2)
        return _untraced(model, memory_format, choose_threads)
    # Timing each layer's kernels left free blocks of every size in the heap, which kept freed memory would hold for
    # good (ShuffleNet 1x g=8 at batch 32: 560 MB resident after this, where a forward needs 300).
    release_free_memory()
    return result


_warned_of_sleeping_workers = False


def _warn_if_workers_sleep() -> None:
    """Once per process: where torch was imported before groupconv, OpenMP keeps its short spin, and at small batches
    a second thread costs more than it brings (environment.py says why)."""
    global _warned_of_sleeping_workers
    if environment.openmp_loaded_first and torch.get_num_threads() > 1 and not _warned_of_sleeping_workers:
        _warned_of_sleeping_workers = True
        warnings.warn("torch was imported before groupconv, so OpenMP's worker threads sleep between layers and wake "
                      "late: small batches run up to 1.5x slower on several threads (ShuffleNet 1x at batch 1). "
                      f"Import groupconv first, or set GOMP_SPINCOUNT={environment.OPENMP_SPIN_COUNT} in the "
                      "environment (docs/inference.md, OpenMP's waiting workers)", stacklevel=3)


def _untraced(model: torch.nn.Module, memory_format: torch.memory_format, choose_threads: bool) -> InferenceModel:
    """The model as it was, in eval mode, `memory_format` and inference mode."""
    prepared = copy.deepcopy(model).eval().requires_grad_(False).to(memory_format=memory_format)
    return InferenceModel(prepared, memory_format, False, 0, (), choose_threads=choose_threads)
