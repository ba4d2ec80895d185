"""`groupconv benchmark layers --hidden-shapes N`: groupconv against torch on random conv shapes the zoo does not have.

The zoo's layers are the shapes groupconv was tuned and measured on; a user's network has others (ResNeXt-50's
128->128 g=32 3x3 at 56x56 with batch 8, say). This draws N grouped, depthwise and pointwise-grouped shapes like
those of real networks (seeded: the same seed draws the same shapes), each timed with its own batch in both layouts,
forward and forward+backward, groupconv and torch in alternation in one run, as a first process on the machine
would see them: the dispatcher measures every problem afresh, in a temporary tuning cache (the user's stays as it
is). The report gives each shape's same-layout ratios (torch's time over groupconv's; above 1: groupconv faster),
the worst of them, the geometric mean of groupconv in its faster layout against torch in its faster layout, and the
shapes where groupconv runs below LOSS_THRESHOLD of torch.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch

from ..ops.dispatch import fresh_tuning_cache
from .layers import layer_step, time_layers
from .results import geometric_mean
from .shapes import LayerShape, zoo_layer_shapes

LOSS_THRESHOLD = 0.95

# What the shapes are drawn from: widths, group sizes and feature-map sizes of ResNeXt (Xie et al. 2017), ShuffleNet
# (Zhang et al. 2018), MobileNet (Howard et al. 2017) and their relatives, and sizes between them.
SPATIAL_SIZES = (7, 10, 14, 17, 19, 28, 35, 38, 56)
BATCHES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
KINDS = ("grouped", "depthwise", "pointwise-grouped")
# A step's input at most this many values (16 MiB of float32): the benchmark stays minutes long on a laptop; a drawn
# batch above it is halved until the input fits.
MAX_INPUT_VALUES = 1 << 22


@dataclass(frozen=True)
class HiddenShape:
    """One drawn layer and the batch it is timed with."""

    layer: LayerShape
    batch: int

    def label(self) -> str:
        return f"{self.layer.label()} b{self.batch}"


def _draw(rng: random.Random, kind: str) -> LayerShape:
    if kind == "grouped":
        groups = rng.choice((2, 4, 8, 16, 32, 64))
        in_channels = groups * rng.choice((2, 4, 8, 16, 32))
        out_channels = in_channels * rng.choice((1, 1, 2))
        kernel = rng.choice((3, 3, 5))
    elif kind == "depthwise":
        in_channels = groups = 8 * rng.randint(2, 96)
        out_channels, kernel = in_channels, rng.choice((3, 3, 5))
    else:
        groups = rng.choice((2, 3, 4, 8))
        in_channels = groups * 4 * rng.randint(2, 32)
        out_channels = groups * 4 * rng.randint(2, 32)
        kernel = 1
    stride = rng.choice((1, 1, 2)) if kernel > 1 else 1
    size = rng.choice(SPATIAL_SIZES)
    return LayerShape("random", kind, in_channels, out_channels, (kernel, kernel), (stride, stride),
                      (kernel // 2, kernel // 2), groups, 1, size, size)


def hidden_shapes(count: int, seed: int = 0, exclude: set[tuple] | None = None) -> list[HiddenShape]:
    """`count` distinct random shapes, the kinds in turn, none whose layer is in `exclude` (LayerShape.key(); by
    default the zoo's layers)."""
    if count < 1:
        raise ValueError(f"count={count} must be at least 1")
    exclude = {shape.key() for shape in zoo_layer_shapes()} if exclude is None else exclude
    rng = random.Random(seed)
    drawn: dict[tuple, HiddenShape] = {}
    while len(drawn) < count:
        layer = _draw(rng, KINDS[len(drawn) % len(KINDS)])
        batch = rng.choice(BATCHES)
        while batch > 1 and batch * layer.in_channels * layer.height * layer.width > MAX_INPUT_VALUES:
            batch //= 2
        if layer.key() not in exclude:
            drawn.setdefault((layer.key(), batch), HiddenShape(layer, batch))
    return list(drawn.values())


@dataclass
class HiddenShapeResult:
    shape: str
    kind: str
    batch: int
    passes: str  # "forward" or "forward+backward"
    torch_nchw_ms: float
    groupconv_nchw_ms: float
    torch_channels_last_ms: float
    groupconv_channels_last_ms: float

    @property
    def ratio_nchw(self) -> float:
        """torch's time over groupconv's, both NCHW (above 1: groupconv faster)."""
        return self.torch_nchw_ms / self.groupconv_nchw_ms

    @property
    def ratio_channels_last(self) -> float:
        return self.torch_channels_last_ms / self.groupconv_channels_last_ms

    @property
    def ratio_best_layouts(self) -> float:
        """torch in its faster layout over groupconv in its faster layout."""
        return min(self.torch_nchw_ms, self.torch_channels_last_ms) / min(self.groupconv_nchw_ms,
                                                                          self.groupconv_channels_last_ms)

    @property
    def worst_same_layout_ratio(self) -> float:
        return min(self.ratio_nchw, self.ratio_channels_last)

    def record(self) -> dict:
        return {**asdict(self), "ratio_nchw": round(self.ratio_nchw, 3),
                "ratio_channels_last": round(self.ratio_channels_last, 3),
                "ratio_best_layouts": round(self.ratio_best_layouts, 3)}


def hidden_shapes_benchmark(shapes: list[HiddenShape], repeats: int = 5, backward_too: bool = True,
                            progress=print) -> list[HiddenShapeResult]:
    """Each shape forward (and forward+backward), torch and groupconv in both layouts timed in alternation, every
    problem measured afresh by the dispatcher (a temporary tuning cache)."""
    results = []
    with fresh_tuning_cache():
        for shape in shapes:
            torch.manual_seed(0)
            ours = shape.layer.groupconv_layer()
            theirs = shape.layer.torch_layer(ours)
            x = torch.randn(shape.batch, shape.layer.in_channels, shape.layer.height, shape.layer.width)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            for backward in ((False, True) if backward_too else (False,)):
                steps = {"torch_nchw_ms": layer_step(theirs, x, backward),
                         "groupconv_nchw_ms": layer_step(ours, x, backward),
                         "torch_channels_last_ms": layer_step(theirs, x_cl, backward),
                         "groupconv_channels_last_ms": layer_step(ours, x_cl, backward)}
                result = HiddenShapeResult(shape.label(), shape.layer.kind, shape.batch,
                                           "forward+backward" if backward else "forward", **time_layers(steps, repeats))
                results.append(result)
                if progress:
                    progress(format_row(result))
    return results


HEADER = (f"{'shape':48} {'pass':>4} {'torch':>8} {'ours':>8} {'torch CL':>8} {'ours CL':>8} {'NCHW':>6} "
          f"{'CL':>6} {'best':>6}")


def format_row(r: HiddenShapeResult) -> str:
    passes = "f" if r.passes == "forward" else "fb"
    return (f"{r.shape:48} {passes:>4} {r.torch_nchw_ms:8.3f} {r.groupconv_nchw_ms:8.3f} "
            f"{r.torch_channels_last_ms:8.3f} {r.groupconv_channels_last_ms:8.3f} {r.ratio_nchw:5.2f}x "
            f"{r.ratio_channels_last:5.2f}x {r.ratio_best_layouts:5.2f}x")


def losses(results: list[HiddenShapeResult]) -> list[tuple[HiddenShapeResult, str, float]]:
    """(result, layout, ratio) wherever groupconv ran below LOSS_THRESHOLD of torch in the same layout."""
    return [(r, layout, ratio) for r in results
            for layout, ratio in (("NCHW", r.ratio_nchw), ("channels_last", r.ratio_channels_last))
            if ratio < LOSS_THRESHOLD]


def summarise(results: list[HiddenShapeResult]) -> str:
    worst = min(results, key=lambda r: r.worst_same_layout_ratio)
    worst_layout = "NCHW" if worst.ratio_nchw <= worst.ratio_channels_last else "channels_last"
    lines = [f"worst same-layout ratio: {worst.worst_same_layout_ratio:.2f}x ({worst.shape}, {worst.passes}, "
             f"{worst_layout})",
             f"geometric mean, groupconv's faster layout against torch's faster layout: "
             f"{geometric_mean(r.ratio_best_layouts for r in results):.2f}x over {len(results)} measurements"]
    below = losses(results)
    lines.append(f"below {LOSS_THRESHOLD:.2f}x torch in the same layout: {len(below)}")
    lines += [f"  {ratio:.2f}x  {r.shape}, {r.passes}, {layout}" for r, layout, ratio in below]
    return "\n".join(lines)
