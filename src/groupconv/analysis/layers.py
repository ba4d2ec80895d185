"""The per-layer cost table: shapes, parameters, multiply-adds, memory traffic and roofline time of every layer.

Collected with forward hooks on the model's leaf modules during one forward pass on the meta device
(shapes and dtypes only, no arithmetic), so a ResNeXt-101 is analysed in a fraction of a second.

Units, stated once here and in every output:

- multiply-adds (MACs): one multiply and one add; FLOPs = 2 x MACs. Convolutions (any kind, 1-D to
  3-D, transposed, groupconv's or torch's) and linear layers use the formulas of
  groupconv.analysis.cost; any other leaf gets what torch.utils.flop_counter counts inside it (0 for
  normalisation, pooling and activations, as in the papers' complexity figures). Work in functional
  calls between leaves (a residual `+`, `torch.cat`) lands in an "(outside leaf modules)" row, so the
  table's total always equals torch.utils.flop_counter's count of the whole forward.
- memory traffic: ShuffleNet V2's memory access cost, the bytes of a layer's inputs, outputs and
  weights, each read or written once (the best a kernel can do), in the bytes of the model's dtype.
  For functional ops outside the leaves, the inputs and outputs of every op that moves data (views
  are free).
- arithmetic intensity: FLOPs per byte of traffic.
- roofline time: max(FLOPs / peak, bytes / bandwidth) with the machine ceilings of
  groupconv.analysis.roofline; the model's roofline total is the sum over layers (each layer its own
  kernel, nothing fused).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ..models.registry import create_model, model_entry
from .cost import conv_multiply_adds, count_parameters
from .modules import conv_family, explained_forward_failure, is_conv, layer_kind, leaf_modules, tensors_in
from .roofline import MachineCeilings, machine_ceilings
from .tables import format_table, shape_text, si, write_csv, write_json

OUTSIDE_LEAVES = "(outside leaf modules)"

UNITS = {
    "multiply_adds": "multiply-accumulates (MACs) of the whole batch; FLOPs = 2 x MACs; bias, normalisation, "
                     "pooling and activations count 0",
    "traffic_bytes": "bytes of inputs + outputs + weights of each layer (ShuffleNet V2's memory access cost)",
    "arithmetic_intensity": "FLOPs per byte of traffic",
    "roofline_seconds": "max(FLOPs / peak, traffic / bandwidth)",
}


@dataclass(frozen=True)
class LayerCost:
    """One call of one leaf module (a module called twice, like a shared ReLU, has a row per call)."""

    name: str  # as in model.named_modules()
    call: int  # 1 for the module's first call in the forward pass, 2 for the second...
    type: str
    kind: str  # conv, linear, norm, pool, activation, dropout, shuffle, other (groupconv.analysis.modules)
    family: str  # for convs: dense / grouped / depthwise, pointwise, shuffled (modules.conv_family)
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    kernel_size: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    groups: int | None
    shuffle_groups: int | None
    parameters: int  # counted on the module's first call only, so the column sums to the model's parameters
    multiply_adds: int
    traffic_bytes: int  # input_bytes + output_bytes + weight_bytes for a leaf
    input_bytes: int = 0
    output_bytes: int = 0
    weight_bytes: int = 0
    roofline_seconds: float = 0.0
    bound: str = ""

    @property
    def label(self) -> str:
        return self.name if self.call == 1 else f"{self.name} (call {self.call})"

    @property
    def flops(self) -> int:
        return 2 * self.multiply_adds

    @property
    def arithmetic_intensity(self) -> float:
        return self.flops / self.traffic_bytes if self.traffic_bytes else 0.0

    def record(self) -> dict:
        """Flat dict for CSV and JSON, with the derived columns and explicit units in the keys."""
        row = asdict(self)
        row.pop("roofline_seconds")
        for key in ("input_shape", "output_shape", "kernel_size", "stride"):
            row[key] = shape_text(row[key])
        row.update(flops=self.flops, arithmetic_intensity_flop_per_byte=round(self.arithmetic_intensity, 4),
                   roofline_us=round(self.roofline_seconds * 1e6, 4))
        row["bound"] = row.pop("bound")
        return row


@dataclass
class CostTable:
    """Per-layer costs of one forward pass of `model` on an input of `input_shape`."""

    model: str
    input_shape: tuple[int, ...]
    dtype: str
    ceilings: MachineCeilings
    layers: list[LayerCost]
    outside: LayerCost  # functional calls between leaves, and parameters no leaf owns
    total_multiply_adds: int  # torch.utils.flop_counter's count of the whole forward pass
    total_parameters: int

    @property
    def rows(self) -> list[LayerCost]:
        """The leaf rows, plus the outside-leaves row when anything happened outside the leaves."""
        outside = self.outside
        has_outside = outside.multiply_adds or outside.traffic_bytes or outside.parameters
        return self.layers + ([outside] if has_outside else [])

    @property
    def total_traffic_bytes(self) -> int:
        return sum(row.traffic_bytes for row in self.rows)

    @property
    def total_roofline_seconds(self) -> float:
        return sum(row.roofline_seconds for row in self.rows)

    def multiply_adds_by_kind(self) -> dict[str, int]:
        """MACs per layer kind (conv, linear, other...): the papers quote conv-only or conv+FC totals."""
        totals: dict[str, int] = {}
        for row in self.rows:
            kind = "outside leaves" if row.name == OUTSIDE_LEAVES else row.kind
            totals[kind] = totals.get(kind, 0) + row.multiply_adds
        return {kind: macs for kind, macs in totals.items() if macs}

    def totals(self) -> dict:
        return {
            "parameters": self.total_parameters,
            "multiply_adds": self.total_multiply_adds,
            "flops": 2 * self.total_multiply_adds,
            "multiply_adds_by_kind": self.multiply_adds_by_kind(),
            "traffic_bytes": self.total_traffic_bytes,
            "roofline_seconds": self.total_roofline_seconds,
        }

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "dtype": self.dtype,
            "units": UNITS,
            "machine": {"peak_gflops": self.ceilings.peak_gflops, "bandwidth_gbs": self.ceilings.bandwidth_gbs,
                        "source": self.ceilings.source},
            "layers": [row.record() for row in self.rows],
            "totals": self.totals(),
        }

    def write_csv(self, path) -> None:
        """One row per layer call, then a TOTAL row."""
        records = [row.record() for row in self.rows]
        total = {key: "" for key in records[0]}
        total.update(name="TOTAL", parameters=self.total_parameters, multiply_adds=self.total_multiply_adds,
                     flops=2 * self.total_multiply_adds, traffic_bytes=self.total_traffic_bytes,
                     roofline_us=round(self.total_roofline_seconds * 1e6, 4))
        write_csv(path, records + [total])

    def write_json(self, path) -> None:
        write_json(path, self.to_dict())

    def format(self, compute_only: bool = False) -> str:
        """The terminal table: one line per layer call (conv and linear only with compute_only), totals, units
        and where the ceilings came from. The totals always count every layer."""
        shown = [row for row in self.rows if not compute_only or row.kind in ("conv", "linear")]
        headers = ("layer", "type", "input", "output", "kernel", "groups", "params", "MACs", "traffic B",
                   "FLOP/B", "roofline us", "bound")
        lines = [(row.label, row.type, shape_text(row.input_shape), shape_text(row.output_shape),
                  shape_text(row.kernel_size), row.groups or "", si(row.parameters), si(row.multiply_adds),
                  si(row.traffic_bytes), f"{row.arithmetic_intensity:.1f}" if row.multiply_adds else "",
                  f"{row.roofline_seconds * 1e6:.1f}", row.bound) for row in shown]
        hidden = [row for row in self.rows if row not in shown]
        if hidden:
            lines.append((f"({len(hidden)} other layers)", "", "", "", "", "", si(sum(r.parameters for r in hidden)),
                          si(sum(r.multiply_adds for r in hidden)), si(sum(r.traffic_bytes for r in hidden)), "",
                          f"{sum(r.roofline_seconds for r in hidden) * 1e6:.1f}", ""))
        lines.append(("TOTAL", "", shape_text(self.input_shape), "", "", "", si(self.total_parameters),
                      si(self.total_multiply_adds), si(self.total_traffic_bytes), "",
                      f"{self.total_roofline_seconds * 1e6:.1f}", ""))
        by_kind = ", ".join(f"{kind} {si(macs)}" for kind, macs in self.multiply_adds_by_kind().items())
        return "\n".join([
            f"{self.model}, input {shape_text(self.input_shape)} ({self.dtype})",
            format_table(headers, lines, right_align_from=4),
            f"parameters {self.total_parameters:,}; multiply-adds {self.total_multiply_adds:,} MACs "
            f"= {2 * self.total_multiply_adds:,} FLOPs ({by_kind}); traffic {self.total_traffic_bytes:,} bytes; "
            f"roofline {self.total_roofline_seconds * 1e3:.3f} ms",
            f"units: MACs = {UNITS['multiply_adds']}; traffic = {UNITS['traffic_bytes']}, {self.dtype}; "
            f"roofline = {UNITS['roofline_seconds']}",
            f"machine: {self.ceilings.source}",
        ])


def leaf_multiply_adds(module: torch.nn.Module, inputs: tuple, output) -> int | None:
    """MACs of one call of a conv or linear layer from its shapes; None for other leaves (the flop counter decides)."""
    if is_conv(module):
        spatial_dims = len(module.kernel_size)
        if module.transposed:
            # Every input element is multiplied by (out/G) * prod(k) weights: the forward formula with the
            # roles of input and output swapped, evaluated on the input's spatial size.
            x = inputs[0]
            batch = math.prod(x.shape[:-(spatial_dims + 1)])
            return batch * conv_multiply_adds(module.out_channels, module.in_channels, module.kernel_size,
                                              module.groups, x.shape[-spatial_dims:])
        batch = math.prod(output.shape[:-(spatial_dims + 1)])
        return batch * conv_multiply_adds(module.in_channels, module.out_channels, module.kernel_size, module.groups,
                                          output.shape[-spatial_dims:])
    if isinstance(module, torch.nn.Linear):
        return math.prod(output.shape[:-1]) * module.in_features * module.out_features
    return None


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# Ops that move no data: views and allocations (counted where the data is written).
_FREE_OPS = {"_unsafe_view", "detach", "lift_fresh", "alias", "empty", "empty_like", "empty_strided", "new_empty",
             "new_empty_strided"}


class _TrafficOutsideLeaves(TorchDispatchMode):
    """Counts the bytes moved by ops that run while no leaf module is running (residual adds, cat...)."""

    def __init__(self):
        super().__init__()
        self.leaf_depth = 0
        self.traffic_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if self.leaf_depth == 0 and not func.is_view and func.overloadpacket.__name__ not in _FREE_OPS:
            self.traffic_bytes += _nbytes(tensors_in(args) + tensors_in(kwargs or {}) + tensors_in(output))
        return output


def _same_shape(input, *args, **kwargs):
    return torch.empty_like(input)


# Exact torch classes whose output has their input's shape and dtype. On the meta device their
# forward is replaced by an empty_like during the analysis: torch's meta BatchNorm runs a Python
# decomposition costing ~5-10 ms a call, which would make a ResNeXt-101 take a second; the
# flop counter counts nothing for them either way.
_SHAPE_PRESERVING = (
    torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.GroupNorm, torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm, torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d,
    torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.ELU, torch.nn.GELU, torch.nn.SiLU, torch.nn.Sigmoid,
    torch.nn.Tanh, torch.nn.Hardswish, torch.nn.Hardsigmoid, torch.nn.Mish, torch.nn.PReLU,
    torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.Identity,
)


def _as_shape(input) -> tuple[int, ...]:
    if isinstance(input, torch.Tensor):
        return tuple(input.shape)
    shape = tuple(input)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"input={input!r} must be a tensor or a shape of positive ints, e.g. (1, 3, 224, 224)")
    return shape


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def analyze_layers(model: torch.nn.Module, input, ceilings: MachineCeilings | None = None,
                   model_name: str | None = None, failure_hint: str = "") -> CostTable:
    """The cost table of one forward pass of `model` on `input` (a tensor or a shape such as (1, 3, 224, 224)).

    Runs on the meta device whatever the model's device: a model with real weights is called with
    meta stand-ins for its parameters and buffers (torch.func.functional_call), so nothing is
    computed or copied. Only the input's shape and dtype matter (dtype: the input tensor's, else the
    model's). `ceilings`: machine ceilings for the roofline column (default: measured now). A forward
    that fails (an input too small for the model) is a ValueError naming `model_name` and the input size.
    """
    shape = _as_shape(input)
    dtype = input.dtype if isinstance(input, torch.Tensor) else _model_dtype(model)
    ceilings = ceilings if ceilings is not None else machine_ceilings()
    model_name = model_name or type(model).__name__
    meta_input = torch.empty(shape, dtype=dtype, device="meta")

    leaves = leaf_modules(model)
    # Parameter sizes come from the real modules: under functional_call they hold meta stand-ins.
    own_parameters = {id(m): [(p.numel(), p.element_size()) for p in m.parameters(recurse=False)] for _, m in leaves}
    flop_counter = FlopCounterMode(display=False)
    outside = _TrafficOutsideLeaves()
    rows: list[LayerCost] = []
    calls: dict[int, int] = {}
    flops_before: list[int] = []

    def before(module, args):
        outside.leaf_depth += 1
        flops_before.append(flop_counter.get_total_flops())

    def after(name):
        def hook(module, args, output):
            outside.leaf_depth -= 1
            counted_flops = flop_counter.get_total_flops() - flops_before.pop()
            calls[id(module)] = call = calls.get(id(module), 0) + 1
            inputs, outputs = tensors_in(args), tensors_in(output)
            multiply_adds = leaf_multiply_adds(module, args, output)
            parameters = own_parameters[id(module)]
            weight_bytes = sum(n * size for n, size in parameters)
            conv = is_conv(module)
            rows.append(LayerCost(
                name=name, call=call, type=type(module).__name__, kind=layer_kind(module),
                family=conv_family(module) if conv else "",
                input_shape=tuple(inputs[0].shape) if inputs else None,
                output_shape=tuple(outputs[0].shape) if outputs else None,
                kernel_size=tuple(module.kernel_size) if conv else None,
                stride=tuple(module.stride) if conv else None,
                groups=module.groups if conv else None,
                shuffle_groups=getattr(module, "shuffle_groups", 1) if conv else None,
                parameters=sum(n for n, _ in parameters) if call == 1 else 0,
                multiply_adds=counted_flops // 2 if multiply_adds is None else multiply_adds,
                traffic_bytes=_nbytes(inputs) + _nbytes(outputs) + weight_bytes,
                input_bytes=_nbytes(inputs), output_bytes=_nbytes(outputs), weight_bytes=weight_bytes,
            ))
        return hook

    meta_state = {name: torch.empty_like(t, device="meta")
                  for name, t in list(model.named_parameters()) + list(model.named_buffers())
                  if t.device.type != "meta"}
    handles = []
    patched = []
    try:
        for name, module in leaves:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after(name)))
            if type(module) in _SHAPE_PRESERVING and "forward" not in vars(module):
                module.forward = _same_shape
                patched.append(module)
        with explained_forward_failure(model_name, shape, failure_hint), torch.no_grad(), flop_counter, outside:
            if meta_state:
                torch.func.functional_call(model, meta_state, (meta_input,), strict=False)
            else:
                model(meta_input)
    finally:
        for handle in handles:
            handle.remove()
        for module in patched:
            del module.forward

    total_multiply_adds = flop_counter.get_total_flops() // 2
    total_parameters = count_parameters(model)
    remainder = LayerCost(
        name=OUTSIDE_LEAVES, call=1, type="", kind="other", family="", input_shape=None, output_shape=None,
        kernel_size=None, stride=None, groups=None, shuffle_groups=None,
        parameters=total_parameters - sum(row.parameters for row in rows),
        multiply_adds=total_multiply_adds - sum(row.multiply_adds for row in rows),
        traffic_bytes=outside.traffic_bytes)
    rows = [_with_roofline(row, ceilings) for row in rows]
    return CostTable(model_name, shape, str(dtype).removeprefix("torch."), ceilings, rows,
                     _with_roofline(remainder, ceilings), total_multiply_adds, total_parameters)


def _with_roofline(row: LayerCost, ceilings: MachineCeilings) -> LayerCost:
    return replace(row, roofline_seconds=ceilings.seconds(row.flops, row.traffic_bytes),
                   bound=ceilings.bound(row.flops, row.traffic_bytes) if row.flops or row.traffic_bytes else "")


# ---------------------------------------------------------------------------------------------------------------
# Registered models: resolve the input size, build on the meta device, and say what to try when it does not fit.


def registered_model_input(name: str, input_size=None, batch_size: int = 1, small_input: bool = False,
                           ) -> tuple[dict, tuple[int, ...], str]:
    """(create_model keyword arguments, input shape, hint for a failing forward) for a registered model.

    `input_size`: None (the model's own size, or its small-input size with small_input=True), one int
    (square), (H, W), or (C, H, W) (C other than the model's builds it with in_chans=C).
    An unknown name raises groupconv.models' own ValueError.
    """
    entry = model_entry(name)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if small_input and not entry.has_small_input:
        raise ValueError(f"small_input=True: model {name} has no small-input variant "
                         f"(it is built for {shape_text(entry.input_size)} inputs)")
    kwargs = {"small_input": True} if small_input else {}
    channels, height, width = entry.small_input_size if small_input else entry.input_size
    if input_size is not None:
        sizes = (input_size,) if isinstance(input_size, int) else tuple(input_size)
        if not 1 <= len(sizes) <= 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                               for s in sizes):
            raise ValueError(f"input_size={input_size!r} must be S, (H, W) or (C, H, W) with positive ints")
        if len(sizes) == 3:
            channels, height, width = sizes
            if channels != entry.input_size[0]:
                kwargs["in_chans"] = channels
        else:
            height, width = sizes * 2 if len(sizes) == 1 else sizes
    hints = []
    if entry.has_small_input and not small_input:
        hints.append(f"--small-input / small_input=True (a {shape_text(entry.small_input_size)} variant)")
    hints.append(f"its native size {shape_text(entry.input_size)}")
    return kwargs, (batch_size, channels, height, width), "try " + " or ".join(hints)


# In-place fills that initialisers (torch.nn.init, the models' own init) apply to parameters.
_FILL_METHODS = {"normal_", "uniform_", "fill_", "zero_", "erfinv_", "mul_", "add_", "clamp_", "copy_", "exponential_",
                 "bernoulli_", "random_"}


class _SkipMetaFills(TorchFunctionMode):
    """Skips filling meta tensors with values: they have none, so the fill is a no-op anyway.

    torch's meta `normal_` and friends run Python reference implementations (about 2 ms per
    parameter tensor), which would double the time to analyse a ResNeXt-101.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if (getattr(func, "__name__", "") in _FILL_METHODS and args and isinstance(args[0], torch.Tensor)
                and args[0].is_meta):
            return args[0]
        return func(*args, **(kwargs or {}))


def build_on_meta(name: str, **kwargs) -> torch.nn.Module:
    """groupconv.models.create_model(name, **kwargs) on the meta device: shapes only, no memory, no initialisation."""
    with torch.device("meta"), _SkipMetaFills():
        return create_model(name, **kwargs)


def analyze_model(name: str, input_size=None, batch_size: int = 1, small_input: bool = False,
                  ceilings: MachineCeilings | None = None, dtype: torch.dtype = torch.float32,
                  num_classes: int | None = None) -> CostTable:
    """analyze_layers for a registered model built on the meta device (see registered_model_input for the sizes)."""
    kwargs, shape, hint = registered_model_input(name, input_size, batch_size, small_input)
    model = build_on_meta(name, num_classes=num_classes, **kwargs).to(dtype)
    return analyze_layers(model, torch.empty(shape, dtype=dtype, device="meta"), ceilings, model_name=name,
                          failure_hint=hint)


_SHAPES_ONLY = MachineCeilings(1.0, 1.0, "not used: shapes only")


def trace_layers(model: torch.nn.Module, input, model_name: str | None = None, failure_hint: str = ""
                 ) -> list[LayerCost]:
    """The leaf calls of one forward pass in execution order, with shapes and costs (roofline columns left empty)."""
    rows = analyze_layers(model, input, _SHAPES_ONLY, model_name, failure_hint).layers
    return [replace(row, roofline_seconds=0.0, bound="") for row in rows]
