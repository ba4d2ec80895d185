"""Measured forward and backward time of every layer next to its roofline floor: where the 1/G promise breaks.

How the times are measured (and why they can be trusted):

- Forward: a forward pre-hook and a forward hook on every leaf module read time.perf_counter();
  the difference is the leaf's forward time. Leaves do not nest, so the intervals are disjoint.
- Backward: when a leaf's forward hook runs, we walk the autograd graph from its outputs back to
  its inputs and collect exactly the autograd nodes its forward created (for a conv, the conv's
  backward node; for a Linear, addmm's and the weight transpose's). Each such node gets a pre-hook
  and a hook (torch.autograd.graph.Node.register_prehook / register_hook) that read
  time.perf_counter() just before and just after the node runs; a leaf's backward time is the sum
  over its nodes. On CPU the autograd engine runs one node at a time on the calling thread, so
  these intervals are disjoint too and measure only that layer's gradient work (module-level
  full backward hooks would not: they fire at the wrong moment for layers whose inputs need no
  gradient, and refuse in-place ReLUs after a conv). Time spent outside every leaf (residual adds,
  concatenations, the engine's own bookkeeping) is the whole model's time minus the layers' sum.
- Each layer's time is the median over `repeats` steps after `warmup` untimed ones, with the
  model's gradients cleared between steps; the whole model is also timed without any hooks, so
  the hook overhead can be seen. The model runs in its current mode (train or eval); its buffers
  (BatchNorm running statistics) and gradients are restored afterwards.

The floor of each layer is its roofline time (groupconv.analysis.roofline) for the FLOPs and bytes of
groupconv.analysis.layers. The backward floor uses the minimal traffic of a backward pass: read the
output gradient once, read each saved tensor once, write each gradient once; a conv or linear layer
does one product per gradient it computes (input and weight), each as many MACs as the forward.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from ..models.registry import create_model, model_entry
from .drawings import new_figure, save_figure
from .layers import CostTable, LayerCost, analyze_layers, registered_model_input
from .modules import leaf_modules, tensors_in
from .roofline import MachineCeilings, machine_ceilings
from .tables import format_table, shape_text, si, write_csv, write_json
from ..ops.tuning.timing import median_seconds


@dataclass(frozen=True)
class BackwardCost:
    """The minimal work of a layer's backward pass: MACs and bytes, given which gradients it must compute."""

    multiply_adds: int
    traffic_bytes: int

    @classmethod
    def of(cls, row: LayerCost, input_needs_grad: bool, weights_need_grad: bool) -> "BackwardCost":
        products = int(input_needs_grad) + int(weights_need_grad and row.weight_bytes > 0)
        # grad_output is read once; a weight gradient reads the saved input and writes grad_weight; an
        # input gradient reads the weight and writes grad_input. A layer without weights (ReLU, pooling)
        # reads its saved input or output to form grad_input.
        traffic = row.output_bytes
        if weights_need_grad and row.weight_bytes:
            traffic += row.input_bytes + row.weight_bytes
        if input_needs_grad:
            traffic += row.weight_bytes + row.input_bytes + (0 if row.weight_bytes else row.input_bytes)
        return cls(row.multiply_adds * products, traffic)


@dataclass(frozen=True)
class LayerTiming:
    cost: LayerCost  # the forward cost row: shapes, MACs, traffic, forward roofline
    backward: BackwardCost
    backward_roofline_seconds: float
    forward_seconds: float  # measured, median over the timed steps
    backward_seconds: float

    @property
    def seconds(self) -> float:
        return self.forward_seconds + self.backward_seconds

    @property
    def roofline_seconds(self) -> float:
        return self.cost.roofline_seconds + self.backward_roofline_seconds

    @property
    def flops(self) -> int:
        """FLOPs of forward plus backward."""
        return self.cost.flops + 2 * self.backward.multiply_adds

    @property
    def traffic_bytes(self) -> int:
        return self.cost.traffic_bytes + self.backward.traffic_bytes

    @property
    def achieved_gflops(self) -> float:
        return self.flops / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def record(self) -> dict:
        row = self.cost.record()
        row.update(
            backward_multiply_adds=self.backward.multiply_adds, backward_traffic_bytes=self.backward.traffic_bytes,
            forward_ms=round(self.forward_seconds * 1e3, 5),
            forward_roofline_ms=round(self.cost.roofline_seconds * 1e3, 5),
            backward_ms=round(self.backward_seconds * 1e3, 5),
            backward_roofline_ms=round(self.backward_roofline_seconds * 1e3, 5),
            times_above_roofline=round(_ratio(self.seconds, self.roofline_seconds), 3),
            achieved_gflops=round(self.achieved_gflops, 3),
        )
        return row


def _ratio(measured: float, floor: float) -> float:
    return measured / floor if floor > 0 else float("nan")


@dataclass
class ProfileTable:
    model: str
    input_shape: tuple[int, ...]
    threads: int
    repeats: int
    ceilings: MachineCeilings
    layers: list[LayerTiming]
    model_forward_seconds: float  # the whole model, no hooks, median
    model_backward_seconds: float
    costs: CostTable = field(repr=False, default=None)

    @property
    def layer_forward_seconds(self) -> float:
        return sum(layer.forward_seconds for layer in self.layers)

    @property
    def layer_backward_seconds(self) -> float:
        return sum(layer.backward_seconds for layer in self.layers)

    def by_family(self) -> list[dict]:
        """Per conv family (dense, grouped, depthwise, pointwise..., shuffled), then the other layers:
        share of MACs, of the roofline time and of the measured time, and GFLOP/s achieved (forward + backward).

        The 1/G promise holds where a family's share of measured time is close to its share of MACs;
        grouped and depthwise convs typically take several times their share.
        """
        groups: dict[str, list[LayerTiming]] = {}
        for layer in self.layers:
            key = layer.cost.family if layer.cost.kind == "conv" else (
                "linear" if layer.cost.kind == "linear" else "other layers")
            groups.setdefault(key, []).append(layer)
        total_flops = sum(layer.flops for layer in self.layers) or 1
        total_roofline = sum(layer.roofline_seconds for layer in self.layers) or 1
        total_measured = sum(layer.seconds for layer in self.layers) or 1
        summary = []
        for family, layers in sorted(groups.items(), key=lambda item: -sum(x.seconds for x in item[1])):
            flops = sum(x.flops for x in layers)
            roofline = sum(x.roofline_seconds for x in layers)
            measured = sum(x.seconds for x in layers)
            summary.append(dict(family=family, layers=len(layers), flops_share=flops / total_flops,
                                roofline_share=roofline / total_roofline, measured_share=measured / total_measured,
                                measured_ms=measured * 1e3, roofline_ms=roofline * 1e3,
                                achieved_gflops=flops / measured / 1e9 if measured else 0.0,
                                times_above_roofline=_ratio(measured, roofline)))
        return summary

    def to_dict(self) -> dict:
        return {
            "model": self.model, "input_shape": list(self.input_shape), "threads": self.threads,
            "repeats": self.repeats,
            "method": "forward: perf_counter in forward pre-hook/hook of each leaf; backward: perf_counter in "
                      "pre-hook/hook of each autograd node the leaf created; medians over the timed steps",
            "machine": {"peak_gflops": self.ceilings.peak_gflops, "bandwidth_gbs": self.ceilings.bandwidth_gbs,
                        "source": self.ceilings.source},
            "layers": [layer.record() for layer in self.layers],
            "by_family": self.by_family(),
            "totals": {"model_forward_ms": self.model_forward_seconds * 1e3,
                       "model_backward_ms": self.model_backward_seconds * 1e3,
                       "layers_forward_ms": self.layer_forward_seconds * 1e3,
                       "layers_backward_ms": self.layer_backward_seconds * 1e3},
        }

    def write_csv(self, path) -> None:
        write_csv(path, [layer.record() for layer in self.layers])

    def write_json(self, path) -> None:
        write_json(path, self.to_dict())

    def format(self, all_layers: bool = False) -> str:
        """Conv and linear layers, and any other layer taking at least 2% of the time (all with all_layers)."""
        total = sum(layer.seconds for layer in self.layers) or 1.0
        shown = [x for x in self.layers
                 if all_layers or x.cost.kind in ("conv", "linear") or x.seconds >= 0.02 * total]
        hidden = [x for x in self.layers if x not in shown]
        headers = ("layer", "family / type", "groups", "MACs", "fwd ms", "floor", "x", "bwd ms", "floor", "x",
                   "GFLOP/s")
        rows = [(x.cost.label, x.cost.family or x.cost.type, x.cost.groups or "", si(x.cost.multiply_adds),
                 f"{x.forward_seconds * 1e3:.3f}", f"{x.cost.roofline_seconds * 1e3:.3f}",
                 f"{_ratio(x.forward_seconds, x.cost.roofline_seconds):.1f}",
                 f"{x.backward_seconds * 1e3:.3f}", f"{x.backward_roofline_seconds * 1e3:.3f}",
                 f"{_ratio(x.backward_seconds, x.backward_roofline_seconds):.1f}",
                 f"{x.achieved_gflops:.1f}") for x in shown]
        if hidden:
            rows.append((f"({len(hidden)} other layers)", "", "", "",
                         f"{sum(x.forward_seconds for x in hidden) * 1e3:.3f}", "", "",
                         f"{sum(x.backward_seconds for x in hidden) * 1e3:.3f}", "", "", ""))
        family_rows = [(s["family"], s["layers"], f"{100 * s['flops_share']:.1f}%", f"{100 * s['roofline_share']:.1f}%",
                        f"{100 * s['measured_share']:.1f}%", f"{s['measured_ms']:.2f}", f"{s['achieved_gflops']:.1f}",
                        f"{s['times_above_roofline']:.1f}") for s in self.by_family()]
        return "\n".join([
            f"{self.model}, input {shape_text(self.input_shape)}, {self.threads} threads, median of {self.repeats} "
            "forward+backward steps",
            format_table(headers, rows, right_align_from=2),
            "",
            "Where the time goes (forward + backward), by kind of layer: the 1/G promise holds where "
            "the share of time matches the share of FLOPs.",
            format_table(("kind", "layers", "FLOPs", "floor time", "measured time", "ms", "GFLOP/s", "x floor"),
                         family_rows, right_align_from=1),
            "",
            f"whole model without hooks: forward {self.model_forward_seconds * 1e3:.2f} ms, backward "
            f"{self.model_backward_seconds * 1e3:.2f} ms; sum of layers: forward "
            f"{self.layer_forward_seconds * 1e3:.2f} ms, backward {self.layer_backward_seconds * 1e3:.2f} ms "
            "(the rest is outside the layers: residual adds, concatenations, autograd bookkeeping, hook overhead)",
            "floor = roofline time max(FLOPs / peak, bytes / bandwidth); x = measured / floor; "
            f"machine: {self.ceilings.source}",
        ])


def _nodes_created_by(outputs: list[torch.Tensor], input_nodes: set) -> list:
    """The autograd nodes between a leaf's outputs and its inputs: the ones its forward created."""
    nodes, seen = [], set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in input_nodes or type(node).__name__ == "AccumulateGrad":
            continue
        seen.add(node)
        nodes.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return nodes


class _LayerTimer:
    """Hooks that time each call of each leaf module, forward and backward, for one step at a time."""

    def __init__(self, model: torch.nn.Module):
        self.forward: dict[tuple[str, int], float] = {}
        self.backward: dict[tuple[str, int], float] = {}
        self.needs_grad: dict[tuple[str, int], tuple[bool, bool]] = {}
        self._calls: dict[int, int] = {}
        self._started: list[tuple[float, set]] = []
        self._handles = []
        for name, module in leaf_modules(model):
            self._handles.append(module.register_forward_pre_hook(self._before))
            self._handles.append(module.register_forward_hook(self._after(name)))

    def new_step(self) -> None:
        self.forward.clear()
        self.backward.clear()
        self._calls.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _before(self, module, args):
        # Remember the inputs' autograd nodes before the forward runs (an in-place op would replace them).
        input_nodes = {t.grad_fn for t in tensors_in(args) if t.grad_fn is not None}
        self._started.append((time.perf_counter(), input_nodes))

    def _after(self, name):
        def hook(module, args, output):
            end = time.perf_counter()
            start, input_nodes = self._started.pop()
            self._calls[id(module)] = call = self._calls.get(id(module), 0) + 1
            key = (name, call)
            self.forward[key] = end - start
            self.backward[key] = 0.0
            self.needs_grad[key] = (any(t.requires_grad for t in tensors_in(args)),
                                    any(p.requires_grad for p in module.parameters(recurse=False)))
            if torch.is_grad_enabled():
                for node in _nodes_created_by(tensors_in(output), input_nodes):
                    self._time_node(node, key)
        return hook

    def _time_node(self, node, key) -> None:
        began = []

        def before(grad_outputs):
            began.append(time.perf_counter())

        def after(grad_inputs, grad_outputs):
            self.backward[key] += time.perf_counter() - began.pop()

        node.register_prehook(before)
        node.register_hook(after)


def _scalar_loss(output) -> torch.Tensor:
    return sum(t.float().sum() for t in tensors_in(output) if t.is_floating_point())


def profile_layers(model: torch.nn.Module, input: torch.Tensor, ceilings: MachineCeilings | None = None,
                   repeats: int = 5, warmup: int = 1, model_name: str | None = None,
                   failure_hint: str = "") -> ProfileTable:
    """Time every leaf of `model` on `input` (forward and backward) and set each time next to its roofline floor.

    See the module docstring for how the times are measured. `ceilings`: default measured now.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be a positive integer")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be a non-negative integer")
    ceilings = ceilings if ceilings is not None else machine_ceilings()
    model_name = model_name or type(model).__name__
    costs = analyze_layers(model, input, ceilings, model_name=model_name, failure_hint=failure_hint)

    saved_buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    saved_grads = {name: p.grad for name, p in model.named_parameters()}

    def step():
        model.zero_grad(set_to_none=True)
        _scalar_loss(model(input)).backward()

    timer = _LayerTimer(model)
    forward_samples: dict[tuple[str, int], list[float]] = {}
    backward_samples: dict[tuple[str, int], list[float]] = {}
    try:
        for index in range(warmup + repeats):
            timer.new_step()
            step()
            if index >= warmup:
                for key, seconds in timer.forward.items():
                    forward_samples.setdefault(key, []).append(seconds)
                    backward_samples.setdefault(key, []).append(timer.backward[key])
        timer.remove()
        model_forward = median_seconds(lambda: model(input), repeats=repeats, warmup=0)
        model_step = median_seconds(step, repeats=repeats, warmup=0)
    finally:
        timer.remove()
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved_buffers[name])
        for name, p in model.named_parameters():
            p.grad = saved_grads[name]

    layers = []
    for row in costs.layers:
        key = (row.name, row.call)
        if key not in forward_samples:
            continue
        backward = BackwardCost.of(row, *timer.needs_grad[key])
        layers.append(LayerTiming(
            cost=row, backward=backward,
            backward_roofline_seconds=ceilings.seconds(2 * backward.multiply_adds, backward.traffic_bytes),
            forward_seconds=statistics.median(forward_samples[key]),
            backward_seconds=statistics.median(backward_samples[key])))
    return ProfileTable(model_name, tuple(input.shape), torch.get_num_threads(), repeats, ceilings, layers,
                        model_forward, max(model_step - model_forward, 0.0), costs)


def profile_model(name: str, batch_size: int = 8, input_size=None, small_input: bool | None = None,
                  ceilings: MachineCeilings | None = None, repeats: int = 5, warmup: int = 1,
                  seed: int = 0) -> ProfileTable:
    """profile_layers for a registered model with random weights and a random input.

    Defaults keep it to seconds on a laptop CPU: batch 8 and the small-input (32x32) variant when the
    model has one (small_input=None), else the model's own input size.
    """
    if small_input is None:
        small_input = model_entry(name).has_small_input and input_size is None
    kwargs, shape, hint = registered_model_input(name, input_size, batch_size, small_input)
    torch.manual_seed(seed)
    model = create_model(name, **kwargs)
    return profile_layers(model, torch.randn(shape), ceilings, repeats, warmup, model_name=name, failure_hint=hint)


# Colours of the conv families in the plots, so that grouped and depthwise layers stand out.
FAMILY_COLOURS = {
    "dense": "tab:blue", "pointwise dense": "tab:cyan", "grouped": "tab:orange", "pointwise grouped": "tab:red",
    "depthwise": "tab:purple", "linear": "tab:green", "other layers": "tab:gray",
}


def _family_colour(family: str) -> str:
    return FAMILY_COLOURS.get(family.removesuffix(" shuffled"), "tab:brown")


def plot_profile(table: ProfileTable, path, width_pixels: int = 1400, height_pixels: int = 560, dpi: int = 100) -> None:
    """PNG of the profile: left, a roofline chart (achieved GFLOP/s against FLOPs per byte, forward + backward,
    each conv and linear layer a point coloured by family); right, measured time of each conv/linear layer
    against its floor, in execution order."""
    figure = new_figure(width_pixels, height_pixels, dpi)
    roof_axes, time_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    computing = [x for x in table.layers if x.cost.kind in ("conv", "linear") and x.flops > 0 and x.seconds > 0]

    ceilings = table.ceilings
    intensities = [x.flops / x.traffic_bytes for x in computing if x.traffic_bytes] or [1.0]
    low, high = min(intensities + [ceilings.ridge_intensity()]) / 4, max(intensities + [ceilings.ridge_intensity()]) * 4
    xs = [low * (high / low) ** (i / 100) for i in range(101)]
    roof_axes.plot(xs, [min(ceilings.peak_gflops, ceilings.bandwidth_gbs * x) for x in xs], color="black", lw=1.5,
                   label="roofline")
    for family in sorted({_family_key(x) for x in computing}):
        members = [x for x in computing if _family_key(x) == family]
        roof_axes.scatter([x.flops / x.traffic_bytes for x in members], [x.achieved_gflops for x in members],
                          s=18, color=_family_colour(family), label=family, alpha=0.8)
    roof_axes.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte, forward + backward)",
                  ylabel="achieved GFLOP/s", title=f"{table.model}: layers under the roofline")
    roof_axes.legend(fontsize=7, loc="lower right")
    roof_axes.grid(True, which="both", alpha=0.3)

    positions = range(len(computing))
    time_axes.bar(positions, [x.seconds * 1e3 for x in computing], color=[_family_colour(_family_key(x))
                                                                       for x in computing], width=0.8,
                  label="measured forward + backward")
    time_axes.scatter(positions, [x.roofline_seconds * 1e3 for x in computing], marker="_", color="black", s=60,
                      zorder=3, label="roofline floor")
    time_axes.set(yscale="log", xlabel="conv / linear layer (execution order)", ylabel="ms",
                  title=f"measured vs floor, input {shape_text(table.input_shape)}, {table.threads} threads")
    time_axes.legend(fontsize=7, loc="upper right")
    time_axes.grid(True, axis="y", which="both", alpha=0.3)
    save_figure(figure, path)


def _family_key(layer: LayerTiming) -> str:
    return layer.cost.family if layer.cost.kind == "conv" else layer.cost.kind
