"""groupconv against stock torch on the model zoo's grouped layers and whole models: the 1/G promise, measured.

Three measurements, each timing groupconv and its competitor in the same run (absolute times
drift on shared machines; ratios hold):

- `layer_benchmark`: every distinct grouped, depthwise and pointwise-grouped conv of the zoo's
  models (shapes taken from the models by a forward pass on the meta device, not typed by hand),
  forward and forward+backward, torch in NCHW and channels_last against groupconv, next to the
  roofline floor max(FLOPs / peak, bytes / bandwidth) of the machine measured in the same run, and
  forward+backward's peak memory against torch's in the same layout (analysis.memory).
- `group_sweep`: one conv at G = 1, 2, 4, ... against the ideal t(G=1) / G line.
- `shuffle_cost`: a ShuffleNet unit with and without its channel shuffle, groupconv and torch: the
  fused shuffle should cost (nearly) nothing.
- `model_benchmark`: train-step and inference images/s of a model built from groupconv layers
  and of the same model rebuilt from plain torch.nn layers (`to_torch_layers`).
- `same_flops_benchmark`: ShuffleNet g=8 trained with groupconv against stock torch's g=1 (same
  multiply-adds), the train steps in alternation and the ratio taken round by round.
"""

from __future__ import annotations

import copy
import csv
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import models
from . import nn as gnn
from .ops.tuning import memory
from .analysis.roofline import MachineCeilings, machine_ceilings
from .ops.tuning.timing import median_seconds_interleaved, seconds_interleaved
from .ops.tuning import MEMORY_TOLERANCE

# The networks whose layer shapes the targets name (baseline.md).
ZOO_MODELS = ("shufflenet_g1_w1", "shufflenet_g3_w1", "shufflenet_g8_w1", "resnext29_32x4d", "mobilenet_w1",
              "resnext50_32x4d")
BYTES_PER_ELEMENT = 4  # float32


@dataclass(frozen=True)
class LayerShape:
    """One grouped conv of a model, as the benchmark times it (batch chosen at run time)."""

    model: str
    layer: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    shuffle_groups: int
    height: int
    width: int

    @property
    def kind(self) -> str:
        if self.groups == self.in_channels:
            return "depthwise"
        return "pointwise-grouped" if self.kernel_size == (1, 1) else "grouped"

    def label(self) -> str:
        k = "x".join(map(str, self.kernel_size))
        shuffle = f" shuffle{self.shuffle_groups}" if self.shuffle_groups > 1 else ""
        stride = f" s{self.stride[0]}" if self.stride != (1, 1) else ""
        return (f"{self.kind} {k} {self.in_channels}->{self.out_channels} g{self.groups}{shuffle}{stride} "
                f"{self.height}x{self.width}")

    def key(self) -> tuple:
        return (self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.groups,
                self.shuffle_groups, self.height, self.width)

    def output_size(self) -> tuple[int, int]:
        return tuple((size + 2 * p - k) // s + 1 for size, p, k, s in
                     zip((self.height, self.width), self.padding, self.kernel_size, self.stride))

    def multiply_adds(self, batch: int) -> int:
        out_h, out_w = self.output_size()
        return batch * out_h * out_w * self.out_channels * (self.in_channels // self.groups) * math.prod(
            self.kernel_size)

    def traffic_bytes(self, batch: int) -> int:
        """Forward memory traffic (ShuffleNet V2's MAC): input + output + weights, read or written once."""
        out_h, out_w = self.output_size()
        elements = (batch * self.in_channels * self.height * self.width + batch * self.out_channels * out_h * out_w
                    + self.out_channels * (self.in_channels // self.groups) * math.prod(self.kernel_size))
        return elements * BYTES_PER_ELEMENT

    def floor_seconds(self, batch: int, ceilings: MachineCeilings, backward: bool) -> float:
        # Backward = backward-input + backward-weight, each as costly as the forward in FLOPs and traffic.
        passes = 3 if backward else 1
        return passes * ceilings.seconds(2 * self.multiply_adds(batch), self.traffic_bytes(batch))

    def groupconv_layer(self) -> torch.nn.Module:
        return gnn.ShuffledGroupedConv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                                         self.padding, groups=self.groups, bias=False,
                                         shuffle_groups=self.shuffle_groups)

    def torch_layer(self, like: torch.nn.Module) -> torch.nn.Module:
        """The same layer from torch.nn (a ChannelShuffle module first where the layer reads shuffled), same weight."""
        conv = torch.nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                               groups=self.groups, bias=False)
        conv.weight.data.copy_(like.weight.data)
        if self.shuffle_groups == 1:
            return conv
        return torch.nn.Sequential(torch.nn.ChannelShuffle(self.shuffle_groups), conv)


def zoo_layer_shapes(model_names=ZOO_MODELS, kinds=("grouped", "depthwise", "pointwise-grouped")) -> list[LayerShape]:
    """The distinct grouped convs (groups > 1) of the models, in order of first appearance, at their input size."""
    shapes: dict[tuple, LayerShape] = {}
    for name in model_names:
        with torch.device("meta"):
            model = models.create_model(name).eval()
            x = torch.empty(1, *models.model_entry(name).input_size)
        hooks = []
        for layer_name, module in model.named_modules():
            if isinstance(module, gnn.Conv2d) and module.groups > 1:
                def record(module, inputs, output, layer_name=layer_name):
                    shape = LayerShape(name, layer_name, module.in_channels, module.out_channels,
                                       tuple(module.kernel_size), tuple(module.stride), tuple(module.padding),
                                       module.groups, getattr(module, "shuffle_groups", 1), *inputs[0].shape[2:])
                    if shape.kind in kinds:
                        shapes.setdefault(shape.key(), shape)
                hooks.append(module.register_forward_hook(record))
        with torch.no_grad():
            model(x)
        for hook in hooks:
            hook.remove()
    return list(shapes.values())


def layer_step(layer: torch.nn.Module, x: torch.Tensor, backward: bool):
    """A callable running layer(x), or layer(x) and its backward pass to input and weight."""
    if not backward:
        def forward():
            with torch.no_grad():
                layer(x)

        return forward
    x = x.detach().requires_grad_()
    with torch.no_grad():
        grad = torch.randn_like(layer(x))

    def step():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    return step


# Short steps get more runs than `repeats`: enough for the contenders' rounds to fill MIN_TIMED_SECONDS, up to
# MAX_REPEATS. On this shared 2-core machine five runs of a 0.5 ms step left the median 10-30% off from one run to the
# next (a 144-channel 14x14 depthwise layer measured 0.76x torch in one benchmark and 0.94-0.95x over 150 runs).
MIN_TIMED_SECONDS = 0.5
MAX_REPEATS = 100


def time_layers(steps: dict[str, object], repeats: int) -> dict[str, float]:
    """Milliseconds (median) of each step, the contenders timed in alternation so that they see the same load."""
    start = time.perf_counter()
    for step in steps.values():  # (a first warm-up run, which also says how long a round takes)
        step()
    round_seconds = max(time.perf_counter() - start, 1e-6)
    repeats = max(repeats, min(MAX_REPEATS, int(MIN_TIMED_SECONDS / round_seconds)))
    return {name: 1e3 * seconds for name, seconds in median_seconds_interleaved(steps, repeats=repeats,
                                                                                warmup=1).items()}


@dataclass
class LayerResult:
    model: str
    layer: str
    shape: str
    kind: str
    passes: str  # "forward" or "forward+backward"
    torch_nchw_ms: float
    torch_channels_last_ms: float
    groupconv_ms: float  # NCHW input, the user's default
    groupconv_channels_last_ms: float
    floor_ms: float
    # Forward+backward: the most memory groupconv's step held at once over torch's, in the same layout (NCHW, and
    # channels_last); 1 means as much. None for the forward (the rule is about forward+backward).
    peak_memory_vs_torch: float | None = None
    peak_memory_vs_torch_channels_last: float | None = None

    @property
    def peak_memory_ratio(self) -> float | None:
        """The larger of the two layouts' peak-memory ratios."""
        if self.peak_memory_vs_torch is None:
            return None
        return max(self.peak_memory_vs_torch, self.peak_memory_vs_torch_channels_last)

    @property
    def speedup_over_nchw(self) -> float:
        return self.torch_nchw_ms / self.groupconv_ms

    @property
    def speedup_over_best_torch(self) -> float:
        return min(self.torch_nchw_ms, self.torch_channels_last_ms) / min(self.groupconv_ms,
                                                                          self.groupconv_channels_last_ms)

    @property
    def ratio_to_floor(self) -> float:
        return min(self.groupconv_ms, self.groupconv_channels_last_ms) / self.floor_ms

    def record(self) -> dict:
        return {**asdict(self), "speedup_over_nchw": round(self.speedup_over_nchw, 3),
                "speedup_over_best_torch": round(self.speedup_over_best_torch, 3),
                "ratio_to_floor": round(self.ratio_to_floor, 2)}


def layer_benchmark(shapes: list[LayerShape], batch: int = 32, repeats: int = 5, backward_too: bool = True,
                    ceilings: MachineCeilings | None = None, progress=print) -> list[LayerResult]:
    ceilings = ceilings or machine_ceilings()
    results = []
    for shape in shapes:
        torch.manual_seed(0)
        ours = shape.groupconv_layer()
        theirs = shape.torch_layer(ours)
        x = torch.randn(batch, shape.in_channels, shape.height, shape.width)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for backward in ((False, True) if backward_too else (False,)):
            steps = {"torch_nchw_ms": layer_step(theirs, x, backward),
                     "torch_channels_last_ms": layer_step(theirs, x_cl, backward),
                     "groupconv_ms": layer_step(ours, x, backward),
                     "groupconv_channels_last_ms": layer_step(ours, x_cl, backward)}
            ms = time_layers(steps, repeats)
            memory_ratios = {}
            if backward and memory.can_measure():  # (after the timing: the choices are made, no tuning counts)
                peak = {name: memory.peak_allocated_bytes(step) for name, step in steps.items()}
                memory_ratios = {"peak_memory_vs_torch": peak["groupconv_ms"] / peak["torch_nchw_ms"],
                                 "peak_memory_vs_torch_channels_last":
                                     peak["groupconv_channels_last_ms"] / peak["torch_channels_last_ms"]}
            result = LayerResult(shape.model, shape.layer, shape.label(), shape.kind,
                                 "forward+backward" if backward else "forward", **ms,
                                 floor_ms=1e3 * shape.floor_seconds(batch, ceilings, backward), **memory_ratios)
            results.append(result)
            if progress:
                progress(format_layer_row(result))
    return results


LAYER_HEADER = (f"{'layer':52} {'pass':>6} {'torch':>8} {'torch CL':>8} {'ours':>8} {'ours CL':>8} "
                f"{'floor':>7} {'xfloor':>6} {'vs NCHW':>7} {'vs best':>7} {'memory':>6}")


def format_layer_row(r: LayerResult) -> str:
    passes = "f" if r.passes == "forward" else "fb"
    return (f"{r.shape:52} {passes:>6} {r.torch_nchw_ms:8.2f} {r.torch_channels_last_ms:8.2f} {r.groupconv_ms:8.2f} "
            f"{r.groupconv_channels_last_ms:8.2f} {r.floor_ms:7.2f} {r.ratio_to_floor:6.1f} "
            f"{r.speedup_over_nchw:6.2f}x {r.speedup_over_best_torch:6.2f}x"
            + (f" {r.peak_memory_ratio:5.2f}x" if r.peak_memory_ratio is not None else ""))


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else float("nan")


def summarise_layers(results: list[LayerResult]) -> str:
    lines = []
    for passes in ("forward", "forward+backward"):
        chosen = [r for r in results if r.passes == passes]
        if not chosen:
            continue
        worst = min(chosen, key=lambda r: r.speedup_over_best_torch)
        lines.append(
            f"{passes:>16}: geometric-mean speedup {geometric_mean(r.speedup_over_nchw for r in chosen):.2f}x over "
            f"torch NCHW, {geometric_mean(r.speedup_over_best_torch for r in chosen):.2f}x over torch's faster layout; "
            f"slowest {worst.speedup_over_best_torch:.2f}x ({worst.shape}); "
            f"median {statistics.median(r.ratio_to_floor for r in chosen):.1f}x the floor")
    measured = [r for r in results if r.peak_memory_ratio is not None]
    if measured:
        most = max(measured, key=lambda r: r.peak_memory_ratio)
        above = sum(r.peak_memory_ratio > 1 + MEMORY_TOLERANCE for r in measured)  # (the tuner's tolerance)
        lines.append(f"{'peak memory':>16}: forward+backward holds more than torch's in the same layout on {above} of "
                     f"{len(measured)} layers; most {most.peak_memory_ratio:.2f}x ({most.shape})")
    return "\n".join(lines)


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


@dataclass
class ShuffleCost:
    unit: str
    groupconv_shuffle_ms: float
    groupconv_plain_ms: float
    torch_shuffle_ms: float
    torch_plain_ms: float

    @property
    def groupconv_overhead(self) -> float:
        """Extra time of the shuffled unit over the plain one (0.05 = 5%)."""
        return self.groupconv_shuffle_ms / self.groupconv_plain_ms - 1

    @property
    def torch_overhead(self) -> float:
        return self.torch_shuffle_ms / self.torch_plain_ms - 1


def shuffle_cost(groups=(3, 8), batch: int = 32, repeats: int = 5, progress=print) -> list[ShuffleCost]:
    """Forward+backward of a stage-2 ShuffleNet 1x unit (28x28, not downsampling) with and without its shuffle."""
    from .models.shufflenet import STAGE_CHANNELS, ShuffleUnit

    results = []
    for g in groups:
        channels = STAGE_CHANNELS[g][0]
        steps = {}
        x = torch.randn(batch, channels, 28, 28)
        for shuffle in (True, False):
            torch.manual_seed(0)
            unit = ShuffleUnit(channels, channels, g, downsample=False, ignore_group=False, shuffle=shuffle)
            steps["groupconv", shuffle] = layer_step(unit, x, True)
            steps["torch", shuffle] = layer_step(to_torch_layers(unit), x, True)
        times = time_layers(steps, repeats)
        result = ShuffleCost(f"ShuffleNet 1x g={g} unit {channels}ch 28x28", times["groupconv", True],
                             times["groupconv", False], times["torch", True], times["torch", False])
        results.append(result)
        if progress:
            progress(f"{result.unit:36} groupconv {result.groupconv_shuffle_ms:8.2f} ms vs "
                     f"{result.groupconv_plain_ms:8.2f} without shuffle ({100 * result.groupconv_overhead:+.1f}%); torch {result.torch_shuffle_ms:8.2f} "
                     f"vs {result.torch_plain_ms:8.2f} ({100 * result.torch_overhead:+.1f}%)")
    return results


class StockBatchNormAct2d(torch.nn.BatchNorm2d):
    """What stock models (pytorchcv, torchvision) run where groupconv fuses BN, residual and ReLU: torch's BN,
    then `+ residual`, then an in-place ReLU (then torch.cat with `concat`), each its own op."""

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None, *,
                concat: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(input)
        if residual is not None:
            out = out + residual
        out = torch.nn.functional.relu(out, inplace=True) if self.apply_act else out
        return out if concat is None else torch.cat((out, concat), 1)


def to_torch_layers(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` built from plain torch.nn layers: what the model costs in stock PyTorch.

    Every groupconv conv becomes the torch conv of its class with the same parameters; a conv that
    reads its input shuffled becomes torch.nn.ChannelShuffle followed by the conv, as a stock
    implementation (pytorchcv) builds it; a BatchNormAct2d becomes torch's BN, add and ReLU.
    """
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, gnn.BatchNormAct2d):
            module.__class__ = StockBatchNormAct2d
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            torch_class = next((base for base in (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
                                if isinstance(child, base)), None)
            if torch_class is None or type(child) is torch_class:
                continue
            shuffle_groups = getattr(child, "shuffle_groups", 1)
            child.__class__ = torch_class  # groupconv's layers add no state beyond shuffle_groups
            if shuffle_groups > 1:
                del child.shuffle_groups
                setattr(parent, child_name, torch.nn.Sequential(torch.nn.ChannelShuffle(shuffle_groups), child))
    return model


@dataclass
class ModelResult:
    """Images per second of one model: torch.nn's twin and groupconv's, each in NCHW and channels_last."""

    model: str
    input_size: tuple[int, ...]
    batch: int
    torch_train_images_per_second: float
    torch_cl_train_images_per_second: float
    groupconv_train_images_per_second: float
    groupconv_cl_train_images_per_second: float
    torch_infer_images_per_second: float
    torch_cl_infer_images_per_second: float
    groupconv_infer_images_per_second: float
    groupconv_cl_infer_images_per_second: float

    def best(self, who: str, mode: str) -> float:
        """The faster layout's images/s of `who` (torch, groupconv) in `mode` (train, infer)."""
        return max(getattr(self, f"{who}_{mode}_images_per_second"), getattr(self, f"{who}_cl_{mode}_images_per_second"))

    @property
    def train_speedup(self) -> float:
        """groupconv (its faster layout) over stock torch as most models run it: NCHW."""
        return self.best("groupconv", "train") / self.torch_train_images_per_second

    @property
    def train_speedup_over_best_torch(self) -> float:
        return self.best("groupconv", "train") / self.best("torch", "train")

    @property
    def infer_speedup(self) -> float:
        return self.best("groupconv", "infer") / self.torch_infer_images_per_second

    def record(self) -> dict:
        return {**asdict(self), "train_speedup": round(self.train_speedup, 3),
                "train_speedup_over_best_torch": round(self.train_speedup_over_best_torch, 3),
                "infer_speedup": round(self.infer_speedup, 3)}


def _train_step(model: torch.nn.Module, x: torch.Tensor):
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()

    return step


def _inference(model: torch.nn.Module, x: torch.Tensor):
    model.eval()

    def run():
        with torch.no_grad():
            model(x)

    return run


# The models of the training targets (ResNeXt-50 is left out: a minute per step on 2 cores).
MODEL_BENCHMARK_DEFAULTS = ("shufflenet_g1_w1", "shufflenet_g3_w1", "shufflenet_g8_w1", "resnext29_32x4d",
                            "mobilenet_w1")
LAYOUTS = {"": torch.contiguous_format, "_cl": torch.channels_last}


def model_benchmark(names=MODEL_BENCHMARK_DEFAULTS, batch: int = 32, repeats: int = 3, image_size: int | None = None,
                    progress=print, device: str | torch.device = "cpu") -> list[ModelResult]:
    """Train-step (SGD, cross-entropy) and inference images/s of groupconv's model and its torch.nn twin, NCHW and
    channels_last; the four contenders of a mode are timed in alternation, so they see the same machine load.
    On a CUDA device each step is timed to its end (the timer synchronises), and torch's side runs cuDNN."""
    results = []
    for name in names:
        torch.manual_seed(0)
        ours = models.create_model(name).to(device)
        theirs = to_torch_layers(ours)
        channels, height, width = models.model_entry(name).input_size
        if image_size is not None:
            height = width = image_size
        x = torch.randn(batch, channels, height, width, device=device)
        images_per_second = {}
        for mode, make in (("train", _train_step), ("infer", _inference)):
            contenders = {}
            for who, model in (("torch", theirs), ("groupconv", ours)):
                for suffix, layout in LAYOUTS.items():
                    contenders[f"{who}{suffix}_{mode}_images_per_second"] = make(
                        copy.deepcopy(model).to(memory_format=layout), x.contiguous(memory_format=layout))
            seconds = median_seconds_interleaved(contenders, repeats=repeats, warmup=2)
            images_per_second.update({key: batch / value for key, value in seconds.items()})
        result = ModelResult(name, (channels, height, width), batch, **images_per_second)
        results.append(result)
        if progress:
            progress(format_model_row(result))
    return results


MODEL_HEADER = (f"{'model':18} {'input':>8} | {'train img/s: torch':>18} {'torch CL':>8} {'ours':>6} {'ours CL':>7} "
                f"{'vs NCHW':>7} {'vs best':>7} | {'infer img/s: torch':>18} {'torch CL':>8} {'ours':>6} "
                f"{'ours CL':>7} {'vs NCHW':>7}")


def format_model_row(r: ModelResult) -> str:
    size = "x".join(map(str, r.input_size[1:]))
    return (f"{r.model:18} {size:>8} | {r.torch_train_images_per_second:18.1f} {r.torch_cl_train_images_per_second:8.1f} "
            f"{r.groupconv_train_images_per_second:6.1f} {r.groupconv_cl_train_images_per_second:7.1f} "
            f"{r.train_speedup:6.2f}x {r.train_speedup_over_best_torch:6.2f}x | "
            f"{r.torch_infer_images_per_second:18.1f} {r.torch_cl_infer_images_per_second:8.1f} "
            f"{r.groupconv_infer_images_per_second:6.1f} {r.groupconv_cl_infer_images_per_second:7.1f} "
            f"{r.infer_speedup:6.2f}x")


@dataclass
class SameFlopsResult:
    """The issue's first target in one run: ShuffleNet g=8 trained with groupconv against stock torch's g=1 of the same
    width (the same multiply-adds), their train steps timed in alternation. The speedups are medians of the rounds'
    own ratios, so that the machine's drift between rounds cancels (the models benchmark times g=1 and g=8 minutes
    apart: its cross-model ratio carried that drift, 0.89x-1.04x across the runs of two stops)."""

    g1_model: str
    g8_model: str
    batch: int
    rounds: int
    torch_g1_images_per_second: float  # NCHW, as stock models run
    torch_g1_cl_images_per_second: float
    torch_g8_images_per_second: float  # NCHW: the broken promise
    groupconv_g8_images_per_second: float
    groupconv_g8_cl_images_per_second: float
    speedup: float  # groupconv g=8 (its faster layout) over stock g=1 NCHW: the median of the rounds' ratios
    speedup_low: float  # the rounds' ratios' quartiles
    speedup_high: float
    rounds_at_least_even: int  # rounds in which groupconv's g=8 step took no longer than stock g=1's
    speedup_over_best_torch: float  # over stock g=1 in its faster layout, median of the rounds' ratios


def same_flops_benchmark(g1: str = "shufflenet_g1_w1", g8: str = "shufflenet_g8_w1", batch: int = 32,
                         repeats: int = 11, image_size: int | None = None, progress=print) -> SameFlopsResult:
    """Train steps of stock g=1 (NCHW, channels_last), stock g=8 (NCHW) and groupconv g=8 (both layouts), in
    alternation over `repeats` rounds."""
    channels, height, width = models.model_entry(g8).input_size
    if image_size is not None:
        height = width = image_size
    x = torch.randn(batch, channels, height, width)
    steps = {}
    for key, name, stock in (("torch_g1", g1, True), ("torch_g1_cl", g1, True), ("torch_g8", g8, True),
                             ("groupconv_g8", g8, False), ("groupconv_g8_cl", g8, False)):
        torch.manual_seed(0)
        model = models.create_model(name)
        layout = LAYOUTS["_cl" if key.endswith("_cl") else ""]
        steps[key] = _train_step((to_torch_layers(model) if stock else model).to(memory_format=layout),
                                 x.contiguous(memory_format=layout))
    seconds = seconds_interleaved(steps, repeats=repeats, warmup=2)
    median = {key: statistics.median(values) for key, values in seconds.items()}
    ours = min(("groupconv_g8", "groupconv_g8_cl"), key=median.get)
    best_g1 = min(("torch_g1", "torch_g1_cl"), key=median.get)
    ratios = [g1_seconds / our_seconds for g1_seconds, our_seconds in zip(seconds["torch_g1"], seconds[ours])]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    result = SameFlopsResult(
        g1, g8, batch, repeats, **{f"{key}_images_per_second": batch / value for key, value in median.items()},
        speedup=statistics.median(ratios), speedup_low=quartiles[0], speedup_high=quartiles[2],
        rounds_at_least_even=sum(ratio >= 1 for ratio in ratios),
        speedup_over_best_torch=statistics.median(g1_seconds / our_seconds for g1_seconds, our_seconds
                                                  in zip(seconds[best_g1], seconds[ours])))
    if progress:
        progress(format_same_flops(result))
    return result


def format_same_flops(r: SameFlopsResult) -> str:
    return (f"train img/s, {r.rounds} rounds in alternation, batch {r.batch}: stock {r.g1_model} "
            f"{r.torch_g1_images_per_second:.1f} (channels_last {r.torch_g1_cl_images_per_second:.1f}); stock "
            f"{r.g8_model} {r.torch_g8_images_per_second:.1f}; groupconv {r.g8_model} {r.groupconv_g8_images_per_second:.1f}"
            f" (channels_last {r.groupconv_g8_cl_images_per_second:.1f})\n"
            f"groupconv g=8 (its faster layout) / stock g=1 NCHW: {r.speedup:.2f}x, the rounds' ratios' quartiles "
            f"{r.speedup_low:.2f}x-{r.speedup_high:.2f}x, at least even in {r.rounds_at_least_even} of {r.rounds} "
            f"rounds; over stock g=1 in its faster layout: {r.speedup_over_best_torch:.2f}x; stock g=8 / stock g=1: "
            f"{r.torch_g8_images_per_second / r.torch_g1_images_per_second:.2f}x")


def same_flops_pair(names) -> tuple[str, str] | None:
    """The first ShuffleNet g=8 in `names` whose g=1 of the same width is there too, as (g1, g8)."""
    for name in names:
        if name.startswith("shufflenet_g8_") and (g1 := name.replace("_g8_", "_g1_")) in names:
            return g1, name
    return None


def write_csv(path: str | Path, records: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
